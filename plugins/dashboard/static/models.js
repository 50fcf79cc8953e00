// The Models panel: every model with its state and figures, load/unload buttons, a filter, and the event feed.
import { postJSON } from "./api.js";
import { $, h, replaceChildren, toast } from "./dom.js";
import * as fmt from "./format.js";
import { emit, on, patchModel, refreshModels, store } from "./store.js";

const busy = new Map(); // model name -> "load" | "unload" while the request runs
const FEED_SIZE = 40;

const path = (name, action) => `/api/v1/models/${encodeURIComponent(name)}/${action}`;

function searchText(m) {
  const md = m.metadata || {};
  return [m.name, m.state, m.runtime, m.source, ...(m.aliases || []), md.architecture, md.quantization, m.path]
    .filter(Boolean).join(" ").toLowerCase();
}

function matches(m, filter) {
  if (!filter) return true;
  const text = searchText(m);
  return filter.split(/\s+/).every((word) => text.includes(word));
}

function stateBadge(m) {
  const action = busy.get(m.name);
  const state = action === "unload" && m.state === "loaded" ? "unloading" : m.state;
  return h("span", { class: `badge state state-${state}` },
    h("span", { class: "dot", "aria-hidden": "true" }), state);
}

function nameCell(m) {
  const flags = [];
  if (m.pinned) flags.push(h("span", { class: "tag tag-accent", title: "never unloaded for lack of room or idleness", text: "pinned" }));
  if (m.unlisted) flags.push(h("span", { class: "tag", title: "hidden from model lists of the APIs", text: "unlisted" }));
  if (m.missing) flags.push(h("span", { class: "tag tag-danger", title: "its file is gone", text: "missing" }));
  if (m.group) flags.push(h("span", { class: "tag", title: "scheduler.groups: runs with the rules of this group", text: `group ${m.group}` }));
  if (m.priority) flags.push(h("span", { class: "tag", title: "eviction takes lower priorities first", text: `priority ${m.priority}` }));
  if (m.max_concurrent) flags.push(h("span", { class: "tag", title: "requests at its runner at once; more wait in the queue", text: `max ${m.max_concurrent} at once` }));
  return h("th", { scope: "row", class: "model-name" },
    h("div", { class: "name-line" }, h("span", { class: "name", text: m.name }), flags),
    m.aliases?.length ? h("div", { class: "sub" }, "aliases: ", m.aliases.join(", ")) : null,
    m.path ? h("div", { class: "sub path", title: m.path, text: m.path }) : null);
}

function detailsCell(m) {
  // the core's model facts: the context the runner runs with (not the trained one), the capabilities
  const f = m.facts || {};
  const chips = [];
  if (f.architecture) chips.push(["arch", f.architecture]);
  if (f.parameter_count) chips.push(["params", fmt.count(f.parameter_count)]);
  if (f.quantization) chips.push(["quant", f.quantization]);
  if (f.context_length) chips.push(["ctx", fmt.integer(f.context_length)]);
  if (f.embedding) chips.push(["kind", "embedding"]);
  if (!chips.length) return h("td", { class: "muted", text: "—" });
  return h("td", {}, h("dl", { class: "chips" }, chips.map(([k, v]) => h("div", { class: "chip" }, h("dt", { text: k }), h("dd", { text: v })))));
}

function ttlText(m) {
  if (m.ttl === null || m.ttl === undefined) return "—";
  if (m.ttl <= 0 || m.pinned) return "never";
  return fmt.seconds(m.ttl);
}

function ttlCell(m) {
  let sub = null;
  if (m.state === "loaded" && m.in_flight) sub = h("div", { class: "sub", text: "in use" });
  else if (m.state === "loaded" && m.expires_at) {
    sub = h("div", { class: "sub", "data-expires": m.expires_at, title: `at ${fmt.dateTime(m.expires_at)}` }, expiresText(m.expires_at));
  }
  return h("td", {}, h("div", { text: ttlText(m) }), sub);
}

function expiresText(ts) {
  return `unloads in ${fmt.countdown(ts - Date.now() / 1000)}`;
}

function actionsCell(m) {
  const action = busy.get(m.name);
  const loadable = !m.missing && m.state !== "loaded" && m.state !== "loading" && !action;
  const unloadable = (m.state === "loaded" || m.state === "loading") && !action;
  return h("td", { class: "actions" },
    h("button", {
      type: "button", class: "btn btn-small btn-primary", "data-action": "load", "data-model": m.name,
      "aria-label": `Load ${m.name}`, disabled: !loadable, "aria-busy": action === "load" ? "true" : null,
    }, action === "load" ? "Loading…" : "Load"),
    h("button", {
      type: "button", class: "btn btn-small", "data-action": "unload", "data-model": m.name,
      "aria-label": `Unload ${m.name}`, disabled: !unloadable, "aria-busy": action === "unload" ? "true" : null,
    }, action === "unload" ? "Unloading…" : "Unload"),
    h("button", {
      type: "button", class: "btn btn-small btn-ghost", "data-action": "logs", "data-model": m.name,
      "aria-label": `Logs of ${m.name}`, title: "Show the runner's log",
    }, "Logs"));
}

function row(m) {
  const now = Date.now() / 1000;
  const runtimeSub = m.pid ? `pid ${m.pid}` : m.source && m.source !== "config" ? `from ${m.source}` : null;
  const stateCell = h("td", { class: "state-cell" }, stateBadge(m),
    m.state === "loaded" && m.load_seconds ? h("div", { class: "sub" }, `loaded in ${fmt.seconds(m.load_seconds)}`) : null,
    m.error ? h("details", { class: "error-details" }, h("summary", { text: "error" }), h("pre", { text: m.error })) : null);
  return h("tr", { "data-model": m.name, "data-state": m.state },
    nameCell(m),
    stateCell,
    h("td", {}, h("div", { text: m.runtime }), runtimeSub ? h("div", { class: "sub", text: runtimeSub }) : null),
    detailsCell(m),
    h("td", { class: "num", text: m.memory ? fmt.bytes(m.memory) : "—" }),
    h("td", { class: `num${m.in_flight ? " busy" : ""}`, text: String(m.in_flight ?? 0) }),
    ttlCell(m),
    h("td", { title: m.last_used ? fmt.dateTime(m.last_used) : null },
      h("span", { "data-ago": m.last_used || "" }, m.last_used ? fmt.ago(m.last_used, now) : "never")),
    actionsCell(m));
}

function render() {
  const filter = $("model-filter").value.trim().toLowerCase();
  const shown = store.models.filter((m) => matches(m, filter));
  // Keep keyboard focus on the same button across the re-render.
  const active = document.activeElement;
  const focusKey = active?.dataset?.action ? [active.dataset.action, active.dataset.model] : null;
  replaceChildren($("models-body"), shown.map(row));
  if (focusKey) {
    const again = $("models-body").querySelector(`button[data-action="${focusKey[0]}"][data-model="${CSS.escape(focusKey[1])}"]`);
    if (again) (again.disabled ? again.closest("tr").querySelector("button:not([disabled])") || again : again).focus();
  }
  $("models-empty").hidden = shown.length > 0;
  $("models-empty").textContent = store.models.length ? "No model matches the filter." : "No model is configured or discovered yet.";
  const loaded = store.models.filter((m) => m.state === "loaded").length;
  const total = store.models.length;
  $("models-summary").textContent = `${total} model${total === 1 ? "" : "s"} · ${loaded} loaded`
    + (shown.length !== total ? ` · ${shown.length} shown` : "");
}

/** Countdowns and "ago" texts move every second without a refresh. */
function tick() {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll("#models-body [data-expires]")) el.textContent = expiresText(Number(el.dataset.expires));
  for (const el of document.querySelectorAll("#models-body [data-ago]")) {
    if (el.dataset.ago) el.textContent = fmt.ago(Number(el.dataset.ago), now);
  }
}

async function act(action, name) {
  busy.set(name, action);
  if (action === "load") patchModel(name, { state: "loading", error: null });
  else render();
  try {
    const res = await postJSON(path(name, action));
    if (action === "load") toast(`${name} loaded${res.load_seconds ? ` in ${fmt.seconds(res.load_seconds)}` : ""}`, "success");
    else toast(res.unloaded === false ? `${name} was not loaded` : `${name} unloaded`, "success");
  } catch (err) {
    toast(`${action === "load" ? "Loading" : "Unloading"} ${name} failed: ${err.message}`, "error");
  } finally {
    busy.delete(name);
    await refreshModels().catch(() => render());
  }
}

// --- the event feed -----------------------------------------------------------------------------------------------

function describe(ev) {
  switch (ev.kind) {
    case "model_loading": return ["loading", `${ev.model} is loading`];
    case "model_loaded": return ["loaded", `${ev.model} loaded in ${fmt.seconds(ev.load_seconds)}${ev.pid ? ` (pid ${ev.pid})` : ""}`];
    case "model_unloaded": return ["unloaded", `${ev.model} unloaded (${ev.reason})`];
    case "model_failed": return ["failed", `${ev.model} failed: ${ev.error}`];
    case "models_changed": {
      const parts = [["added", ev.added], ["changed", ev.changed], ["missing", ev.missing]]
        .filter(([, list]) => list?.length).map(([k, list]) => `${list.length} ${k}`);
      return ["changed", `Models changed: ${parts.join(", ") || "no difference"}`];
    }
    case "config_reloaded": {
      const file = ev.file ? ev.file.split("/").pop() : "Site file";
      return ev.ok ? ["changed", `${file} reloaded: ${ev.summary}`]
        : ["failed", `${file} refused (${ev.problems.length} problem${ev.problems.length === 1 ? "" : "s"}): ${ev.problems[0] || ""}`];
    }
    case "request_finished": {
      const tokens = ev.completion_tokens ? ` · ${ev.completion_tokens} tokens` : "";
      return [ev.status >= 400 ? "failed" : "request",
        `${ev.model} · ${ev.surface} ${ev.endpoint} → ${ev.status}${tokens} · ${fmt.seconds(ev.duration)}`];
    }
    default: return null;
  }
}

function addToFeed(ev) {
  const entry = describe(ev);
  if (!entry) return;
  const [kind, text] = entry;
  const feed = $("event-feed");
  feed.prepend(h("li", { class: `feed-${kind}` },
    h("time", { datetime: new Date((ev.ts || Date.now() / 1000) * 1000).toISOString(), text: fmt.clock(ev.ts || Date.now() / 1000) }),
    h("span", { class: `badge state state-${kind}`, text: kind }),
    h("span", { class: "feed-text", text })));
  while (feed.children.length > FEED_SIZE) feed.lastElementChild.remove();
  $("event-feed-empty").hidden = true;
}

export function handleEvent(ev) {
  switch (ev.kind) {
    case "model_loading": patchModel(ev.model, { state: "loading", error: null }); break;
    case "model_loaded": patchModel(ev.model, { state: "loaded", pid: ev.pid ?? null, load_seconds: ev.load_seconds, error: null }); break;
    case "model_unloaded": patchModel(ev.model, { state: "unloaded", pid: null, expires_at: null }); break;
    case "model_failed": patchModel(ev.model, { state: "failed", error: ev.error, pid: null }); break;
    case "request_started": {
      const m = store.models.find((x) => x.name === ev.model);
      if (m) patchModel(ev.model, { in_flight: (m.in_flight || 0) + 1 });
      break;
    }
    case "request_finished": case "models_changed": case "config_reloaded": break;
    default: return;
  }
  addToFeed(ev);
  emit("model-event", ev);
}

let renderQueued = false;

/** One table render per frame, however many updates arrive. */
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

export function initModels() {
  on("models", renderSoon);
  $("model-filter").addEventListener("input", render);
  $("models-refresh").addEventListener("click", () => refreshModels().catch((err) => toast(`Refresh failed: ${err.message}`, "error")));
  $("models-body").addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    if (button.dataset.action === "logs") {
      emit("open-logs", button.dataset.model);
      location.hash = "logs";
    } else act(button.dataset.action, button.dataset.model);
  });
  setInterval(tick, 1000);
}
