// Formatting of numbers, sizes, durations and times for people.

const dash = "—";

export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return dash;
  if (n === 0) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function count(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return dash;
  const abs = Math.abs(n);
  for (const [div, suffix] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
    if (abs >= div) {
      const v = n / div;
      return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, "")}${suffix}`;
    }
  }
  return String(Math.round(n));
}

export function integer(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return dash;
  return Math.round(n).toLocaleString("en-US");
}

export function decimal(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(n)) return dash;
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: n !== 0 && Math.abs(n) < 10 ? digits : 0 });
}

export function percent(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return dash;
  return `${n.toFixed(n < 10 ? 1 : 0)} %`;
}

/** Seconds as "850 ms", "4.2 s", "3 min 20 s", "2 h 5 min". */
export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return dash;
  const abs = Math.abs(s);
  if (abs < 1) return `${Math.round(s * 1000)} ms`;
  if (abs < 60) return `${s.toFixed(abs < 10 ? 2 : 1)} s`;
  if (abs < 3600) {
    const m = Math.floor(abs / 60);
    const r = Math.round(abs % 60);
    return r ? `${m} min ${r} s` : `${m} min`;
  }
  const hh = Math.floor(abs / 3600);
  const m = Math.round((abs % 3600) / 60);
  return m ? `${hh} h ${m} min` : `${hh} h`;
}

/** A coarse duration for uptimes: "40 s", "12 min", "3 h 5 min", "2 d 4 h". */
export function uptime(s) {
  if (!Number.isFinite(s)) return dash;
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A countdown: "4:05", "1:02:03". */
export function countdown(s) {
  if (!Number.isFinite(s)) return dash;
  s = Math.max(0, Math.round(s));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", else a date. `ts` in seconds since the epoch. */
export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return "never";
  const d = now - ts;
  if (d < 2) return "just now";
  if (d < 60) return `${Math.floor(d)} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return dateTime(ts);
}

export function clock(ts) {
  if (!ts) return dash;
  return new Date(ts * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

export function dateTime(ts) {
  if (!ts) return dash;
  const d = new Date(ts * 1000);
  return `${d.toLocaleDateString("en-CA")} ${d.toLocaleTimeString("en-GB", { hour12: false })}`;
}
