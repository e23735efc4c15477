// Title, status badges and pipeline errors above every single-run view.
import { badge, el } from "../dom.js";
import { layout, state } from "../state.js";

export function buildHeader(root) {
  root.append(el("h2", { id: "run-title" }), el("div", { id: "run-status" }), el("div", { id: "run-errors" }));
  const grid = el("div", { className: "grid", id: "grid" });
  root.append(grid);
  return grid;
}

export function renderHeader(run) {
  document.getElementById("run-title").textContent = `${run.plan} — ${run.uid}`;
  const s = document.getElementById("run-status");
  s.replaceChildren(badge(run.status));
  for (const [name, p] of Object.entries(run.pipelines)) s.append(badge(`${name}: ${p.status}`, p.status));
  if (!run.stop) s.append(el("span", { className: "muted" }, " acquisition in progress"));
  if (!Object.keys(run.pipelines).length) s.append(el("span", { className: "muted" }, " waiting for the analysis to start"));
  const errs = document.getElementById("run-errors");
  errs.replaceChildren();
  state.errors = [];
  for (const [name, p] of Object.entries(run.pipelines)) {
    if (p.status !== layout.status.failed) continue;
    state.errors.push({ pipeline: name, error: p.error });
    const box = el("div", { className: "error pipeline-error" });
    box.dataset.pipeline = name;
    box.append(el("b", {}, `The ${name} analysis failed: `), el("span", {}, p.error || "(no message)"));
    if (p.traceback) box.append(el("pre", {}, [].concat(p.traceback).join("")));
    box.append(el("div", { className: "muted" }, "Results written before the failure are shown below."));
    errs.append(box);
  }
}
