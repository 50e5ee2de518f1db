// Building elements and formatting figures for the dashboard's pages.
//
// Rules: every value from the server goes into the page through textContent,
// setAttribute of a fixed attribute name, or an element.style property; never
// through innerHTML, outerHTML, insertAdjacentHTML, document.write or an on*
// attribute. The server's Content-Security-Policy allows scripts and styles
// from /static/ only, so no inline script or style attribute is written either.

const SVG_NS = "http://www.w3.org/2000/svg";

// The states of chunks and jobs, each with its colour class (style.css .state-*).
export const CHUNK_STATES = ["waiting", "queued", "dispatched", "running", "succeeded", "failed",
                             "cancelled", "cached"];
export const JOB_STATES = ["held", "waiting", "queued", "running", "succeeded", "failed", "cancelled"];
export const FINAL_JOB_STATES = new Set(["succeeded", "failed", "cancelled"]);

function apply(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.setAttribute("class", value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "on") for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
    else if (key.startsWith("on")) throw new Error(`event handlers go through "on", not ${key}`);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// el("td", {class: "num", text: 3}) or el("tr", {}, el("td", {}, "a"), ...)
export function el(tag, props, ...children) {
  return append(apply(document.createElement(tag), props), children);
}

export function svg(tag, props, ...children) {
  return append(apply(document.createElementNS(SVG_NS, tag), props), children);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// The node's children become these (null, undefined and false left out).
export function replaceChildren(node, ...children) {
  return append(clear(node), children);
}

export function badge(state) {
  const name = state || "unknown";
  return el("span", {class: `badge state-${name}`, text: name});
}

// A same-page link: app.js turns its clicks into history.pushState.
export function link(path, text, props) {
  return el("a", {...props, href: path, "data-route": true, text});
}

export function jobPath(job) {
  return `/jobs/${encodeURIComponent(job)}`;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function bytesText(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(bytes);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[unit]}`;
}

export function numberText(value) {
  return value === null || value === undefined ? "–" : String(value);
}

export function timeText(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const date = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const today = new Date();
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  if (date.toDateString() === today.toDateString()) return clock;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock}`;
}

export function durationText(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes - hours * 60} min`;
}

export class HttpError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return String(body.error);
  } catch (ignored) { /* not JSON: say the status */ }
  return `${response.status} ${response.statusText}`;
}

export async function getJSON(path) {
  const response = await fetch(path, {headers: {Accept: "application/json"}});
  if (!response.ok) throw new HttpError(response.status, await errorText(response));
  return response.json();
}

export async function postJSON(path, headers) {
  const response = await fetch(path, {method: "POST", headers: {Accept: "application/json", ...headers}});
  if (!response.ok) throw new HttpError(response.status, await errorText(response));
  return response.json();
}

export async function getText(path) {
  const response = await fetch(path);
  if (!response.ok) throw new HttpError(response.status, await errorText(response));
  return {text: await response.text(), truncated: response.headers.get("X-UDS-Truncated") === "1"};
}

// A table with a header row; rows are added to its tbody.
export function table(id, headings) {
  return el("table", {id, class: "data"},
            el("thead", {}, el("tr", {}, headings.map((h) => el("th", {text: h})))),
            el("tbody"));
}

export function row(cells, props) {
  return el("tr", props, cells.map((cell) => (cell instanceof Node && cell.tagName === "TD") ? cell
    : el("td", {}, cell)));
}

export function numCell(value) {
  return el("td", {class: "num", text: typeof value === "string" ? value : numberText(value)});
}

// Calls fn at most once per `interval_ms`, the last call winning.
export function throttle(fn, interval_ms) {
  let timer = null;
  let last = 0;
  return function throttled() {
    const wait = last + interval_ms - Date.now();
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, Math.max(0, wait));
  };
}
