// beamwatch live page. Everything shown is read from Tiled in the browser: its HTTP API for the
// data and its websocket subscriptions as a trigger to re-read, with a slow poll underneath so
// nothing is missed when a subscription drops or Tiled restarts. Modules:
//   state.js          data model (window.bw.state), config.json, layout.json
//   tiled.js          Tiled HTTP access and the per-selection cache
//   subscriptions.js  websocket subscriptions
//   scheduler.js      the coalescing refresh loop
//   dom.js, images.js DOM / Plotly helpers, pure image helpers
//   runs.js           the run list; selection.js what is shown / compared
//   views/*.js        one module per view: header, xanes, tomo, other, compare; chemistry
//                     (LCF / cluster maps and trajectory, cards of the xanes view) and
//                     figures (the analysis' figures, a card of the xanes and tomo views)
import { config, layout, remember, state, ui } from "./state.js";
import { TiledDown, onConnection } from "./tiled.js";
import { resubscribe, subscribe } from "./subscriptions.js";
import { scheduleRefresh, setRefresher } from "./scheduler.js";
import { el, main } from "./dom.js";
import { refreshRuns, viewKind } from "./runs.js";
import { select, setCompare } from "./selection.js";
import { buildHeader, renderHeader } from "./views/header.js";
import { buildXanes, renderXanes } from "./views/xanes.js";
import { buildTomo, renderTomo } from "./views/tomo.js";
import { buildOther, renderOther } from "./views/other.js";
import { buildCompare, renderCompare } from "./views/compare.js";
import { buildFigures, renderFigures } from "./views/figures.js";
import { buildChemistry, renderChemistry } from "./views/chemistry.js";

const VIEWS = {
  xanes: [buildXanes, renderXanes],
  tomo: [buildTomo, renderTomo],
  other: [buildOther, renderOther],
};
// Cards some views end with, in order: the XANES chemistry (LCF / cluster maps, trajectory)
// and the figures of runs whose pipelines write figures (layout.json: a "figures" key).
const EXTRA_CARDS = {
  xanes: [[buildChemistry, renderChemistry], [buildFigures, renderFigures]],
  tomo: [[buildFigures, renderFigures]],
  other: [],
};

function setConnected(up) {
  const banner = document.getElementById("conn");
  const was = state.connected;
  state.connected = up;
  remember(state.history.conn, up);
  if (up) {
    state.lastContact = new Date();
    banner.dataset.state = "up";
    banner.textContent = "Tiled connected";
    if (was === false) {
      resubscribe(); // Tiled came back: subscriptions died with it
      scheduleRefresh(0);
    }
  } else {
    banner.dataset.state = "down";
    const since = state.lastContact ? state.lastContact.toLocaleTimeString() : "never";
    banner.textContent =
      `Tiled at ${config.tiled_url} is not reachable — reconnecting every ` +
      `${config.poll_seconds} s (last contact ${since}). Showing the last data received.`;
  }
}

async function refresh() {
  try {
    await refreshRuns();
    await refreshView();
    state.problem = null;
  } catch (err) {
    if (!(err instanceof TiledDown)) {
      state.problem = String(err && err.stack ? err.stack : err);
      console.error(err);
    }
  }
}

function ensureLayout(key, build) {
  if (ui.viewKey === key) return;
  ui.viewKey = key;
  const m = main();
  m.replaceChildren();
  build(m);
}

function showView(name) {
  state.view = name;
  main().dataset.view = name;
}

async function refreshView() {
  if (state.empty) {
    showView("empty");
    ui.viewKey = "empty";
    main().replaceChildren(
      el("h2", {}, "No runs in this catalog yet"),
      el(
        "p",
        {},
        `Publish a Bluesky run to ${config.bus_address} (see the README) and it appears here ` +
          "while it is acquired; analysis results follow frame by frame."
      )
    );
    return;
  }
  if (state.compare.length >= 2) {
    showView("compare");
    ensureLayout(`compare|${state.compare.join(",")}`, buildCompare);
    await renderCompare();
    return;
  }
  const newest = state.runs[0];
  const wanted = location.hash.slice(1);
  if (!state.pinned && wanted && state.runs.find((r) => r.uid === wanted)) {
    state.pinned = true; // a link to a run keeps showing that run
    if (wanted !== state.selected) select(wanted);
    return;
  }
  if (state.pinned && state.selected && wanted === state.selected &&
      !state.runs.find((r) => r.uid === state.selected)) {
    // A link to a run that Tiled does not list yet (a scan that has just started, or a
    // slow catalog): wait for it instead of showing another run in its place.
    showView("waiting");
    ensureLayout(`waiting|${wanted}`, (root) =>
      root.append(
        el("h2", {}, `Waiting for run ${wanted}`),
        el(
          "p",
          {},
          "Tiled does not list this run (yet). It is shown as soon as it appears; " +
            "tick \"show the newest run as it starts\" to follow the newest run instead."
        )
      )
    );
    return;
  }
  if (!state.selected || !state.runs.find((r) => r.uid === state.selected) ||
      (!state.pinned && newest.uid !== state.selected)) {
    // Until the user picks a run, follow the newest one (a new scan shows up by itself).
    select(newest.uid, { keepHash: true });
    return;
  }
  const run = state.runs.find((r) => r.uid === state.selected);
  subscribe(layout.containers.raw);
  const kind = viewKind(run);
  const [build, render] = VIEWS[kind];
  showView(kind);
  ensureLayout(`${run.uid}|${kind}`, (root) => {
    const grid = buildHeader(root);
    build(grid);
    for (const [buildCard] of EXTRA_CARDS[kind]) buildCard(grid);
  });
  renderHeader(run);
  await render(run);
  for (const [, renderCard] of EXTRA_CARDS[kind]) await renderCard(run);
}

function followHash() {
  const hash = location.hash.slice(1);
  if (hash.startsWith("compare=")) {
    const uids = hash.slice("compare=".length).split(",").filter(Boolean);
    if (uids.join(",") !== state.compare.join(",")) setCompare(uids);
  } else if (hash && hash !== state.selected) {
    state.pinned = true;
    select(hash);
  }
}

async function start() {
  const [cfg, lay] = await Promise.all(
    ["/config.json", "/layout.json"].map(async (url) => (await fetch(url, { cache: "no-store" })).json())
  );
  Object.assign(config, cfg);
  Object.assign(layout, lay);
  onConnection(setConnected);
  setRefresher(refresh);
  document
    .getElementById("tiled-link")
    .replaceChildren(el("a", { href: `${config.tiled_url}/ui/`, target: "_blank" }, `Tiled: ${config.tiled_url}`));
  const follow = document.getElementById("follow-newest");
  follow.addEventListener("change", () => {
    state.pinned = !follow.checked;
    if (follow.checked) {
      state.compare = [];
      history.replaceState(null, "", location.pathname);
    }
    scheduleRefresh(0);
  });
  if (location.hash.startsWith("#compare=")) followHash();
  subscribe(layout.containers.raw);
  scheduleRefresh(0);
  setInterval(() => scheduleRefresh(0), config.poll_seconds * 1000);
}

const started = start();
// A link followed before config.json and layout.json are in (a fast click, a test) waits for
// them: following it reads layout.containers.
window.addEventListener("hashchange", () => started.then(followHash, () => {}));

started.catch((err) => {
  state.problem = String(err);
  main().replaceChildren(el("div", { className: "error" }, `The page could not start: ${err}`));
});
