// The Config panel (effective configuration, plugins, listeners) and the Discovery panel (rescan).
import { getJSON, postJSON, HttpError } from "./api.js";
import { $, h, replaceChildren, toast } from "./dom.js";
import * as fmt from "./format.js";
import { refreshModels, store } from "./store.js";

/** JSON with its keys, strings, numbers and literals in their own spans (coloured by the stylesheet). */
function highlighted(value, indent = "") {
  const inner = indent + "  ";
  if (value === null || typeof value === "boolean") return [h("span", { class: "j-lit", text: String(value) })];
  if (typeof value === "number") return [h("span", { class: "j-num", text: String(value) })];
  if (typeof value === "string") return [h("span", { class: "j-str", text: JSON.stringify(value) })];
  if (Array.isArray(value)) {
    if (!value.length) return ["[]"];
    const out = ["[\n"];
    value.forEach((v, i) => out.push(inner, ...highlighted(v, inner), i < value.length - 1 ? ",\n" : "\n"));
    return [...out, indent, "]"];
  }
  const keys = Object.keys(value);
  if (!keys.length) return ["{}"];
  const out = ["{\n"];
  keys.forEach((k, i) => out.push(inner, h("span", { class: "j-key", text: JSON.stringify(k) }), ": ",
    ...highlighted(value[k], inner), i < keys.length - 1 ? ",\n" : "\n"));
  return [...out, indent, "}"];
}

function pluginState(p) {
  if (p.error) return h("span", { class: "badge state state-failed", title: p.error }, h("span", { class: "dot", "aria-hidden": "true" }), "error");
  if (!p.enabled) return h("span", { class: "badge state state-unloaded" }, h("span", { class: "dot", "aria-hidden": "true" }), "disabled");
  if (!p.loaded) return h("span", { class: "badge state state-loading" }, h("span", { class: "dot", "aria-hidden": "true" }), "not loaded");
  return h("span", { class: "badge state state-loaded" }, h("span", { class: "dot", "aria-hidden": "true" }), "running");
}

let configText = "";

export const configPanel = {
  init() {
    $("config-copy").addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(configText);
        toast("Configuration copied", "success");
      } catch {
        toast("The browser refused the clipboard", "error");
      }
    });
  },
  async show() {
    const [config, status] = await Promise.all([
      getJSON("/api/v1/config").catch((err) => ({ error: err.message })),
      getJSON("/api/v1/status").catch(() => store.status),
    ]);
    configText = JSON.stringify(config, null, 2);
    replaceChildren($("config-view"), highlighted(config));
    if (!status) return;
    store.status = status;
    const plugins = [...(status.plugins || [])].sort((a, b) => a.name.localeCompare(b.name));
    replaceChildren($("plugins-body"), plugins.map((p) => h("tr", { "data-plugin": p.name },
      h("th", { scope: "row" }, h("div", { class: "name", text: p.name }), p.error ? h("div", { class: "sub error-text", text: p.error }) : null),
      h("td", {}, h("div", { text: p.distribution || "—" }), p.version ? h("div", { class: "sub", text: `v${p.version}` }) : null),
      h("td", {}, pluginState(p)))));
    replaceChildren($("listeners"), (status.listeners || []).map((l) => h("li", {},
      h("span", { class: "port", text: `:${l.port}` }),
      h("span", { class: "surfaces" }, (l.surfaces || []).map((s) => h("span", { class: "tag", text: typeof s === "string" ? s : s.name }))))));
    const running = plugins.filter((p) => p.enabled && p.loaded && !p.error).length;
    $("config-summary").textContent = `llama-host ${status.version || ""} · up ${fmt.uptime(status.uptime)} · ${running} of ${plugins.length} plugins running`;
  },
};

// --- discovery ----------------------------------------------------------------------------------------------------

function list(title, items, kind) {
  return h("section", { class: `card result-list result-${kind}`, "aria-label": title },
    h("h2", {}, title, " ", h("span", { class: "count", text: String(items.length) })),
    items.length ? h("ul", {}, items.map((i) => h("li", { class: "mono", text: String(i) }))) : h("p", { class: "muted", text: "none" }));
}

function problems(list) {
  if (!list) return [];
  if (Array.isArray(list)) return list.map((e) => (typeof e === "string" ? e : e.message ? `${e.path ? `${e.path}: ` : ""}${e.message}` : JSON.stringify(e)));
  return Object.entries(list).map(([k, v]) => `${k}: ${v}`);
}

function problemList(title, items, cls, role) {
  if (!items.length) return null;
  return h("section", { class: `card ${cls}`, role }, h("h2", {}, title, " ", h("span", { class: "count", text: String(items.length) })),
    h("ul", {}, items.map((e) => h("li", { class: "mono", text: e }))));
}

/** A rescan report (also the last scan kept by the plugin): what was added, changed, missing, and what failed. */
function renderReport(res, heading) {
  const facts = [`${res.added?.length || 0} added`, `${res.changed?.length || 0} changed`, `${res.missing?.length || 0} missing`];
  if (res.models != null) facts.push(`${res.models} model${res.models === 1 ? "" : "s"} known`);
  if (res.files != null) facts.push(`${res.files} file${res.files === 1 ? "" : "s"} seen, ${res.read ?? 0} read`);
  replaceChildren($("discovery-result"),
    h("p", { class: "summary", text: `${heading}: ${facts.join(" · ")}.` }),
    h("div", { class: "result-grid" },
      list("Added", res.added || [], "added"),
      list("Changed", res.changed || [], "changed"),
      list("Missing", res.missing || [], "missing")),
    problemList("Errors", problems(res.errors), "result-errors", "alert"),
    problemList("Skipped files", problems(res.skipped), "result-skipped"));
}

function renderFolders(status) {
  const dirs = status.dirs || [];
  const every = status.rescan_seconds ? `rescanned every ${fmt.seconds(status.rescan_seconds)}` : "rescanned on request only";
  replaceChildren($("discovery-intro"), `Folders: `, dirs.length ? dirs.map((d, i) => [i ? ", " : "", h("code", { text: d })]) : "none", ` · ${every}.`);
}

export const discoveryPanel = {
  async show() {
    let status;
    try {
      status = await getJSON("/api/v1/discovery");
    } catch {
      return; // an older or third-party discovery plugin: the rescan button still works
    }
    renderFolders(status);
    if (status.last_scan && !$("discovery-result").childElementCount) {
      const at = status.last_scan.finished_at;
      renderReport(status.last_scan, `Last scan${at ? ` at ${fmt.clock(at)}` : ""}${status.last_scan.duration != null ? ` (${fmt.seconds(status.last_scan.duration)})` : ""}`);
    }
  },
  init() {
    $("rescan").addEventListener("click", async () => {
      const button = $("rescan");
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      button.textContent = "Scanning…";
      try {
        const started = performance.now();
        const res = await postJSON("/api/v1/discovery/rescan");
        const took = res.duration ?? (performance.now() - started) / 1000;
        renderReport(res, `Rescanned at ${fmt.clock(Date.now() / 1000)} in ${fmt.seconds(took)}`);
        refreshModels().catch(() => {});
      } catch (err) {
        const absent = err instanceof HttpError && (err.status === 404 || err.status === 405);
        replaceChildren($("discovery-result"), h("p", { class: "form-error", role: "alert",
          text: absent ? "No discovery plugin is running on this host." : `Rescan failed: ${err.message}` }));
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
        button.textContent = "Rescan model folders";
      }
    });
  },
};
