// The dashboard's one page: routes on location.pathname, moves between pages
// with history.pushState, and gives each page one EventSource on /api/stream
// that it closes when the page is left. Nothing reloads the document.

import {clear, el, getJSON} from "./dom.js";
import {renderCluster} from "./cluster.js";
import {renderJobs} from "./jobs.js";
import {renderJob} from "./job.js";

const ROUTES = [
  {pattern: /^\/$/, nav: "nav-cluster", title: "Cluster", render: renderCluster},
  {pattern: /^\/jobs\/?$/, nav: "nav-jobs", title: "Jobs", render: renderJobs},
  {pattern: /^\/jobs\/([0-9A-Za-z]+)\/?$/, nav: "nav-jobs", title: "Job", render: renderJob},
];

let current = null;            // {close()} of the page shown
let session = {admin: false};

function setConnection(state) {
  const badge = document.getElementById("connection");
  if (!badge) return;
  badge.textContent = state;
  badge.dataset.state = state;
}

// One live stream per page; `handlers` maps an event name to fn(data), and
// "open" to fn() called at each (re)connection, when the page may have missed
// events.
function openStream(query, {open, ...handlers}) {
  const source = new EventSource(`/api/stream${query || ""}`);
  source.addEventListener("open", () => {
    setConnection("live");
    if (open) open();
  });
  source.addEventListener("error", () => setConnection(source.readyState === EventSource.CLOSED ? "closed"
    : "reconnecting"));
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (fault) {
        console.warn(`uds: a ${name} event that is not JSON`, fault);
        return;
      }
      handler(data);
    });
  }
  return source;
}

function route(path) {
  for (const candidate of ROUTES) {
    const match = candidate.pattern.exec(path);
    if (match) return {...candidate, params: match.slice(1).map(decodeURIComponent)};
  }
  return null;
}

function show() {
  if (current) {
    current.close();
    current = null;
  }
  const root = clear(document.getElementById("page"));
  const found = route(location.pathname);
  for (const id of ["nav-cluster", "nav-jobs"]) {
    document.getElementById(id).classList.toggle("active", Boolean(found) && found.nav === id);
  }
  if (!found) {
    document.title = "uds: not found";
    root.append(el("h1", {text: "Not found"}), el("p", {text: `No page at ${location.pathname}.`}));
    return;
  }
  document.title = `uds: ${found.title}`;
  current = found.render(root, found.params, {session, openStream, navigate});
}

export function navigate(path) {
  if (path === location.pathname + location.search) return;
  history.pushState({}, "", path);
  show();
  window.scrollTo(0, 0);
}

// Same-page links (a[data-route]) move by pushState; a click with a modifier
// key, or another button, is left to the browser (a new tab, say).
document.addEventListener("click", (event) => {
  const anchor = event.target.closest ? event.target.closest("a[data-route]") : null;
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(anchor.getAttribute("href"), location.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", show);

getJSON("/api/session").then((answer) => {
  session = answer;
  document.body.dataset.admin = answer.admin ? "yes" : "no";
}).catch((fault) => console.warn("uds: /api/session", fault)).finally(show);
