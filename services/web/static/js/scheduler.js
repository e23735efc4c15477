// One refresh at a time: requests made while a refresh runs coalesce into one more afterwards.
// main.js registers what a refresh does; everything else only asks for one.
import { state } from "./state.js";

let refresher = async () => {};
let timer = null;
let running = false;
let again = false;

export function setRefresher(fn) {
  refresher = fn;
}

export function scheduleRefresh(delay) {
  if (timer !== null) clearTimeout(timer);
  timer = setTimeout(runRefresh, delay);
}

async function runRefresh() {
  timer = null;
  if (running) {
    again = true;
    return;
  }
  running = true;
  try {
    await refresher();
  } finally {
    state.refreshes += 1;
    running = false;
    if (again) {
      again = false;
      scheduleRefresh(100);
    }
  }
}
