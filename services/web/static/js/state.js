// The page's data model. window.bw.state is what the page shows; the browser tests read it.
// config (/config.json: where Tiled is) and layout (/layout.json: result keys and statuses of
// services/core/layout.py) are filled once at start by main.js.

export const config = {};
export const layout = {};

export const state = {
  connected: null, // true / false once Tiled has answered or failed
  lastContact: null,
  runs: [], // [{uid, plan, time, status, pipelines: {name: {status, error, metadata}}}]
  totalRuns: 0,
  empty: null,
  selected: null,
  compare: [], // uids ticked for the compare view (two or more show it)
  view: "none", // none | empty | xanes | tomo | other | compare
  drift: { points: 0 },
  cracks: { slices: 0, total: 0, shown: null },
  particles: { rows: 0 },
  series: { scans: 0 },
  edgeMap: false,
  chemistry: null, // the chemistry cards: {lcf: {layer, layers, step}, clusters: k, trajectory}
  units: null, // lengths of the shown run: {length: "um" | "px", scale (unit per px), window}
  figures: [], // [{pipeline, name}] of the figures card of the selected run
  figureListings: 0, // how often the figures card was listed (on pipeline status changes)
  chemistryProblems: [], // [{pipeline, option, error, request, when}]: chemistry refused / failed
  compared: null, // what the compare view last drew: {uids, unit, traces: {card: n}}
  errors: [], // pipeline errors shown for the selected run
  refreshes: 0,
  wsMessages: 0,
  problem: null, // last exception of the page itself
  pinned: false, // true once the user picked a run; until then the newest run is shown
  // What the page has shown over time (distinct values), for the tests and for debugging:
  // drift: {uid, points, acquiring}, cracks: {uid, slices, total}, conn: true/false.
  history: { drift: [], cracks: [], conn: [] },
};

// What the main panel holds, besides the data model: reset when another run is selected.
export const ui = {
  viewKey: null, // which layout the main panel currently holds
  followSlices: true, // the slice slider follows the newest segmented slice
  tableSort: { column: "label", descending: false },
};

window.bw = { state, config, layout };

export function remember(list, entry) {
  const last = list[list.length - 1];
  if (last && JSON.stringify(last) === JSON.stringify(entry)) return;
  list.push(entry);
  if (list.length > 500) list.shift();
}

export function resetRunState() {
  state.drift.points = 0;
  state.cracks = { slices: 0, total: 0, shown: null };
  state.particles.rows = 0;
  state.series.scans = 0;
  state.edgeMap = false;
  state.chemistry = null;
  state.units = null;
  state.figures = [];
  state.chemistryProblems = [];
  state.compared = null;
  ui.viewKey = null;
  ui.followSlices = true;
}
