// What several panels share: the model list, the host's status, and a small event bus.
import { getJSON } from "./api.js";

const listeners = new Map();

export function on(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
}

export function emit(topic, payload) {
  for (const fn of listeners.get(topic) || []) {
    try {
      fn(payload);
    } catch (err) {
      console.error(`listener of ${topic} failed`, err);
    }
  }
}

export const store = {
  models: [],
  status: null,
};

let inflight = null;
let again = false;

/** Fetch the model list (coalescing overlapping calls) and tell the panels. */
export async function refreshModels() {
  if (inflight) {
    again = true;
    return inflight;
  }
  inflight = (async () => {
    try {
      const body = await getJSON("/api/v1/models");
      store.models = body.models || [];
      emit("models", store.models);
    } finally {
      inflight = null;
    }
    if (again) {
      again = false;
      await refreshModels();
    }
  })();
  return inflight;
}

let timer = null;

/** Refresh soon, folding a burst of events into one call (at most one call per `delay`, even under a steady flow). */
export function refreshModelsSoon(delay = 250) {
  if (timer) return;
  timer = setTimeout(() => {
    timer = null;
    refreshModels().catch(() => {});
  }, delay);
}

/** Apply what an event tells about one model before the next refresh confirms it. */
export function patchModel(name, fields) {
  const model = store.models.find((m) => m.name === name);
  if (!model) return;
  Object.assign(model, fields);
  emit("models", store.models);
}
