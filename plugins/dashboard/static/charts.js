// Time-series line charts drawn as SVG: no library, sized to their container, with a hover read-out.
import { h, svg } from "./dom.js";
import { clock } from "./format.js";

const HEIGHT = 170;
const MARGIN = { top: 12, right: 14, bottom: 24, left: 52 };
export const SERIES_CLASSES = 8;

/** A round tick step (1, 2 or 5 times a power of ten, in `unit`s) giving at most `ticks` steps up to `top`. */
function niceStep(top, ticks, unit = 1) {
  const raw = top / unit / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag * unit;
}

/** For byte axes: the power of 1024 the values are best read in, so that steps fall on whole MiB or GiB. */
function byteUnit(top) {
  let unit = 1;
  while (top / unit >= 1024) unit *= 1024;
  return unit;
}

const TIME_STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600];

export class LineChart {
  /**
   * @param {HTMLElement} host element the chart fills
   * @param {{title: string, format: (v:number)=>string, window?: number, min?: number, max?: number,
   *   bytes?: boolean, adaptive?: boolean}} options
   *   `min`: the smallest top of the y axis (so that a flat zero line does not fill the chart), `max`: a fixed top;
   *   `bytes`: ticks on whole KiB/MiB/GiB; `adaptive`: the time axis shrinks to the data it has (at least 2 min).
   */
  constructor(host, { title, format, window = 900, min = 1, max = null, bytes = false, adaptive = false }) {
    this.title = title;
    this.format = format;
    this.maxWindow = window;
    this.window = window;
    this.min = min;
    this.max = max;
    this.bytes = bytes;
    this.adaptive = adaptive;
    this.series = [];
    this.figure = h("figure", { class: "chart" });
    this.heading = h("figcaption", { class: "chart-title" }, h("span", { text: title }), h("span", { class: "chart-latest" }));
    this.plot = h("div", { class: "chart-plot" });
    this.tooltip = h("div", { class: "chart-tooltip", hidden: true, "aria-hidden": "true" });
    this.legend = h("ul", { class: "chart-legend" });
    this.plot.append(this.tooltip);
    this.figure.append(this.heading, this.plot, this.legend);
    host.append(this.figure);
    this.width = 0;
    new ResizeObserver(() => {
      const w = this.plot.clientWidth;
      if (w && w !== this.width) { this.width = w; this.render(); }
    }).observe(this.plot);
  }

  /** series: [{name, points: [[t (s), value], ...]}], drawn in order with the palette classes s0, s1, ... */
  update(series) {
    this.series = series;
    this.render();
  }

  render() {
    const width = this.width || this.plot.clientWidth || 480;
    const now = Date.now() / 1000;
    if (this.adaptive) {
      const first = Math.min(...this.series.map((s) => s.points[0]?.[0] ?? now));
      this.window = Math.min(this.maxWindow, Math.max(120, Math.ceil((now - first + 15) / 60) * 60));
    }
    const t0 = now - this.window;
    const innerW = width - MARGIN.left - MARGIN.right;
    const innerH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const visible = this.series.map((s) => ({ ...s, points: s.points.filter(([t, v]) => t >= t0 - 60 && Number.isFinite(v)) }));
    let top = this.max ?? Math.max(this.min, ...visible.flatMap((s) => s.points.map(([, v]) => v)));
    const step = niceStep(top, 4, this.bytes ? byteUnit(top) : 1);
    top = this.max ?? Math.ceil(top / step) * step;
    const x = (t) => MARGIN.left + ((t - t0) / this.window) * innerW;
    const y = (v) => MARGIN.top + innerH - (Math.min(v, top) / top) * innerH;

    const chart = svg("svg", {
      class: "chart-svg", width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img",
      "aria-label": this.describe(visible),
    });
    const defs = svg("defs");
    const clipId = `clip-${Math.random().toString(36).slice(2)}`;
    defs.append(svg("clipPath", { id: clipId }, svg("rect", { x: MARGIN.left, y: 0, width: innerW, height: HEIGHT })));
    chart.append(defs);

    for (let v = 0; v <= top + step / 2; v += step) {
      chart.append(svg("line", { class: "grid", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }));
      chart.append(svg("text", { class: "axis", x: MARGIN.left - 6, y: y(v) + 4, "text-anchor": "end", text: this.format(v) }));
    }
    const tStep = TIME_STEPS.find((s) => this.window / s <= Math.max(2, Math.floor(innerW / 90))) || 21600;
    for (let t = Math.ceil(t0 / tStep) * tStep; t <= now; t += tStep) {
      chart.append(svg("line", { class: "grid grid-x", x1: x(t), x2: x(t), y1: MARGIN.top, y2: MARGIN.top + innerH }));
      chart.append(svg("text", { class: "axis", x: x(t), y: HEIGHT - 6, "text-anchor": "middle", text: clock(t).slice(0, tStep < 60 ? 8 : 5) }));
    }

    const lines = svg("g", { "clip-path": `url(#${clipId})` });
    visible.forEach((s, i) => {
      if (!s.points.length) return;
      const cls = `s${i % SERIES_CLASSES}`;
      const d = s.points.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
      if (i === 0 && s.points.length > 1) {
        const [first] = s.points[0];
        const [last] = s.points[s.points.length - 1];
        lines.append(svg("path", { class: `area ${cls}`, d: `${d}L${x(last).toFixed(1)},${y(0)}L${x(first).toFixed(1)},${y(0)}Z` }));
      }
      lines.append(svg("path", { class: `line ${cls}`, d }));
      if (s.points.length === 1) {
        const [[t, v]] = s.points;
        lines.append(svg("circle", { class: `dot ${cls}`, cx: x(t), cy: y(v), r: 3 }));
      }
    });
    chart.append(lines);
    this.cursor = svg("line", { class: "cursor", x1: 0, x2: 0, y1: MARGIN.top, y2: MARGIN.top + innerH, visibility: "hidden" });
    chart.append(this.cursor);

    chart.addEventListener("mousemove", (ev) => this.hover(ev, visible, x, t0, innerW));
    chart.addEventListener("mouseleave", () => { this.tooltip.hidden = true; this.cursor.setAttribute("visibility", "hidden"); });
    this.plot.querySelector("svg")?.remove();
    this.plot.prepend(chart);

    const latest = visible.map((s) => s.points.at(-1)?.[1]);
    this.heading.lastChild.textContent = visible.length === 1 && latest[0] !== undefined ? this.format(latest[0]) : "";
    this.legend.replaceChildren(...(visible.length > 1 ? visible.map((s, i) => h("li", {},
      h("span", { class: `swatch s${i % SERIES_CLASSES}`, "aria-hidden": "true" }),
      h("span", { class: "legend-name", text: s.name }),
      h("span", { class: "legend-value", text: latest[i] === undefined ? "—" : this.format(latest[i]) }))) : []));
  }

  describe(visible) {
    const parts = visible.map((s) => {
      const last = s.points.at(-1);
      return `${s.name}: ${last ? this.format(last[1]) : "no data"}`;
    });
    return `${this.title}, last ${Math.round(this.window / 60)} minutes. Latest ${parts.join("; ") || "no data"}.`;
  }

  hover(ev, visible, x, t0, innerW) {
    const rect = ev.currentTarget.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    if (px < MARGIN.left || px > MARGIN.left + innerW) return;
    const t = t0 + ((px - MARGIN.left) / innerW) * this.window;
    const rows = [];
    let at = null;
    visible.forEach((s, i) => {
      let best = null;
      for (const p of s.points) if (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      if (best && Math.abs(best[0] - t) < this.window / 20) {
        at ??= best[0];
        rows.push(h("div", {}, h("span", { class: `swatch s${i % SERIES_CLASSES}` }), `${s.name}: ${this.format(best[1])}`));
      }
    });
    if (!rows.length) { this.tooltip.hidden = true; this.cursor.setAttribute("visibility", "hidden"); return; }
    this.cursor.setAttribute("x1", x(at));
    this.cursor.setAttribute("x2", x(at));
    this.cursor.setAttribute("visibility", "visible");
    this.tooltip.replaceChildren(h("div", { class: "tooltip-time", text: clock(at) }), ...rows);
    this.tooltip.hidden = false;
    const left = Math.min(px + 12, rect.width - this.tooltip.offsetWidth - 4);
    this.tooltip.style.left = `${Math.max(0, left)}px`;
  }
}
