// The chunk panel of the job page: a chunk's attempts, each with its state,
// failure class, worker, exit code, usage, its timeline as a bar of phases
// (where the time went), its stdout and stderr (shown in #log-view) and its
// outputs to download.

import {badge, bytesText, replaceChildren, durationText, el, getJSON, getText, numberText, shortId,
        timeText} from "./dom.js";

// The steps of an attempt's timeline in order, and the name of the phase that
// ends at each (client/attempts.py TIMELINE_STEPS). An unknown step is skipped:
// its phase merges into the next known one.
const STEPS = [
  ["dispatched", "queued"],
  ["assigned", "dispatch→assign"],
  ["started", "start"],
  ["first_read", "first read"],
  ["ended", "run"],
  ["uploaded", "upload"],
  ["committed", "commit"],
];

export function phases(timeline) {
  const known = STEPS.filter(([step]) => timeline && typeof timeline[step] === "number");
  const result = [];
  for (let index = 1; index < known.length; index += 1) {
    const [fromStep] = known[index - 1];
    const [toStep, phase] = known[index];
    result.push({phase, from: fromStep, to: toStep, seconds: Math.max(0, timeline[toStep] - timeline[fromStep])});
  }
  return result;
}

function timelineBar(timeline) {
  const parts = phases(timeline);
  if (!parts.length) return el("div", {class: "timeline empty muted", text: "no timeline recorded"});
  const total = parts.reduce((sum, part) => sum + part.seconds, 0);
  const bar = el("div", {class: "timeline"});
  const legend = el("ol", {class: "timeline-legend"});
  parts.forEach((part) => {
    const phaseClass = `phase phase-${STEPS.findIndex(([step]) => step === part.to)}`;
    const segment = el("div", {class: phaseClass, title: `${part.phase}: ${durationText(part.seconds)}`,
                               dataset: {phase: part.phase}},
                       el("span", {text: part.phase}));
    segment.style.flexGrow = String(total > 0 ? Math.max(part.seconds / total, 0.02) : 1);
    bar.append(segment);
    legend.append(el("li", {}, el("span", {class: `swatch ${phaseClass}`}),
                     `${part.phase} ${durationText(part.seconds)}`));
  });
  const first = STEPS.find(([step]) => typeof timeline[step] === "number");
  return el("div", {class: "timeline-block"},
            el("div", {class: "muted", text: `from ${first[0]} at ${timeText(timeline[first[0]])}, `
                                             + `${durationText(total)} in all`}),
            bar, legend);
}

function usageList(usage) {
  if (!usage) return el("p", {class: "muted", text: "no usage reported"});
  const rows = [
    ["wall time", durationText(usage.wall_s)], ["cpu user", durationText(usage.cpu_user_s)],
    ["cpu system", durationText(usage.cpu_system_s)], ["peak memory", bytesText(usage.peak_memory_bytes)],
    ["read from cache", bytesText(usage.bytes_from_cache)], ["read from storage", bytesText(usage.bytes_from_storage)],
    ["output", bytesText(usage.output_bytes)],
  ];
  return el("dl", {class: "usage-list"}, rows.map(([name, value]) => [el("dt", {text: name}), el("dd", {text: value})]));
}

export function downloadLink(file) {
  return el("a", {class: "output-download", href: `/api/files/${encodeURIComponent(file.id)}?name=${
    encodeURIComponent(file.name)}`, download: file.name, text: `${file.name} (${bytesText(file.size)})`});
}

export class ChunkPanel {
  constructor(panel, logView, logTitle, jobId) {
    this.panel = panel;
    this.logView = logView;
    this.logTitle = logTitle;
    this.jobId = jobId;
    this.chunk = null;
    this.asking = 0;
  }

  async open(chunk) {
    this.chunk = chunk;
    this.panel.hidden = false;
    this.panel.dataset.chunk = String(chunk);
    await this.load();
    if (this.chunk === chunk) this.panel.scrollIntoView({block: "nearest"});
  }

  async refresh(chunk) {
    if (this.chunk === chunk) await this.load();
  }

  async load() {
    const chunk = this.chunk;
    const mine = ++this.asking;
    let answer;
    try {
      answer = await getJSON(`/api/jobs/${encodeURIComponent(this.jobId)}/chunks/${chunk}/attempts`);
    } catch (fault) {
      if (mine !== this.asking) return;
      this.show(chunk, [el("p", {class: "error-text", text: `could not read its attempts: ${fault.message}`})]);
      return;
    }
    if (mine !== this.asking) return;
    const attempts = answer.attempts || [];
    const parts = attempts.length ? attempts.map((attempt) => this.attemptView(chunk, attempt))
      : [el("p", {class: "muted", text: "no attempt yet"})];
    if (answer.dropped) parts.unshift(el("p", {class: "muted", text: `${answer.dropped} earlier attempts not kept`}));
    this.show(chunk, parts);
  }

  show(chunk, parts) {
    replaceChildren(this.panel,
      el("div", {class: "panel-head"}, el("h2", {text: `Chunk ${chunk}`}),
         el("button", {type: "button", class: "close-panel", text: "close",
                       on: {click: () => { this.panel.hidden = true; this.chunk = null; }}})),
      ...parts);
    this.panel.dataset.loaded = String(chunk);
  }

  attemptView(chunk, attempt) {
    const facts = el("div", {class: "attempt-facts"},
      el("strong", {text: `attempt ${attempt.number}`}), badge(attempt.state),
      attempt.failure ? el("span", {class: "failure", text: attempt.failure}) : null,
      el("span", {class: "mono", title: attempt.worker || "", text: `worker ${attempt.worker ? shortId(attempt.worker) : "–"}`}),
      el("span", {text: `exit code ${numberText(attempt.exit_code)}`}));
    const logs = el("div", {class: "log-buttons"},
      this.logButton("show-stdout", "stdout", chunk, attempt, attempt.stdout),
      this.logButton("show-stderr", "stderr", chunk, attempt, attempt.stderr));
    const outputs = attempt.outputs && attempt.outputs.length
      ? el("ul", {class: "outputs"}, attempt.outputs.map((file) => el("li", {}, downloadLink(file))))
      : el("p", {class: "muted", text: "no outputs"});
    return el("div", {class: `attempt state-${attempt.state}-edge`, dataset: {attempt: String(attempt.number)}},
              facts, attempt.error ? el("pre", {class: "error-text attempt-error", text: attempt.error}) : null,
              timelineBar(attempt.timeline), usageList(attempt.usage), logs,
              el("h3", {text: "Outputs"}), outputs);
  }

  logButton(className, stream, chunk, attempt, file) {
    const label = file ? `${stream} (${bytesText(file.size)})` : `no ${stream}`;
    return el("button", {type: "button", class: className, disabled: !file, text: label,
                         on: {click: () => this.showLog(`chunk ${chunk}, attempt ${attempt.number}: ${stream}`, file)}});
  }

  async showLog(title, file) {
    this.logTitle.textContent = title;
    this.logView.textContent = "loading…";
    this.logView.dataset.file = file.id;
    try {
      const {text, truncated} = await getText(`/api/files/${encodeURIComponent(file.id)}?view=text`);
      if (this.logView.dataset.file !== file.id) return;
      this.logView.textContent = text.length ? text : "(empty)";
      if (truncated) this.logTitle.textContent = `${title} (the first 1 MiB only)`;
    } catch (fault) {
      this.logView.textContent = `could not read it: ${fault.message}`;
    }
    this.logView.classList.remove("empty");
    this.logView.scrollIntoView({block: "nearest"});
  }
}
