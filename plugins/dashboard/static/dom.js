// Small DOM helpers: build elements without innerHTML, so that no server text is ever parsed as markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") el.textContent = value;
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export const $ = (id) => document.getElementById(id);

export function replaceChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let toastSeq = 0;

/** A short message in the corner; errors stay until dismissed and are announced assertively. */
export function toast(message, kind = "info") {
  const box = $("toasts");
  const id = `toast-${++toastSeq}`;
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", text: "×" });
  const item = h("div", { class: `toast toast-${kind}`, id, role: kind === "error" ? "alert" : null },
    h("span", { class: "toast-text", text: message }), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 5000);
  while (box.children.length > 4) box.firstElementChild.remove();
}
