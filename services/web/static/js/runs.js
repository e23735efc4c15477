// The run list: newest runs from raw/, each with the status of its analysis pipelines.
import { apiOrNull, children } from "./tiled.js";
import { badge, el } from "./dom.js";
import { config, layout, state } from "./state.js";
import { select, toggleCompare } from "./selection.js";

const RUN_LIMIT = 50; // newest runs listed
// Run summaries the page adds to the pipeline statuses of services/core/layout.py:
export const WAITING = "waiting"; // stopped, no analysis has started
export const ACQUIRING = "acquiring"; // not stopped, no analysis has started

// One status for a run from its pipelines' statuses ({name: {status}}).
export function summarise(pipelines, hasStop) {
  const S = layout.status;
  const statuses = Object.values(pipelines).map((p) => p.status);
  if (statuses.includes(S.failed)) return S.failed;
  if (statuses.includes(S.running) || statuses.includes(S.queued)) return S.running;
  if (statuses.includes(S.interrupted)) return S.interrupted;
  if (statuses.includes(S.incomplete)) return S.incomplete;
  if (statuses.length && statuses.every((s) => s === S.complete)) return S.complete;
  return hasStop ? WAITING : ACQUIRING;
}

// Which view shows a run: xanes | tomo | other.
export function viewKind(run) {
  if (run.pipelines[layout.xanes.pipeline]) return "xanes";
  if (run.pipelines[layout.cracks.pipeline] || run.plan === "tomo_scan_plan") return "tomo";
  if (run.plan === "xanes_scan_plan") return "xanes";
  return "other";
}

const statusCache = new Map(); // uid -> {pipelines, at}: finished runs are re-read every 30 s

async function pipelinesOf(uid) {
  const M = layout.metadata;
  const pipes = (await children(`${layout.containers.analysis}/${uid}`)) || {};
  const out = {};
  for (const [name, node] of Object.entries(pipes)) {
    out[name] = {
      status: node.metadata[M.status] || "unknown",
      error: node.metadata[M.error] || null,
      traceback: node.metadata[M.traceback] || null,
      metadata: node.metadata,
    };
  }
  return out;
}

function runFromMetadata(uid, md) {
  const start = md.start || {};
  return {
    uid,
    plan: start.plan_name || "?",
    time: start.time || 0,
    technique: start.beamwatch_technique || null,
    series: start.operando_series || null,
    imageKey: start.image_key || null,
    stop: md.stop || null,
    pipelines: {},
  };
}

export async function refreshRuns() {
  const raw = layout.containers.raw;
  // One request for the newest runs (Tiled sorts by the start document's time).
  const page = await apiOrNull(`search/${raw}`, {
    sort: "-start.time",
    fields: ["metadata"],
    "page[limit]": RUN_LIMIT,
  });
  const runs = (page ? page.data : []).map((e) => runFromMetadata(e.id, e.attributes.metadata || {}));
  state.totalRuns = page ? page.meta.count : 0;
  // Runs linked by #uid or ticked for comparison stay listed even when older than RUN_LIMIT.
  const wanted = [state.selected || location.hash.slice(1), ...state.compare];
  for (const uid of wanted) {
    if (!uid || uid.startsWith("compare=") || runs.find((r) => r.uid === uid)) continue;
    const one = await apiOrNull(`metadata/${raw}/${uid}`);
    if (one) runs.push(runFromMetadata(uid, one.data.attributes.metadata || {}));
  }
  const now = Date.now();
  const final = layout.final_statuses;
  for (const run of runs) {
    const cached = statusCache.get(run.uid);
    const finished =
      cached && run.stop && Object.keys(cached.pipelines).length &&
      Object.values(cached.pipelines).every((p) => final.includes(p.status));
    const shown = run.uid === state.selected || state.compare.includes(run.uid);
    if (finished && !shown && now - cached.at < 30000) {
      run.pipelines = cached.pipelines;
    } else {
      run.pipelines = await pipelinesOf(run.uid);
      statusCache.set(run.uid, { pipelines: run.pipelines, at: now });
    }
    run.status = summarise(run.pipelines, run.stop !== null);
  }
  state.runs = runs;
  state.empty = runs.length === 0;
  renderRuns();
}

export function renderRuns() {
  document.getElementById("follow-newest").checked = !state.pinned;
  const ul = document.getElementById("runs");
  ul.replaceChildren();
  if (state.runs.length === 0) {
    ul.append(el("li", { className: "muted", id: "no-runs" }, "No runs yet."));
    return;
  }
  for (const run of state.runs) {
    const compared = state.compare.includes(run.uid);
    const li = el("li", { className: "run" + (run.uid === state.selected ? " selected" : "") + (compared ? " compared" : "") });
    li.dataset.uid = run.uid;
    li.dataset.status = run.status;
    const when = run.time ? new Date(run.time * 1000).toLocaleString() : "";
    const tick = el("input", { type: "checkbox", className: "compare", checked: compared, title: "compare this run with others (or ctrl-click the run)" });
    tick.dataset.uid = run.uid;
    tick.addEventListener("click", (event) => {
      event.stopPropagation();
      toggleCompare(run.uid);
    });
    const title = el("div");
    title.append(tick, el("b", {}, ` ${run.plan}`), document.createTextNode(" "), el("span", { className: "uid" }, run.uid.slice(0, 8)));
    const badges = el("div");
    badges.append(badge(run.status));
    for (const [name, p] of Object.entries(run.pipelines)) {
      badges.append(badge(`${name}: ${p.status}`, p.status, p.error || ""));
    }
    li.append(title, el("div", { className: "muted" }, when), badges);
    li.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey) {
        toggleCompare(run.uid);
        return;
      }
      state.pinned = true;
      select(run.uid);
    });
    ul.append(li);
  }
  if (state.totalRuns > state.runs.length) {
    const more = el("li", { className: "muted" });
    more.append(
      document.createTextNode(`${state.totalRuns - state.runs.length} older runs: `),
      el("a", { href: `${config.tiled_url}/ui/browse/${layout.containers.raw}`, target: "_blank" }, "browse them in Tiled")
    );
    ul.append(more);
  }
}
