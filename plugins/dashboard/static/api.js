// Talking to the host: JSON calls and server-sent events, with the API key (when the host wants one) on every call.
// Event streams are read with fetch() and a ReadableStream because EventSource cannot send an Authorization header.

const KEY_STORAGE = "llama-host.api-key";

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let askForKey = null;
let pendingKey = null;

/** `ask(rejected)` resolves to the key a person typed; `rejected` says the stored key was refused. */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

async function obtainKey(sentKey) {
  const current = apiKey();
  if (current && current !== sentKey) return; // another call already got a newer key
  if (!pendingKey) {
    pendingKey = askForKey(Boolean(sentKey))
      .then((key) => sessionStorage.setItem(KEY_STORAGE, key))
      .finally(() => { pendingKey = null; });
  }
  await pendingKey;
}

/** fetch() with the stored key; a 401 asks for a key (once for all concurrent calls) and tries again. */
export async function request(path, init = {}) {
  for (;;) {
    const key = apiKey();
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401 || !askForKey) return res;
    await res.body?.cancel().catch(() => {});
    await obtainKey(key);
  }
}

export async function errorFrom(res) {
  const text = await res.text().catch(() => "");
  let message = text;
  try {
    const body = JSON.parse(text);
    const err = body.error;
    message = (err && typeof err === "object" ? err.message : err) || body.detail || body.message || text;
  } catch {
    // not JSON: keep the text
  }
  return new HttpError(res.status, message || `${res.status} ${res.statusText}`);
}

export async function getJSON(path, { signal } = {}) {
  const res = await request(path, { signal, headers: { Accept: "application/json" }, cache: "no-store" });
  if (!res.ok) throw await errorFrom(res);
  return res.json();
}

export async function postJSON(path, body, { signal } = {}) {
  const res = await request(path, {
    method: "POST",
    signal,
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await errorFrom(res);
  const text = await res.text();
  return text ? JSON.parse(text) : {};
}

/**
 * Read a server-sent event stream; `onEvent({event, data})` is called per event, `onOpen()` once the response
 * arrived. Resolves when the server ends the stream; rejects with HttpError for an error status.
 */
export async function readSSE(path, { method = "GET", body, signal, onOpen, onEvent }) {
  const headers = { Accept: "text/event-stream" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await request(path, {
    method, signal, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await errorFrom(res);
  onOpen?.(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let event = "";
  const dispatch = () => {
    if (data.length) onEvent({ event: event || "message", data: data.join("\n") });
    data = [];
    event = "";
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") { dispatch(); continue; }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") data.push(val);
        else if (field === "event") event = val;
        else if (field === "error") onEvent({ event: "error", data: val }); // older llama-server error lines
      }
    }
    dispatch();
  } finally {
    reader.releaseLock();
  }
}

/**
 * Keep an event stream open: reconnect after a drop with a growing pause. `onState` hears "live", "retrying"
 * and "absent" (404: the plugin serving it is not installed); `onOpen` runs on each (re)connection.
 * Returns a function that closes the stream for good.
 */
export function followSSE(path, { onEvent, onOpen, onState }) {
  const controller = new AbortController();
  let pause = 1000;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        await readSSE(path, {
          signal: controller.signal,
          onOpen: () => { pause = 1000; onState?.("live"); onOpen?.(); },
          onEvent,
        });
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof HttpError && (err.status === 404 || err.status === 405)) { onState?.("absent", err); return; }
      }
      if (controller.signal.aborted) return;
      onState?.("retrying");
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 10000);
    }
  })();
  return () => controller.abort();
}
