// The job page's two drawings, in SVG built node by node: the task stream
// (one row per worker, one bar per attempt from its start to its end, like
// Dask's) and the dependency graph (the jobs it waits for on the left, the job,
// the jobs that wait for it on the right, each a link to its page).

import {clear, durationText, jobPath, shortId, svg, timeText} from "./dom.js";

const ROW_HEIGHT = 22;
const BAR_HEIGHT = 16;
const LABEL_WIDTH = 110;
const AXIS_HEIGHT = 22;
const TICKS = 6;

function barKey(bar) {
  return `${bar.chunk}/${bar.attempt}`;
}

// One row per worker, split into lanes so that attempts that overlap (a
// worker with several slots) do not hide each other: each bar takes the first
// lane of its worker that is free at its start.
function lanes(bars, now) {
  const rows = [];
  const workers = [...new Set(bars.map((bar) => bar.worker || ""))].sort();
  for (const worker of workers) {
    const mine = bars.filter((bar) => (bar.worker || "") === worker).sort((a, b) => a.start - b.start);
    const own = [];
    for (const bar of mine) {
      let lane = own.find((candidate) => candidate.free <= bar.start);
      if (!lane) {
        lane = {worker, first: own.length === 0, bars: [], free: -Infinity};
        own.push(lane);
      }
      lane.bars.push(bar);
      lane.free = bar.end ?? now;
    }
    rows.push(...own);
  }
  return rows;
}

export class TaskStream {
  // holder: the element to draw in; workerName(id) -> a label; onBar(chunk) on a click.
  constructor(holder, workerName, onBar) {
    this.holder = holder;
    this.workerName = workerName;
    this.onBar = onBar;
    this.bars = new Map();
    this.timer = null;
    this.frame = null;
  }

  // Bars only ever end: an ended bar is kept over an open one of the same
  // attempt, whichever came last (a job read earlier, an event later).
  update(bars) {
    for (const bar of bars || []) {
      if (!bar || bar.start === null || bar.start === undefined) continue;
      const known = this.bars.get(barKey(bar));
      const ended = (b) => b.end !== null && b.end !== undefined;
      if (known && ended(known) && !ended(bar)) continue;
      this.bars.set(barKey(bar), bar);
    }
    this.schedule();
  }

  schedule() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  draw() {
    const bars = [...this.bars.values()];
    const drawing = clear(this.holder);
    const running = bars.some((bar) => bar.end === null || bar.end === undefined);
    // Open bars grow with the clock: draw again each second while one is open.
    if (running && this.timer === null) this.timer = setInterval(() => this.schedule(), 1000);
    if (!running && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (!bars.length) {
      drawing.append(svg("text", {x: 8, y: 20, class: "empty-note", text: "no attempt has run yet"}));
      drawing.setAttribute("height", "32");
      return;
    }
    const now = Date.now() / 1000;
    const rows = lanes(bars, now);
    const start = Math.min(...bars.map((bar) => bar.start));
    const end = Math.max(start + 1, ...bars.map((bar) => bar.end ?? now));
    const width = Math.max(400, this.holder.parentElement ? this.holder.parentElement.clientWidth - 4 : 800);
    const plot = width - LABEL_WIDTH - 12;
    const height = rows.length * ROW_HEIGHT + AXIS_HEIGHT;
    const x = (t) => LABEL_WIDTH + ((t - start) / (end - start)) * plot;
    drawing.setAttribute("width", String(width));
    drawing.setAttribute("height", String(height));
    drawing.setAttribute("viewBox", `0 0 ${width} ${height}`);
    let shade = 0;
    rows.forEach((lane, row) => {
      const y = row * ROW_HEIGHT;
      if (lane.first && row > 0) shade += 1;
      drawing.append(svg("rect", {x: 0, y, width, height: ROW_HEIGHT, class: shade % 2 ? "ts-row odd" : "ts-row"}));
      if (lane.first) {
        drawing.append(svg("text", {x: 4, y: y + ROW_HEIGHT - 7, class: "ts-label"},
                           svg("title", {text: lane.worker}), this.workerName(lane.worker)));
      }
      for (const bar of lane.bars) {
        const open = bar.end === null || bar.end === undefined;
        const left = x(bar.start);
        const state = open ? "running" : bar.state;
        drawing.append(svg("rect", {
          x: left.toFixed(1), y: y + (ROW_HEIGHT - BAR_HEIGHT) / 2,
          width: Math.max(2, x(open ? now : bar.end) - left).toFixed(1), height: BAR_HEIGHT, rx: 2,
          class: `ts-bar state-${state}`, dataset: {chunk: String(bar.chunk), state: String(state)},
          on: {click: () => this.onBar(bar.chunk)},
        }, svg("title", {text: `chunk ${bar.chunk}, attempt ${bar.attempt}: ${state}, `
                               + `${durationText((open ? now : bar.end) - bar.start)}`})));
      }
    });
    const axisY = rows.length * ROW_HEIGHT;
    drawing.append(svg("line", {x1: LABEL_WIDTH, x2: LABEL_WIDTH + plot, y1: axisY, y2: axisY, class: "ts-axis"}));
    for (let tick = 0; tick <= TICKS; tick += 1) {
      const t = start + ((end - start) * tick) / TICKS;
      drawing.append(svg("text", {x: x(t).toFixed(1), y: axisY + 15, class: "ts-tick",
                                  "text-anchor": tick === 0 ? "start" : tick === TICKS ? "end" : "middle",
                                  text: tick === 0 ? timeText(t) : `+${durationText(t - start)}`}));
    }
  }

  close() {
    if (this.timer !== null) clearInterval(this.timer);
    if (this.frame !== null) cancelAnimationFrame(this.frame);
  }
}

const NODE_WIDTH = 170;
const NODE_HEIGHT = 40;
const COLUMN_GAP = 90;
const ROW_GAP = 12;
export const GRAPH_SIDE_MAX = 12;

// jobs: {job id: {name, state} or undefined while unknown}.
export function drawDependencies(holder, job, jobs) {
  const drawing = clear(holder);
  const left = (job.after || []).slice(0, GRAPH_SIDE_MAX);
  const right = (job.dependents || []).slice(0, GRAPH_SIDE_MAX);
  const rows = Math.max(1, left.length, right.length);
  const height = rows * (NODE_HEIGHT + ROW_GAP) + ROW_GAP;
  const width = 3 * NODE_WIDTH + 2 * COLUMN_GAP + 20;
  drawing.setAttribute("width", String(width));
  drawing.setAttribute("height", String(height));
  drawing.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const columnX = [10, 10 + NODE_WIDTH + COLUMN_GAP, 10 + 2 * (NODE_WIDTH + COLUMN_GAP)];
  const place = (count, index) => {
    const top = (height - count * (NODE_HEIGHT + ROW_GAP) + ROW_GAP) / 2;
    return top + index * (NODE_HEIGHT + ROW_GAP);
  };
  const centreY = place(1, 0) + NODE_HEIGHT / 2;
  const edges = svg("g", {class: "edges"});
  const nodes = svg("g", {class: "nodes"});
  drawing.append(
    svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
                                   markerHeight: 7, orient: "auto-start-reverse"},
                        svg("path", {d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head"}))),
    edges, nodes);

  function node(id, x, y, known, self) {
    const info = self ? job : known;
    const state = info ? info.state : "unknown";
    const label = info && info.name ? info.name : "";
    const group = svg("a", {href: jobPath(id), "data-route": true, class: `dep-node${self ? " self" : ""}`,
                            dataset: {job: id}},
      svg("title", {text: `${label || "job"} ${id}: ${state}`}),
      svg("rect", {x, y, width: NODE_WIDTH, height: NODE_HEIGHT, rx: 5, class: `dep-box state-${state}`}),
      svg("text", {x: x + 8, y: y + 16, class: "dep-name",
                   text: label.length > 22 ? `${label.slice(0, 21)}…` : (label || "(no name)")}),
      svg("text", {x: x + 8, y: y + 32, class: "dep-id", text: `${shortId(id)} · ${state}`}));
    nodes.append(group);
  }

  node(job.job, columnX[1], place(1, 0), null, true);
  left.forEach((id, index) => {
    const y = place(left.length, index);
    node(id, columnX[0], y, jobs[id], false);
    edges.append(svg("path", {d: curve(columnX[0] + NODE_WIDTH, y + NODE_HEIGHT / 2, columnX[1], centreY),
                              class: "dep-edge", "marker-end": "url(#arrow)"}));
  });
  right.forEach((id, index) => {
    const y = place(right.length, index);
    node(id, columnX[2], y, jobs[id], false);
    edges.append(svg("path", {d: curve(columnX[1] + NODE_WIDTH, centreY, columnX[2], y + NODE_HEIGHT / 2),
                              class: "dep-edge", "marker-end": "url(#arrow)"}));
  });
  const more = (job.after || []).length - left.length + (job.dependents || []).length - right.length;
  if (more > 0) drawing.append(svg("text", {x: 10, y: height - 2, class: "empty-note", text: `and ${more} more`}));
}

function curve(x1, y1, x2, y2) {
  const middle = (x1 + x2) / 2;
  return `M ${x1} ${y1} C ${middle} ${y1}, ${middle} ${y2}, ${x2} ${y2}`;
}
