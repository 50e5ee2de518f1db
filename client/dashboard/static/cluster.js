// The cluster page: masters, the balancer pair, storage nodes and workers
// (from /api/cluster, then each `cluster` event), a chart of chunks per second
// over the last five minutes (`rate` events) and the masters' event log as it
// commits (`log` events), newest on top.

import {badge, bytesText, clear, el, jobPath, link, numCell, numberText, row, shortId, table,
        timeText, getJSON} from "./dom.js";

const RATE_WINDOW_S = 300;
export const EVENT_ROWS_MAX = 200;

function nodeCell(node) {
  return el("td", {class: "mono", title: node || "", text: node ? shortId(node) : "–"});
}

function usageBar(used, free) {
  if (used === null || used === undefined || free === null || free === undefined || used + free <= 0) {
    return el("td", {text: "–"});
  }
  const share = used / (used + free);
  const bar = el("div", {class: "usage-bar" + (share > 0.9 ? " full" : "")});
  bar.style.width = `${(share * 100).toFixed(1)}%`;
  return el("td", {}, el("div", {class: "usage", title: `${(share * 100).toFixed(1)}% used`}, bar));
}

function repairText(repair) {
  if (!repair) return "–";
  const pending = repair.pending === null || repair.pending === undefined ? "?" : repair.pending;
  const repaired = repair.repaired === null || repair.repaired === undefined ? "?" : repair.repaired;
  return `${repaired} repaired, ${pending} pending`;
}

function fillMasters(tbody, cluster) {
  clear(tbody);
  for (const master of cluster.masters || []) {
    const leader = master.role === "leader";
    tbody.append(row([
      el("td", {class: "mono", text: master.address}),
      el("td", {}, badge(master.role), leader ? el("span", {class: "leader-mark", title: "the leader", text: "★"}) : null),
      numCell(master.term), numCell(master.commit_index), numCell(master.lag),
    ], {class: leader ? "leader" : null}));
  }
}

function fillBalancers(tbody, cluster) {
  clear(tbody);
  for (const balancer of cluster.balancers || []) {
    tbody.append(row([
      nodeCell(balancer.node), el("td", {text: balancer.host || "–"}),
      el("td", {class: "mono", text: balancer.address || "–"}), el("td", {}, badge(balancer.state)),
      el("td", {}, balancer.active ? el("span", {class: "badge state-running", text: "active"})
        : el("span", {class: "muted", text: "standby"})),
      numCell(balancer.epoch),
    ], {class: balancer.active ? "active" : null}));
  }
}

function fillStorage(tbody, cluster) {
  clear(tbody);
  for (const node of cluster.storage || []) {
    tbody.append(row([
      nodeCell(node.node), el("td", {text: node.host || "–"}), el("td", {class: "mono", text: node.address || "–"}),
      el("td", {}, badge(node.state)), numCell(bytesText(node.used_bytes)), numCell(bytesText(node.free_bytes)),
      usageBar(node.used_bytes, node.free_bytes), numCell(node.blobs), el("td", {text: repairText(node.repair)}),
    ]));
  }
}

function fillWorkers(tbody, cluster) {
  clear(tbody);
  for (const worker of cluster.workers || []) {
    const used = worker.slots === null || worker.free_slots === null ? null : worker.slots - worker.free_slots;
    tbody.append(row([
      el("td", {text: worker.name || "–"}), nodeCell(worker.node), el("td", {class: "mono", text: worker.address || "–"}),
      el("td", {}, badge(worker.state)), numCell(`${numberText(used)} / ${numberText(worker.slots)}`),
      numCell(worker.running), numCell(worker.cpus), numCell(bytesText(worker.memory_bytes)),
      numCell(bytesText(worker.cached_bytes)),
    ]));
  }
}

function fillCounters(tbody, cluster) {
  clear(tbody);
  const counters = cluster.counters || {};
  for (const name of Object.keys(counters).sort()) tbody.append(row([el("td", {class: "mono", text: name}),
                                                                    numCell(counters[name])]));
}

function section(title, ...children) {
  return el("section", {class: "panel"}, el("h2", {text: title}), ...children);
}

// The chunks-per-second chart: uPlot when it loaded, else a line of text.
class RateChart {
  constructor(holder) {
    this.holder = holder;
    this.times = [];
    this.rates = [];
    this.plot = null;
    this.resize = () => this.plot && this.plot.setSize(this.size());
    window.addEventListener("resize", this.resize);
  }

  size() {
    return {width: Math.max(300, this.holder.clientWidth - 8), height: 180};
  }

  add(at, rate) {
    this.times.push(at);
    this.rates.push(rate);
    while (this.times.length && this.times[0] < at - RATE_WINDOW_S) {
      this.times.shift();
      this.rates.shift();
    }
    this.holder.dataset.points = String(this.times.length);
    this.holder.dataset.last = String(rate);
    if (!window.uPlot) {
      this.holder.textContent = `${rate.toFixed(1)} chunks/s`;
      return;
    }
    if (!this.plot) {
      this.plot = new window.uPlot({
        ...this.size(),
        legend: {show: false},
        cursor: {drag: {x: false, y: false}},
        // The last five minutes, whatever the points cover; chunks/s from 0.
        scales: {x: {time: true, range: (u, min, max) => [max - RATE_WINDOW_S, max]},
                 y: {range: (u, min, max) => [0, Math.max(1, max * 1.15)]}},
        axes: [{}, {label: "chunks/s", size: 50}],
        series: [{}, {label: "chunks/s", stroke: "#2f6fd6", width: 2, fill: "rgba(47,111,214,0.12)"}],
      }, [this.times, this.rates], this.holder);
      return;
    }
    this.plot.setData([this.times, this.rates]);
  }

  close() {
    window.removeEventListener("resize", this.resize);
    if (this.plot) this.plot.destroy();
  }
}

export function eventRow(event) {
  const item = el("li", {class: `event kind-${String(event.kind || "").replace(/[^a-z_]/g, "")}`,
                         dataset: {seq: String(event.seq ?? ""), kind: String(event.kind ?? "")}},
    el("span", {class: "when", text: timeText(event.at)}),
    el("span", {class: "kind", text: event.kind || ""}));
  if (event.job) {
    const chunk = event.chunk === null || event.chunk === undefined ? "" : ` #${event.chunk}`;
    item.append(link(jobPath(event.job), `${shortId(event.job)}${chunk}`, {class: "job-link mono"}));
  }
  item.append(el("span", {class: "text", text: event.text || ""}));
  return item;
}

export function renderCluster(root, params, {openStream}) {
  const masters = table("masters", ["address", "role", "term", "commit index", "lag"]);
  const balancers = table("balancers", ["node", "host", "address", "state", "active", "epoch"]);
  const storage = table("storage", ["node", "host", "address", "state", "used", "free", "usage", "blobs",
                                    "repair"]);
  const workers = table("workers", ["name", "node", "address", "state", "slots used", "running", "cpus",
                                    "memory", "cached"]);
  const counters = table("counters", ["counter", "value"]);
  const chartHolder = el("div", {id: "rate-chart", class: "chart"});
  const events = el("ul", {id: "event-stream", class: "event-stream"});
  const updated = el("span", {class: "muted updated"});
  const leader = el("span", {class: "leader-summary"});
  root.append(
    el("div", {class: "page-title"}, el("h1", {text: "Cluster"}), leader, updated),
    el("div", {class: "grid-2"},
       section("Masters", masters), section("Load balancers", balancers)),
    section("Storage", storage),
    section("Workers", workers),
    el("div", {class: "grid-2"},
       section("Chunks per second (last 5 minutes)", chartHolder),
       section("Events", events)),
    el("details", {class: "panel counters"}, el("summary", {text: "Leader's counters"}), counters),
  );
  const chart = new RateChart(chartHolder);

  function fill(cluster) {
    fillMasters(masters.tBodies[0], cluster);
    fillBalancers(balancers.tBodies[0], cluster);
    fillStorage(storage.tBodies[0], cluster);
    fillWorkers(workers.tBodies[0], cluster);
    fillCounters(counters.tBodies[0], cluster);
    leader.textContent = cluster.leader ? `leader ${cluster.leader}` : "no leader";
    leader.classList.toggle("warning", !cluster.leader);
    updated.textContent = `as of ${timeText(cluster.at)}`;
  }

  getJSON("/api/cluster").then(fill).catch((fault) => {
    updated.textContent = `could not read the cluster: ${fault.message}`;
  });
  const source = openStream("", {
    cluster: fill,
    rate: (data) => chart.add(Number(data.at), Number(data.chunks_per_s)),
    log: (data) => {
      events.prepend(eventRow(data));
      while (events.childElementCount > EVENT_ROWS_MAX) events.lastElementChild.remove();
    },
  });
  return {
    close() {
      source.close();
      chart.close();
    },
  };
}
