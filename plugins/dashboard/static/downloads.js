// Downloads from Hugging Face: a form on the Models panel and one progress bar per download and per file.
// A download is started detached (leaving the page does not cancel it) and followed through its event stream.
import { errorFrom, getJSON, readSSE, request } from "./api.js";
import { $, h, replaceChildren, toast } from "./dom.js";
import * as fmt from "./format.js";
import { refreshModels } from "./store.js";

const jobs = new Map(); // job id -> last snapshot
const following = new Set();
const RUNNING = new Set(["resolving", "downloading", "verifying", "installing"]);

function bar(label, done, total) {
  const pct = total ? Math.min(100, (100 * done) / total) : 0;
  return h("progress", {
    max: total || 1, value: total ? done : 0, "aria-label": label,
    "aria-valuetext": total ? `${fmt.bytes(done)} of ${fmt.bytes(total)} (${pct.toFixed(0)} %)` : "waiting",
  });
}

function jobItem(job) {
  const running = RUNNING.has(job.status);
  const rate = running && job.bytes_per_second ? ` · ${fmt.bytes(job.bytes_per_second)}/s` : "";
  const sizes = job.total ? `${fmt.bytes(job.completed)} of ${fmt.bytes(job.total)}` : "";
  return h("li", { class: `download download-${job.status}`, "data-job": job.id, "data-status": job.status },
    h("div", { class: "download-head" },
      h("span", { class: "name", text: job.model }),
      h("span", { class: `badge state state-${job.status}`, text: job.status }),
      h("span", { class: "sub", text: `${sizes}${rate}` }),
      running ? h("button", { type: "button", class: "btn btn-small btn-ghost", "data-cancel": job.id,
        "aria-label": `Cancel download of ${job.model}`, text: "Cancel" }) : null),
    bar(`Download of ${job.model}`, job.completed, job.total),
    job.files.length > 1 ? h("ul", { class: "download-files" }, job.files.map((f) => h("li", {},
      h("span", { class: "sub", text: `${f.name} · ${fmt.bytes(f.completed)} of ${fmt.bytes(f.total)}` }),
      bar(f.name, f.completed, f.total)))) : null,
    job.error ? h("p", { class: "error-text", role: "alert", text: job.error }) : null,
    job.status === "success" && job.served_as ? h("p", { class: "sub", text: `served as ${job.served_as}` }) : null);
}

function render() {
  const list = [...jobs.values()].sort((a, b) => b.started_at - a.started_at);
  replaceChildren($("downloads"), list.map(jobItem));
  $("downloads-empty").hidden = list.length > 0;
}

function update(job) {
  const before = jobs.get(job.id);
  jobs.set(job.id, job);
  render();
  if (before && RUNNING.has(before.status) && !RUNNING.has(job.status)) {
    if (job.status === "success") {
      toast(`${job.model} downloaded${job.served_as ? ` (served as ${job.served_as})` : ""}`, "success");
      refreshModels().catch(() => {});
    } else toast(`Download of ${job.model} ${job.status}: ${job.error || ""}`, "error");
  }
}

async function follow(path, init = {}) {
  await readSSE(path, {
    ...init,
    onEvent: ({ data }) => {
      const job = JSON.parse(data);
      if (!following.has(job.id)) following.add(job.id);
      update(job);
    },
  });
}

async function start(ev) {
  ev.preventDefault();
  const input = $("download-model");
  const model = input.value.trim();
  if (!model) return;
  const button = $("download-start");
  button.disabled = true;
  try {
    await follow("/api/v1/models/download", { method: "POST", body: { model, detached: true, stream: true } });
    input.value = "";
  } catch (err) {
    toast(`Download of ${model} failed: ${err.message}`, "error");
    $("download-error").textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

async function cancel(id) {
  const res = await request(`/api/v1/downloads/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (!res.ok) toast(`Cancel failed: ${(await errorFrom(res)).message}`, "error");
}

/** Downloads of this run (started elsewhere too): running ones are followed. */
export async function refreshDownloads() {
  let body;
  try {
    body = await getJSON("/api/v1/downloads");
  } catch {
    return;
  }
  for (const job of body.downloads || []) {
    jobs.set(job.id, job);
    if (RUNNING.has(job.status) && !following.has(job.id)) {
      following.add(job.id);
      follow(`/api/v1/downloads/${encodeURIComponent(job.id)}/events`).catch(() => {}).finally(() => following.delete(job.id));
    }
  }
  render();
}

export function initDownloads() {
  $("download-form").addEventListener("submit", (ev) => { $("download-error").textContent = ""; start(ev); });
  $("downloads").addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-cancel]");
    if (button) cancel(button.dataset.cancel);
  });
  refreshDownloads();
}
