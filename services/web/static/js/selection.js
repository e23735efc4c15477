// Which run the main panel shows.
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
  if (state.selected === uid) return;
  state.selected = uid;
  if (!(options && options.keepHash)) history.replaceState(null, "", `#${uid}`);
  clearPanel();
  scheduleRefresh(0);
}
