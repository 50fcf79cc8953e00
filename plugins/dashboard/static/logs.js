// The Logs panel: the recent history and the live output of one runner.
import { followSSE, getJSON, HttpError } from "./api.js";
import { $, h } from "./dom.js";
import { on, store } from "./store.js";

const MAX_LINES = 5000;
let close = null;
let current = "";
let pending = [];
let flushScheduled = false;
let lineCount = 0;
let pollTimer = null;

// llama-server marks its lines with a level letter after the timestamp ("0.00.026.085 W srv ..."); older builds
// and other runtimes only say it in words.
function level(line) {
  if (/^\S+ E /.test(line) || /\b(error|fatal|panic)\b/i.test(line)) return "log-error";
  if (/^\S+ W /.test(line) || /\bwarn(ing)?\b/i.test(line)) return "log-warn";
  return null;
}

function flush() {
  flushScheduled = false;
  const view = $("log-view");
  const follow = $("logs-follow").checked;
  const frag = document.createDocumentFragment();
  for (const line of pending) frag.append(h("span", { class: level(line) }, line, "\n"));
  pending = [];
  view.append(frag);
  while (view.childElementCount > MAX_LINES) view.firstElementChild.remove();
  if (follow) view.scrollTop = view.scrollHeight;
  lineCount = view.childElementCount;
  setStatus();
}

function addLines(lines) {
  pending.push(...lines);
  if (!flushScheduled) {
    flushScheduled = true;
    requestAnimationFrame(flush);
  }
}

let streamState = "";

function setStatus() {
  const text = !current ? "No runner selected."
    : streamState === "live" ? `Streaming ${current} · ${lineCount} line${lineCount === 1 ? "" : "s"}`
      : streamState === "polling" ? `Showing ${current} (refreshed every 2 s) · ${lineCount} lines`
        : streamState === "retrying" ? `Reconnecting to ${current}…`
          : streamState === "error" ? `Cannot read the log of ${current}.` : `Opening ${current}…`;
  $("logs-status").textContent = text;
}

function clearView() {
  $("log-view").replaceChildren();
  pending = [];
  lineCount = 0;
}

function stop() {
  close?.();
  close = null;
  clearInterval(pollTimer);
  pollTimer = null;
}

async function poll(name) {
  try {
    const body = await getJSON(`/api/v1/models/${encodeURIComponent(name)}/logs`);
    if (name !== current) return;
    clearView();
    addLines(body.lines || []);
    streamState = "polling";
  } catch (err) {
    streamState = "error";
    if (err instanceof HttpError && err.status === 404) stop();
  }
  setStatus();
}

function open(name) {
  stop();
  clearView();
  current = name;
  streamState = "opening";
  setStatus();
  if (!name) return;
  close = followSSE(`/api/v1/models/${encodeURIComponent(name)}/logs/stream`, {
    onOpen: clearView, // every connection starts with the history again
    onEvent: ({ data }) => {
      let line = data;
      try { line = JSON.parse(data); } catch { /* a plain line */ }
      addLines([typeof line === "string" ? line : JSON.stringify(line)]);
    },
    onState: (state) => {
      if (state === "absent") {
        poll(name);
        pollTimer = setInterval(() => poll(name), 2000);
        return;
      }
      streamState = state;
      setStatus();
    },
  });
}

function fillSelect() {
  const select = $("logs-model");
  const previous = select.value;
  const models = [...store.models].sort((a, b) => (b.state === "loaded") - (a.state === "loaded") || a.name.localeCompare(b.name));
  select.replaceChildren(...models.map((m) => h("option", { value: m.name }, m.state === "unloaded" ? m.name : `${m.name} (${m.state})`)));
  const choice = wanted || previous;
  if (models.some((m) => m.name === choice)) {
    select.value = choice;
    wanted = "";
  }
  return select.value;
}

let visible = false;
let wanted = ""; // a runner asked for from the Models panel

export const logsPanel = {
  init() {
    on("models", () => {
      const chosen = fillSelect();
      if (visible && chosen !== current) open(chosen);
    });
    // A runner that (re)starts writes a new log: reopen the stream so that its history comes along.
    on("model-event", (ev) => {
      if (visible && ev.model === current && (ev.kind === "model_loading" || ev.kind === "model_loaded") && streamState !== "live") open(current);
    });
    on("open-logs", (name) => { wanted = name; });
    $("logs-model").addEventListener("change", (ev) => open(ev.target.value));
    $("logs-clear").addEventListener("click", clearView);
    $("logs-wrap").addEventListener("change", (ev) => $("log-view").classList.toggle("wrap", ev.target.checked));
    $("log-view").addEventListener("scroll", () => {
      const view = $("log-view");
      const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 8;
      if (!atBottom && $("logs-follow").checked && !flushScheduled) $("logs-follow").checked = false;
    });
    $("logs-follow").addEventListener("change", (ev) => { if (ev.target.checked) $("log-view").scrollTop = $("log-view").scrollHeight; });
  },
  show() {
    visible = true;
    open(fillSelect());
  },
  hide() {
    visible = false;
    stop();
    current = "";
  },
};
