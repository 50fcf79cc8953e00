// The Monitoring panel: request and machine charts over time, headline figures, and the recent activity table.
// Request figures come from the activity log (seeded from /api/v1/activity, then fed by request_finished events);
// machine and runner figures from the metrics plugin's samples (system/runner events, or polling /api/v1/metrics).
import { getJSON, HttpError } from "./api.js";
import { LineChart } from "./charts.js";
import { $, h, replaceChildren } from "./dom.js";
import * as fmt from "./format.js";
import { on, store } from "./store.js";

const WINDOW = 15 * 60; // seconds shown by the charts
const STEP = 10; // seconds between two points of the request-rate charts
const SPAN = 60; // each point averages the rate over the minute before it
const ACTIVITY_ROWS = 100;
const KEEP = WINDOW + 120;

const activity = new Map(); // id -> entry
const systemSamples = []; // SystemSample
const runnerSamples = new Map(); // model -> [RunnerSample]
let summary = null;
let charts = null;
let visible = false;
let eventsLive = false;
let pollTimer = null;
let renderScheduled = false;

const rate = (v) => (v >= 100 ? fmt.integer(v) : fmt.decimal(v, v < 1 ? 2 : 1));
const pct = (v) => `${fmt.decimal(v, 0)}%`;

function tokensPerSecond(e) {
  if (e.tokens_per_second != null) return e.tokens_per_second;
  if (e.completion_tokens && e.predicted_ms) return (e.completion_tokens / e.predicted_ms) * 1000;
  return null;
}

function addActivity(entry) {
  activity.set(entry.id, entry);
}

function prune() {
  const horizon = Date.now() / 1000 - KEEP;
  while (systemSamples.length && systemSamples[0].ts < horizon) systemSamples.shift();
  for (const [model, list] of runnerSamples) {
    while (list.length && list[0].ts < horizon) list.shift();
    if (!list.length) runnerSamples.delete(model);
  }
  if (activity.size > 2000) {
    const sorted = [...activity.entries()].sort((a, b) => a[1].ts - b[1].ts);
    for (const [id] of sorted.slice(0, activity.size - 2000)) activity.delete(id);
  }
}

function addSystem(sample) {
  if (!sample?.ts || systemSamples.at(-1)?.ts >= sample.ts) return;
  systemSamples.push(sample);
}

/** Past samples kept by the metrics plugin, so the charts of a page opened now start with some history. */
function addHistory(history) {
  for (const s of history?.system || []) addSystem(s);
  for (const r of history?.runners || []) addRunner(r);
}

function addRunner(sample) {
  if (!sample?.model || !sample.ts) return;
  const list = runnerSamples.get(sample.model) || [];
  if (list.at(-1)?.ts >= sample.ts) return;
  list.push(sample);
  runnerSamples.set(sample.model, list);
}

function requestSeries() {
  const now = Date.now() / 1000;
  const last = Math.floor(now / STEP) * STEP;
  const first = last - WINDOW;
  const finished = [...activity.values()].filter((e) => e.ts > first - SPAN).sort((a, b) => a.ts - b.ts);
  const requests = [];
  const tokens = [];
  // A sliding minute: sparse requests read as a steady rate rather than as spikes.
  let lo = 0;
  let hi = 0;
  let count = 0;
  let generated = 0;
  const times = [];
  for (let t = first; t <= last; t += STEP) times.push(t);
  if (now > last) times.push(now); // the minute up to now, so that a request just finished shows at once
  for (const t of times) {
    while (hi < finished.length && finished[hi].ts <= t) { count += 1; generated += finished[hi].completion_tokens || 0; hi++; }
    while (lo < hi && finished[lo].ts <= t - SPAN) { count -= 1; generated -= finished[lo].completion_tokens || 0; lo++; }
    requests.push([t, count / SPAN]);
    tokens.push([t, generated / SPAN]);
  }
  const ttft = new Map(); // model -> points
  for (const e of finished) {
    if (e.ttft == null || e.ts < first) continue;
    if (!ttft.has(e.model)) ttft.set(e.model, []);
    ttft.get(e.model).push([e.ts, e.ttft]);
  }
  const ttftSeries = [...ttft.entries()].sort().map(([name, points]) => ({ name, points }));
  return { requests, tokens, ttft: ttftSeries };
}

function machineSeries() {
  const cpus = systemSamples.at(-1)?.cpu_count || 1;
  const cpu = [{ name: "machine", points: systemSamples.map((s) => [s.ts, s.cpu_percent]) }];
  const mem = [{ name: "machine (used)", points: systemSamples.map((s) => [s.ts, s.memory_used]) }];
  const gpu = [];
  const gpuCount = Math.max(0, ...systemSamples.map((s) => s.gpus?.length || 0));
  for (let i = 0; i < gpuCount; i++) {
    gpu.push({ name: `GPU ${i}`, points: systemSamples.filter((s) => s.gpus?.[i]?.memory_used != null).map((s) => [s.ts, s.gpus[i].memory_used]) });
  }
  for (const [model, list] of [...runnerSamples.entries()].sort()) {
    // A runner's CPU is counted per core (100 = one core): shown as a share of the whole machine like the machine's.
    cpu.push({ name: model, points: list.filter((s) => s.cpu_percent != null).map((s) => [s.ts, s.cpu_percent / cpus]) });
    mem.push({ name: model, points: list.map((s) => [s.ts, s.rss]) });
    if (list.some((s) => s.gpu_memory != null)) gpu.push({ name: model, points: list.filter((s) => s.gpu_memory != null).map((s) => [s.ts, s.gpu_memory]) });
  }
  return { cpu, mem, gpu };
}

function stat(label, value, sub) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label", text: label }), h("div", { class: "stat-value", text: value }),
    sub ? h("div", { class: "stat-sub", text: sub }) : null);
}

function renderStats(req) {
  const t = summary?.totals || {};
  const sys = systemSamples.at(-1) || summary?.system;
  const recent = [...activity.values()].filter((e) => e.ts > Date.now() / 1000 - WINDOW);
  const ttfts = recent.map((e) => e.ttft).filter((v) => v != null).sort((a, b) => a - b);
  const speeds = recent.map(tokensPerSecond).filter((v) => v != null);
  const loaded = store.models.filter((m) => m.state === "loaded").length;
  const lastRate = req.requests.at(-1)?.[1] ?? 0;
  replaceChildren($("stat-grid"),
    stat("Requests", fmt.integer(t.requests ?? recent.length), `${t.errors ?? 0} failed · ${rate(lastRate)}/s last minute`),
    stat("In flight", fmt.integer(t.in_flight ?? store.models.reduce((a, m) => a + (m.in_flight || 0), 0)), `${loaded} model${loaded === 1 ? "" : "s"} loaded`),
    stat("Tokens generated", fmt.count(t.completion_tokens ?? 0), `${fmt.count(t.prompt_tokens ?? 0)} prompt tokens`),
    stat("Generation speed", speeds.length ? `${rate(speeds.reduce((a, b) => a + b, 0) / speeds.length)} tok/s` : "—", "mean, last 15 min"),
    stat("Time to first token", ttfts.length ? fmt.seconds(ttfts[Math.floor(ttfts.length / 2)]) : "—", "median, last 15 min"),
    stat("Machine CPU", sys ? pct(sys.cpu_percent) : "—", sys ? `${sys.cpu_count} cores · load ${sys.load_average?.[0] ?? "—"}` : "no sample yet"),
    stat("Machine memory", sys ? fmt.bytes(sys.memory_used) : "—", sys ? `of ${fmt.bytes(sys.memory_total)} (${fmt.decimal(sys.memory_percent, 0)}%)` : ""));
}

function renderActivity() {
  const rows = [...activity.values()].sort((a, b) => b.ts - a.ts).slice(0, ACTIVITY_ROWS);
  replaceChildren($("activity-body"), rows.map((e) => {
    const tps = tokensPerSecond(e);
    const failed = e.status >= 400 || e.error;
    return h("tr", { "data-model": e.model, class: failed ? "row-error" : null, title: e.error || null },
      h("td", { title: fmt.dateTime(e.ts) }, h("time", { datetime: new Date(e.ts * 1000).toISOString(), text: fmt.clock(e.ts) })),
      h("td", { class: "model-cell", text: e.model }),
      h("td", { text: e.surface }),
      h("td", { class: "mono", text: `${e.endpoint}${e.stream ? " (stream)" : ""}` }),
      h("td", { class: "num" }, h("span", { class: `status-code ${failed ? "bad" : "ok"}`, text: String(e.status) })),
      h("td", { class: "num", text: `${e.prompt_tokens ?? "—"} / ${e.completion_tokens ?? "—"}` }),
      h("td", { class: "num", text: tps == null ? "—" : rate(tps) }),
      h("td", { class: "num", text: fmt.seconds(e.ttft) }),
      h("td", { class: "num", text: fmt.seconds(e.duration) }));
  }));
  $("activity-empty").hidden = rows.length > 0;
}

function ensureCharts() {
  if (charts) return charts;
  const grid = $("chart-grid");
  const slot = () => grid.appendChild(h("div", { class: "card chart-card" }));
  const machine = { window: WINDOW, adaptive: true };
  charts = {
    requests: new LineChart(slot(), { title: "Requests / s (1 min average)", format: rate, window: WINDOW, min: 0.1 }),
    tokens: new LineChart(slot(), { title: "Generated tokens / s (1 min average)", format: rate, window: WINDOW, min: 1 }),
    ttft: new LineChart(slot(), { title: "Time to first token", format: fmt.seconds, window: WINDOW, min: 0.1 }),
    cpu: new LineChart(slot(), { ...machine, title: "CPU (% of the machine)", format: pct, min: 10 }),
    mem: new LineChart(slot(), { ...machine, title: "Memory", format: fmt.bytes, min: 1024 ** 3, bytes: true }),
  };
  charts.gpuSlot = slot();
  charts.gpuSlot.hidden = true;
  charts.gpu = new LineChart(charts.gpuSlot, { ...machine, title: "GPU memory", format: fmt.bytes, min: 1024 ** 3, bytes: true });
  return charts;
}

function render() {
  renderScheduled = false;
  if (!visible) return;
  prune();
  const c = ensureCharts();
  const req = requestSeries();
  const mac = machineSeries();
  c.requests.update([{ name: "requests", points: req.requests }]);
  c.tokens.update([{ name: "tokens", points: req.tokens }]);
  c.ttft.update(req.ttft);
  c.cpu.update(mac.cpu);
  c.mem.update(mac.mem);
  c.gpuSlot.hidden = mac.gpu.length === 0;
  if (mac.gpu.length) c.gpu.update(mac.gpu);
  renderStats(req);
  renderActivity();
  $("monitoring-status").textContent = eventsLive ? "Live · charts cover the last 15 minutes" : "Refreshed every 5 s · charts cover the last 15 minutes";
}

function renderSoon() {
  if (renderScheduled || !visible) return;
  renderScheduled = true;
  setTimeout(render, 300);
}

async function loadSummary() {
  summary = await getJSON("/api/v1/metrics");
  addHistory(summary.history);
  if (summary.system) addSystem(summary.system);
  for (const r of summary.runners || []) addRunner(r);
}

async function loadActivity() {
  const body = await getJSON(`/api/v1/activity?limit=500`);
  for (const e of body.activity || []) addActivity(e);
}

async function poll() {
  try {
    await Promise.all([loadSummary(), eventsLive ? null : loadActivity()]);
  } catch {
    // the next tick tries again
  }
  render();
}

export const monitoringPanel = {
  /** Probe the metrics plugin: resolves to false when it is absent. */
  async init() {
    on("models", renderSoon);
    try {
      await Promise.all([loadSummary(), loadActivity()]);
      return true;
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) return false;
      throw err;
    }
  },
  /** An event from /api/v1/events. */
  handleEvent(ev) {
    if (ev.kind === "snapshot") {
      // The first event of each connection: the summary, as GET /api/v1/metrics would answer.
      summary = ev;
      addHistory(ev.history);
      if (ev.system) addSystem(ev.system);
      for (const r of ev.runners || []) addRunner(r);
    } else if (ev.kind === "system") addSystem(ev);
    else if (ev.kind === "runner") addRunner(ev);
    else if (ev.kind === "request_finished") addActivity(ev);
    else return;
    if (summary && ev.kind === "request_finished") {
      const t = summary.totals;
      t.requests = (t.requests || 0) + 1;
      if (ev.status >= 400 || ev.error) t.errors = (t.errors || 0) + 1;
      t.prompt_tokens = (t.prompt_tokens || 0) + (ev.prompt_tokens || 0);
      t.completion_tokens = (t.completion_tokens || 0) + (ev.completion_tokens || 0);
    }
    renderSoon();
  },
  setLive(live) {
    eventsLive = live;
  },
  show() {
    visible = true;
    render();
    clearInterval(pollTimer);
    pollTimer = setInterval(poll, 5000);
    poll();
  },
  hide() {
    visible = false;
    clearInterval(pollTimer);
  },
};
