// Which run the main panel shows, and which runs are ticked for comparison.
import { cache } from "./tiled.js";
import { subscribe, unsubscribeAll } from "./subscriptions.js";
import { scheduleRefresh } from "./scheduler.js";
import { layout, resetRunState, state } from "./state.js";

function clearPanel() {
  cache.clear();
  unsubscribeAll();
  subscribe(layout.containers.raw);
  resetRunState();
  document.getElementById("main").replaceChildren();
}

// Show one run. options.keepHash: leave the address as it is (following the newest run).
export function select(uid, options) {
  const leavingCompare = state.compare.length >= 2;
  if (state.selected === uid && !leavingCompare) return;
  state.selected = uid;
  state.compare = [];
  if (!(options && options.keepHash)) history.replaceState(null, "", `#${uid}`);
  clearPanel();
  scheduleRefresh(0);
}

// Tick or untick a run for the compare view, shown while two or more are ticked
// (the address then reads #compare=<uid>,<uid>,... and can be shared).
export function toggleCompare(uid) {
  const i = state.compare.indexOf(uid);
  if (i >= 0) state.compare.splice(i, 1);
  else state.compare.push(uid);
  setCompare(state.compare);
}

export function setCompare(uids) {
  state.compare = [...new Set(uids)];
  state.pinned = true;
  if (state.compare.length >= 2) history.replaceState(null, "", `#compare=${state.compare.join(",")}`);
  else if (state.selected) history.replaceState(null, "", `#${state.selected}`);
  clearPanel();
  scheduleRefresh(0);
}
