// The dashboard's entry point: tabs, the API-key dialog, the header, and the host's event stream.
import { apiKey, followSSE, forgetKey, getJSON, HttpError, onKeyNeeded } from "./api.js";
import { configPanel, discoveryPanel } from "./config.js";
import { $, h, replaceChildren, toast } from "./dom.js";
import { initDownloads, refreshDownloads } from "./downloads.js";
import * as fmt from "./format.js";
import { logsPanel } from "./logs.js";
import { handleEvent as modelEvent, initModels } from "./models.js";
import { monitoringPanel } from "./monitoring.js";
import { playgroundPanel } from "./playground.js";
import { refreshModels, refreshModelsSoon, store } from "./store.js";

const panels = {
  models: { show: () => { refreshDownloads(); return refreshModels().catch(() => {}); } },
  logs: logsPanel,
  monitoring: monitoringPanel,
  discovery: discoveryPanel,
  config: configPanel,
  playground: playgroundPanel,
};
let currentPanel = null;

// --- tabs (WAI-ARIA tabs pattern, with the panel in the URL fragment) ----------------------------------------------

function tabs() {
  return [...document.querySelectorAll('[role="tab"]')].filter((t) => !t.hidden);
}

function showPanel(name, { focus = false } = {}) {
  const tab = $(`tab-${name}`);
  if (!panels[name] || !tab || tab.hidden) name = "models";
  if (name === currentPanel) return;
  if (currentPanel) panels[currentPanel].hide?.();
  currentPanel = name;
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const selected = t.dataset.panel === name;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(`panel-${t.dataset.panel}`).hidden = !selected;
  }
  if (focus) $(`tab-${name}`).focus();
  document.title = `${$(`tab-${name}`).textContent} · llama-host`;
  Promise.resolve(panels[name].show?.()).catch((err) => toast(`${name}: ${err.message}`, "error"));
}

function initTabs() {
  const list = $("tablist");
  list.addEventListener("click", (ev) => {
    const tab = ev.target.closest('[role="tab"]');
    if (tab) location.hash = tab.dataset.panel;
  });
  list.addEventListener("keydown", (ev) => {
    const all = tabs();
    const i = all.indexOf(document.activeElement);
    if (i < 0) return;
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[ev.key];
    if (next === undefined) return;
    ev.preventDefault();
    const tab = all[(next + all.length) % all.length];
    location.hash = tab.dataset.panel;
    tab.focus();
  });
  window.addEventListener("hashchange", () => showPanel(location.hash.slice(1)));
}

function hideFeature(name) {
  $(`tab-${name}`).hidden = true;
  $(`panel-${name}`).hidden = true;
  if (currentPanel === name) showPanel("models");
}

// --- API key -------------------------------------------------------------------------------------------------------

function askForKey(rejected) {
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-error").textContent = rejected ? "The host refused that key. Try again." : "";
  input.value = "";
  if (!dialog.open) dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    const submit = (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) {
        $("key-error").textContent = "Enter the API key.";
        return;
      }
      $("key-form").removeEventListener("submit", submit);
      dialog.close();
      $("forget-key").hidden = false;
      resolve(key);
    };
    $("key-form").addEventListener("submit", submit);
  });
}

function initKey() {
  onKeyNeeded(askForKey);
  // Nothing works without the key: the dialog cannot be dismissed with Escape.
  $("key-dialog").addEventListener("cancel", (ev) => ev.preventDefault());
  $("forget-key").hidden = !apiKey();
  $("forget-key").addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
}

// --- header and event stream ---------------------------------------------------------------------------------------

function setConnection(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

let statusAt = 0;

function renderHostMeta() {
  const s = store.status;
  if (!s) return;
  const uptime = s.uptime + (Date.now() - statusAt) / 1000;
  $("host-meta").textContent = `v${s.version} · up ${fmt.uptime(uptime)}`;
}

/** The banner of the last reload (``status.reload``, fetched again on each ``config_reloaded`` event): a refused
 * edit (of the site file or discovered.yaml) with every problem, or the keys that need a restart; hidden when the last
 * reload applied everything. */
function renderReload(reload) {
  const banner = $("reload-banner");
  const restart = reload?.ok && reload.needs_restart?.length;
  if (!reload || (reload.ok && !restart)) {
    banner.hidden = true;
    return;
  }
  const when = fmt.clock(reload.at ?? reload.ts ?? Date.now() / 1000);
  banner.dataset.kind = reload.ok ? "restart" : "refused";
  const file = reload.file ? reload.file.split("/").pop() : "the site file";
  $("reload-banner-text").textContent = reload.ok
    ? `${file} reloaded at ${when}; restart the host to apply: ${reload.needs_restart.join(", ")}`
    : `The edit of ${file} was refused at ${when} (${reload.trigger}); the host keeps running with its configuration:`;
  replaceChildren($("reload-banner-problems"), ...(reload.ok ? [] : reload.problems || []).map((p) => h("li", { text: p })));
  banner.hidden = false;
}

async function loadStatus() {
  store.status = await getJSON("/api/v1/status");
  statusAt = Date.now();
  renderHostMeta();
  renderReload(store.status.reload);
  const plugins = store.status.plugins || [];
  const discovery = plugins.some((p) => /discover/i.test(p.name) && p.enabled && p.loaded && !p.error);
  if (!discovery) hideFeature("discovery");
}

let pollTimer = null;

function onHostEvent({ event, data }) {
  let ev;
  try { ev = JSON.parse(data); } catch { return; }
  if (!ev || typeof ev !== "object") return;
  ev.kind ??= event !== "message" ? event : ev.type;
  const sample = ev.kind === "system" || ev.kind === "runner" || ev.kind === "snapshot";
  if (sample || ev.kind === "request_finished") monitoringPanel.handleEvent(ev);
  if (sample) return;
  if (ev.kind === "config_reloaded") loadStatus().catch(() => {});  // the host decides which report the banner shows
  modelEvent(ev);
  if (ev.kind !== "request_started") refreshModelsSoon();
}

function startEvents() {
  followSSE("/api/v1/events", {
    onEvent: onHostEvent,
    onOpen: () => {
      // Catch up on what happened while disconnected (or on everything, when the host was down at first).
      if (!store.status) loadStatus().catch(() => {});
      refreshModels().catch(() => {});
    },
    onState: (state) => {
      monitoringPanel.setLive(state === "live");
      if (state === "live") setConnection("live", "Live");
      else if (state === "retrying") setConnection("retrying", "Reconnecting…");
      else if (state === "absent") {
        // No metrics plugin: poll the model list instead of listening.
        setConnection("polling", "Polling");
        pollTimer ??= setInterval(() => refreshModels()
          .then(() => setConnection("polling", "Polling"))
          .catch(() => setConnection("down", "Host unreachable")), 3000);
      }
    },
  });
}

async function main() {
  initKey();
  initTabs();
  initModels();
  initDownloads();
  for (const panel of Object.values(panels)) panel.init?.();
  showPanel(location.hash.slice(1) || "models");
  try {
    await loadStatus();
    await refreshModels();
  } catch (err) {
    setConnection("down", "Host unreachable");
    toast(`Cannot reach the host: ${err.message}`, "error");
  }
  const metrics = await monitoringPanel.init().catch(() => true);
  if (!metrics) hideFeature("monitoring");
  startEvents();
  // Figures the events do not carry (last used, expiry) drift: refresh now and then.
  setInterval(() => refreshModels().catch(() => {}), 15000);
  setInterval(renderHostMeta, 10000);
  if (location.hash.slice(1) !== currentPanel) showPanel(location.hash.slice(1));
}

window.addEventListener("unhandledrejection", (ev) => {
  if (ev.reason instanceof HttpError) {
    toast(ev.reason.message, "error");
    ev.preventDefault();
  }
});

main();
