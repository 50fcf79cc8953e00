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
    $("config-summary").textContent = `llama-host ${status.version || ""} · up ${fmt.seconds(status.uptime)} · ${running} of ${plugins.length} plugins running`;
  },
};

// --- discovery ----------------------------------------------------------------------------------------------------

function itemName(item) {
  if (typeof item === "string") return item;
  return item?.name || item?.model || item?.path || JSON.stringify(item);
}

function list(title, items, kind) {
  return h("section", { class: `card result-list result-${kind}`, "aria-label": title },
    h("h2", {}, title, " ", h("span", { class: "count", text: String(items.length) })),
    items.length ? h("ul", {}, items.map((i) => h("li", { class: "mono", text: itemName(i) }))) : h("p", { class: "muted", text: "none" }));
}

function errorsOf(errors) {
  if (!errors) return [];
  if (Array.isArray(errors)) return errors.map((e) => (typeof e === "string" ? e : e.message ? `${e.path || ""} ${e.message}`.trim() : JSON.stringify(e)));
  return Object.entries(errors).map(([k, v]) => `${k}: ${v}`);
}

export const discoveryPanel = {
  init() {
    $("rescan").addEventListener("click", async () => {
      const button = $("rescan");
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      button.textContent = "Scanning…";
      try {
        const started = performance.now();
        const res = await postJSON("/api/v1/discovery/rescan");
        const took = (performance.now() - started) / 1000;
        const errors = errorsOf(res.errors);
        replaceChildren($("discovery-result"),
          h("p", { class: "summary", text: `Rescanned at ${fmt.clock(Date.now() / 1000)} in ${fmt.seconds(took)}: `
            + `${res.added?.length || 0} added, ${res.changed?.length || 0} changed, ${res.missing?.length || 0} missing.` }),
          h("div", { class: "result-grid" },
            list("Added", res.added || [], "added"),
            list("Changed", res.changed || [], "changed"),
            list("Missing", res.missing || [], "missing")),
          errors.length ? h("section", { class: "card result-errors", role: "alert" }, h("h2", { text: "Errors" }),
            h("ul", {}, errors.map((e) => h("li", { class: "mono", text: e })))) : null);
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
