// A job's page: its header, args and inputs, the chunk grid coloured by state,
// the task stream, the dependency graph, the chunk panel and log viewer, and
// the cancel and release actions. Live from /api/stream?job=ID: `job` events
// update the header, `chunks` events the grid, `stream` events the task stream.

import {FINAL_JOB_STATES, HttpError, badge, bytesText, clear, durationText, el, getJSON, postJSON,
        replaceChildren, shortId, svg, throttle, timeText} from "./dom.js";
import {progressBar, jobDuration} from "./jobs.js";
import {GRAPH_SIDE_MAX, TaskStream, drawDependencies} from "./charts.js";
import {ChunkPanel} from "./chunk_panel.js";
import {EVENT_ROWS_MAX, eventRow} from "./cluster.js";

// Up to this many chunks the grid is one element per chunk; beyond, a canvas.
const GRID_ELEMENTS_MAX = 5000;
const CANVAS_CELL_PX = 6;
const CANVAS_GAP_PX = 1;
const PANEL_REFRESH_MS = 500;
const TOKEN_KEY = "uds-admin-token";
// Canvas colours, the same as style.css's .state-* backgrounds.
const STATE_COLOURS = {waiting: "#e3e6ea", queued: "#b5bcc5", dispatched: "#a9d2f5", running: "#2f6fd6",
                       succeeded: "#2e9e4f", failed: "#d23c3c", cancelled: "#5b6068", cached: "#1a9c9c"};

function chunkTitle(chunk) {
  const parts = [`chunk ${chunk.index}: ${chunk.state}`];
  if (chunk.attempt) parts.push(`attempt ${chunk.attempt}`);
  if (chunk.worker) parts.push(`worker ${shortId(chunk.worker)}`);
  return parts.join(", ");
}

class ChunkGrid {
  constructor(holder, onChunk) {
    this.holder = holder;
    this.onChunk = onChunk;
    this.chunks = [];
    this.cells = null;        // the .chunk elements, or null when drawn on a canvas
    this.canvas = null;
    holder.addEventListener("click", (event) => {
      const cell = event.target.closest ? event.target.closest(".chunk") : null;
      if (cell) this.onChunk(Number(cell.dataset.index));
    });
  }

  set(chunks, count) {
    this.chunks = [];
    for (let index = 0; index < count; index += 1) this.chunks.push({index, state: "waiting"});
    for (const chunk of chunks || []) if (chunk.index < count) this.chunks[chunk.index] = {...chunk};
    clear(this.holder);
    this.holder.dataset.count = String(count);
    if (count <= GRID_ELEMENTS_MAX) {
      this.canvas = null;
      this.cells = this.chunks.map((chunk) => el("div", {class: `chunk state-${chunk.state}`, title: chunkTitle(chunk),
                                                        dataset: {index: String(chunk.index), state: chunk.state}}));
      this.holder.append(...this.cells);
    } else {
      this.cells = null;
      this.canvas = el("canvas", {class: "chunk-canvas"});
      this.canvas.addEventListener("click", (event) => {
        const index = this.canvasIndex(event);
        if (index !== null) this.onChunk(index);
      });
      this.canvas.addEventListener("mousemove", (event) => {
        const index = this.canvasIndex(event);
        this.canvas.title = index === null ? "" : chunkTitle(this.chunks[index]);
      });
      this.holder.append(this.canvas);
      this.drawCanvas();
    }
  }

  update(changes) {
    for (const change of changes || []) {
      const chunk = this.chunks[change.index];
      if (!chunk) continue;
      Object.assign(chunk, change);
      if (this.cells) {
        const cell = this.cells[change.index];
        cell.className = `chunk state-${chunk.state}`;
        cell.dataset.state = chunk.state;
        cell.title = chunkTitle(chunk);
      }
    }
    if (this.canvas) this.drawCanvas();
  }

  columns() {
    return Math.max(10, Math.floor((this.holder.clientWidth || 800) / (CANVAS_CELL_PX + CANVAS_GAP_PX)));
  }

  drawCanvas() {
    const step = CANVAS_CELL_PX + CANVAS_GAP_PX;
    const columns = this.columns();
    this.canvas.width = columns * step;
    this.canvas.height = Math.ceil(this.chunks.length / columns) * step;
    const context = this.canvas.getContext("2d");
    for (const chunk of this.chunks) {
      context.fillStyle = STATE_COLOURS[chunk.state] || "#999";
      context.fillRect((chunk.index % columns) * step, Math.floor(chunk.index / columns) * step,
                       CANVAS_CELL_PX, CANVAS_CELL_PX);
    }
  }

  canvasIndex(event) {
    const step = CANVAS_CELL_PX + CANVAS_GAP_PX;
    const box = this.canvas.getBoundingClientRect();
    const index = Math.floor((event.clientY - box.top) / step) * this.columns()
      + Math.floor((event.clientX - box.left) / step);
    return index >= 0 && index < this.chunks.length ? index : null;
  }

  counts() {
    const counts = {};
    for (const chunk of this.chunks) counts[chunk.state] = (counts[chunk.state] || 0) + 1;
    return counts;
  }
}

const STATE_RANK = {waiting: 0, queued: 1, dispatched: 2, running: 3};

// Whether a change that arrived while the job was read is newer than what
// the read gave: a later attempt, or the same attempt further on.
function isNewer(change, chunk) {
  if (!chunk) return false;
  const attempt = change.attempt || 0;
  const known = chunk.attempt || 0;
  if (attempt !== known) return attempt > known;
  return (STATE_RANK[change.state] ?? 4) > (STATE_RANK[chunk.state] ?? 4);
}

function fact(name, value) {
  return el("div", {class: "fact"}, el("span", {class: "fact-name", text: name}),
            value instanceof Node ? value : el("span", {class: "fact-value", text: value}));
}

function fillHeader(header, job) {
  const now = Date.now() / 1000;
  replaceChildren(header,
    el("div", {class: "job-title"}, el("h1", {text: job.name || "(no name)"}), badge(job.state),
       el("span", {class: "mono muted", text: job.job})),
    progressBar(job),
    el("div", {class: "facts"},
       fact("chunks", String(job.chunk_count)), fact("succeeded", String(job.succeeded ?? 0)),
       fact("cached", String(job.cached ?? 0)), fact("failed", String(job.failed ?? 0)),
       fact("cancelled", String(job.cancelled ?? 0)), fact("submitted", timeText(job.submitted_at)),
       fact("started", timeText(job.started_at)), fact("finished", timeText(job.finished_at)),
       fact("duration", durationText(jobDuration(job, now))),
       job.program ? fact("program", `${shortId(job.program.id)} (${bytesText(job.program.size)})`) : null),
    job.waiting ? el("p", {class: "waiting", text: `waiting: ${job.waiting}`}) : null,
    job.past_retention ? el("p", {class: "muted", text: "past retention: only its history line is kept"}) : null,
    job.error ? el("pre", {class: "error-text", text: job.error}) : null);
  header.dataset.state = job.state;
}

function fillArgs(list, args) {
  clear(list);
  if (!args || !args.length) list.append(el("li", {class: "muted none", text: "(none)"}));
  for (const arg of args || []) list.append(el("li", {}, el("code", {text: arg})));
}

function fillInputs(body, inputs) {
  clear(body);
  if (!inputs || !inputs.length) body.append(el("tr", {}, el("td", {colspan: 3, class: "muted", text: "(none)"})));
  for (const input of inputs || []) {
    body.append(el("tr", {}, el("td", {}, el("code", {text: input.name})),
                   el("td", {class: "mono", title: input.id, text: shortId(input.id)}),
                   el("td", {class: "num", text: bytesText(input.size)})));
  }
}

function section(title, ...children) {
  return el("section", {class: "panel"}, el("h2", {text: title}), ...children);
}

export function renderJob(root, [jobId], {openStream, session}) {
  const header = el("div", {id: "job-header", class: "panel job-header"}, el("p", {class: "muted", text: "loading…"}));
  const cancel = el("button", {type: "button", id: "cancel-job", class: "danger", text: "Cancel job"});
  const release = el("button", {type: "button", id: "release-job", text: "Release job"});
  const actionMessage = el("span", {id: "action-message", class: "error-text"});
  const args = el("ol", {id: "job-args", class: "args"});
  const inputs = el("table", {id: "job-inputs", class: "data"},
                    el("thead", {}, el("tr", {}, ["name", "file", "size"].map((h) => el("th", {text: h})))),
                    el("tbody"));
  const gridHolder = el("div", {id: "chunk-grid", class: "chunk-grid"});
  const legend = el("div", {class: "legend"});
  const streamHolder = svg("svg", {id: "task-stream", class: "drawing"});
  const graphHolder = svg("svg", {id: "dep-graph", class: "drawing"});
  const events = el("ul", {id: "job-events", class: "event-stream"});
  const panel = el("section", {id: "chunk-panel", class: "panel chunk-panel", hidden: true});
  const logTitle = el("h2", {class: "log-title", text: "Logs"});
  const logView = el("pre", {id: "log-view", class: "log-view empty",
                             text: "Click a chunk, then its stdout or stderr."});
  if (!session.admin) {
    for (const button of [cancel, release]) {
      button.disabled = true;
      button.title = "the dashboard has no admin token configured";
    }
  }
  root.append(
    header,
    el("div", {class: "actions"}, cancel, release, actionMessage),
    section("Chunks", legend, gridHolder),
    el("div", {class: "grid-2 wide-left"}, panel, el("section", {class: "panel log-panel"}, logTitle, logView)),
    section("Task stream", el("div", {class: "svg-holder"}, streamHolder)),
    el("div", {class: "grid-2"}, section("Args", args), section("Inputs", inputs)),
    section("Dependencies", el("div", {class: "svg-holder"}, graphHolder)),
    section("Recent events", events));

  let job = null;
  let closed = false;
  const workerNames = {};
  const chunkPanel = new ChunkPanel(panel, logView, logTitle, jobId);
  const grid = new ChunkGrid(gridHolder, (index) => chunkPanel.open(index));
  const stream = new TaskStream(streamHolder, (id) => workerNames[id] || shortId(id) || "?",
                                (index) => chunkPanel.open(index));
  const dirtyChunks = new Set();
  const during = [];       // chunk changes that came while the job was being read
  let reading = 0;         // reads of the job under way
  let loads = 0;           // reads of the job begun
  const refreshPanel = throttle(() => {
    if (chunkPanel.chunk !== null && dirtyChunks.has(chunkPanel.chunk)) chunkPanel.refresh(chunkPanel.chunk);
    dirtyChunks.clear();
  }, PANEL_REFRESH_MS);

  function fillLegend() {
    const counts = grid.counts();
    clear(legend).append(...Object.keys(counts).sort().map((state) =>
      el("span", {class: "legend-item"}, el("span", {class: `swatch state-${state}`}), `${state} ${counts[state]}`)));
  }

  function fillActions() {
    const final = FINAL_JOB_STATES.has(job.state);
    if (session.admin) {
      cancel.disabled = final;
      release.disabled = final;
    }
  }

  async function load() {
    const mine = ++loads;
    reading += 1;
    let answer;
    try {
      answer = await getJSON(`/api/jobs/${encodeURIComponent(jobId)}`);
    } catch (fault) {
      if (mine === loads && !closed) {
        replaceChildren(header, el("h1", {text: `Job ${jobId}`}), el("p", {class: "error-text", text: fault.message}));
      }
      return;
    } finally {
      reading -= 1;
    }
    if (closed || mine !== loads) return;      // a later read is on its way
    job = answer;
    fillHeader(header, job);
    fillArgs(args, job.args);
    fillInputs(inputs.tBodies[0], job.inputs);
    if (job.past_retention && !(job.chunks || []).length) {
      grid.set([], 0);
      gridHolder.append(el("p", {class: "muted", text: "past retention: its chunks are no longer kept"}));
    } else {
      grid.set(job.chunks, job.chunk_count);
    }
    // Changes that came while the job was read may be newer than what it gave.
    grid.update(during.splice(0).filter((change) => isNewer(change, grid.chunks[change.index])));
    fillLegend();
    fillActions();
    stream.update(job.stream);
    drawDependencies(graphHolder, job, {});
    loadRelated(job);
  }

  async function loadRelated(shown) {
    const ids = [...(shown.after || []).slice(0, GRAPH_SIDE_MAX), ...(shown.dependents || []).slice(0, GRAPH_SIDE_MAX)];
    if (!ids.length) return;
    const known = {};
    await Promise.all(ids.map((id) => getJSON(`/api/jobs/${encodeURIComponent(id)}`)
      .then((other) => { known[id] = other; }).catch(() => {})));
    if (!closed && job && job.job === shown.job) drawDependencies(graphHolder, job, known);
  }

  async function act(verb) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      token = window.prompt(`The cluster's admin token, to ${verb} this job:`);
      if (!token) return;
    }
    actionMessage.textContent = `${verb}…`;
    try {
      const answer = await postJSON(`/api/jobs/${encodeURIComponent(jobId)}/${verb}`, {"X-UDS-Admin-Token": token});
      sessionStorage.setItem(TOKEN_KEY, token);
      actionMessage.textContent = "";
      if (answer && answer.job) {
        job = {...job, ...answer};
        fillHeader(header, job);
        fillActions();
      }
    } catch (fault) {
      if (fault instanceof HttpError && (fault.status === 401 || fault.status === 403)) {
        sessionStorage.removeItem(TOKEN_KEY);
      }
      actionMessage.textContent = `${verb} refused: ${fault.message}`;
    }
  }

  cancel.addEventListener("click", () => act("cancel"));
  release.addEventListener("click", () => act("release"));
  workersFromCluster(workerNames).then(() => stream.schedule());
  load();
  const source = openStream(`?job=${encodeURIComponent(jobId)}`, {
    job: (data) => {
      if (!job || data.job !== job.job) return;
      const stateChanged = data.state !== job.state;
      job = {...job, ...data};
      fillHeader(header, job);
      fillActions();
      // A new state brings times, a reason to wait or an error that `job`
      // events do not carry: read the job again (a few times in its life).
      if (stateChanged) load();
    },
    chunks: (data) => {
      const changes = Array.isArray(data) ? data : data.chunks;
      if (reading) during.push(...(changes || []));
      if (!job) return;
      grid.update(changes);
      fillLegend();
      for (const change of changes || []) dirtyChunks.add(change.index);
      refreshPanel();
    },
    log: (data) => {
      if (data.job !== jobId.toLowerCase()) return;
      events.prepend(eventRow(data));
      while (events.childElementCount > EVENT_ROWS_MAX) events.lastElementChild.remove();
    },
    stream: (data) => stream.update(Array.isArray(data) ? data : (data.stream || data.bars || [data])),
  });
  return {
    close() {
      closed = true;
      source.close();
      stream.close();
    },
  };
}

async function workersFromCluster(names) {
  try {
    const cluster = await getJSON("/api/cluster");
    // Workers of one host share its name: the node id tells them apart.
    for (const worker of cluster.workers || []) {
      if (worker.node) names[worker.node] = `${worker.name ? worker.name + " " : ""}${shortId(worker.node)}`;
    }
  } catch (ignored) { /* the labels stay short ids */ }
}
