// The jobs page: every job the masters know, newest first, with its state,
// a progress bar and its times, filtered by state and age. The list is read
// again (at most once a second) when a job or chunk event commits.

import {FINAL_JOB_STATES, JOB_STATES, badge, clear, durationText, el, getJSON, jobPath, link, shortId,
        throttle, timeText} from "./dom.js";

const REFRESH_INTERVAL_MS = 1000;
const LIST_LIMIT = 500;
// Events after which a job's line may have changed.
const CHANGING_KINDS = /^(job_|chunk_(succeeded|failed|cancelled|cached|started|dispatched|lost|retried))/;

// `.progress > .progress-bar`: the bar's width is the share of chunks done;
// inside it one segment per kind of ending, in proportion.
export function progressBar(job) {
  const total = job.chunk_count || 0;
  const cached = job.cached || 0;
  const parts = [["succeeded", (job.succeeded || 0) - cached], ["cached", cached], ["failed", job.failed || 0],
                 ["cancelled", job.cancelled || 0]];
  const done = parts.reduce((sum, [, count]) => sum + Math.max(0, count), 0);
  const share = total > 0 ? Math.min(1, done / total) : (FINAL_JOB_STATES.has(job.state) ? 1 : 0);
  const bar = el("div", {class: "progress-bar", dataset: {done: String(done), total: String(total)}});
  bar.style.width = `${(share * 100).toFixed(2)}%`;
  for (const [state, count] of parts) {
    if (count <= 0) continue;
    const segment = el("span", {class: `segment state-${state}`, title: `${count} ${state}`});
    segment.style.flexGrow = String(count);
    bar.append(segment);
  }
  return el("div", {class: "progress-cell"},
            el("div", {class: "progress", title: `${done} of ${total} chunks done`}, bar),
            el("span", {class: "progress-text", text: `${done}/${total}`}));
}

export function jobDuration(job, now) {
  if (!job.started_at) return null;
  return (job.finished_at || now) - job.started_at;
}

function jobRow(job, now) {
  const name = job.name ? job.name : "(no name)";
  return el("tr", {class: `job-row state-row-${job.state}`, dataset: {job: job.job, state: job.state}},
    el("td", {}, link(jobPath(job.job), name, {class: "job-name"}),
       el("div", {class: "mono muted", text: shortId(job.job), title: job.job})),
    el("td", {}, badge(job.state), job.past_retention ? el("span", {class: "muted", text: " past retention"}) : null),
    el("td", {}, progressBar(job)),
    el("td", {class: "time", text: timeText(job.submitted_at)}),
    el("td", {class: "time", text: timeText(job.started_at)}),
    el("td", {class: "time", text: timeText(job.finished_at)}),
    el("td", {class: "num", text: durationText(jobDuration(job, now))}),
    el("td", {class: "error-text", text: job.error || ""}));
}

export function renderJobs(root, params, {openStream}) {
  const stateFilter = el("select", {id: "filter-state", title: "state"},
                         el("option", {value: "", text: "any state"}),
                         JOB_STATES.map((state) => el("option", {value: state, text: state})));
  const sinceFilter = el("input", {id: "filter-since", type: "text", placeholder: "since: 2h, 1d, 2026-11-30T15:00",
                                   size: 28});
  const message = el("span", {id: "jobs-message", class: "error-text"});
  const count = el("span", {class: "muted"});
  const jobsTable = el("table", {id: "jobs-table", class: "data jobs"},
    el("thead", {}, el("tr", {}, ["job", "state", "progress", "submitted", "started", "finished", "duration",
                                   "error"].map((h) => el("th", {text: h})))),
    el("tbody"));
  const query = new URLSearchParams(location.search);
  stateFilter.value = JOB_STATES.includes(query.get("state")) ? query.get("state") : "";
  sinceFilter.value = query.get("since") || "";
  root.append(
    el("div", {class: "page-title"}, el("h1", {text: "Jobs"}), count),
    el("form", {class: "filters", on: {submit: (event) => { event.preventDefault(); changed(); }}},
       el("label", {}, "State ", stateFilter), el("label", {}, "Since ", sinceFilter),
       el("button", {type: "submit", text: "Apply"}), message),
    el("section", {class: "panel"}, jobsTable));

  let closed = false;
  let asking = 0;

  async function load() {
    const ask = new URLSearchParams({limit: String(LIST_LIMIT)});
    if (stateFilter.value) ask.set("state", stateFilter.value);
    if (sinceFilter.value.trim()) ask.set("since", sinceFilter.value.trim());
    const mine = ++asking;
    try {
      const answer = await getJSON(`/api/jobs?${ask}`);
      if (closed || mine !== asking) return;
      message.textContent = "";
      const now = Date.now() / 1000;
      const body = jobsTable.tBodies[0];
      // A row whose job did not change is kept, so that a refresh does not
      // take the row from under the pointer; only finished jobs stay still.
      const kept = new Map();
      for (const old of body.querySelectorAll("tr.job-row")) kept.set(old.dataset.job, old);
      const rows = (answer.jobs || []).map((job) => {
        const signature = JSON.stringify(job);
        const old = kept.get(job.job);
        if (old && old.dataset.signature === signature && FINAL_JOB_STATES.has(job.state)) return old;
        const fresh = jobRow(job, now);
        fresh.dataset.signature = signature;
        return fresh;
      });
      clear(body).append(...rows);
      if (!body.childElementCount) body.append(el("tr", {class: "empty"}, el("td", {colspan: 8, text: "no jobs"})));
      count.textContent = `${(answer.jobs || []).length} shown`;
    } catch (fault) {
      if (!closed && mine === asking) message.textContent = fault.message;
    }
  }

  function changed() {
    const shown = new URLSearchParams();
    if (stateFilter.value) shown.set("state", stateFilter.value);
    if (sinceFilter.value.trim()) shown.set("since", sinceFilter.value.trim());
    history.replaceState({}, "", `/jobs${shown.toString() ? "?" + shown : ""}`);
    load();
  }

  stateFilter.addEventListener("change", changed);
  const refresh = throttle(load, REFRESH_INTERVAL_MS);
  load();
  let connected = false;
  const source = openStream("", {
    open: () => {
      if (connected) refresh();      // a reconnection: events may have been missed
      connected = true;
    },
    log: (data) => { if (CHANGING_KINDS.test(String(data.kind || ""))) refresh(); },
  });
  return {
    close() {
      closed = true;
      source.close();
    },
  };
}
