// beamwatch live page. Everything shown is read from Tiled in the browser: its HTTP API for the
// data and its websocket subscriptions (/api/v1/stream/single/...) as a trigger to re-read, with
// a slow poll underneath so nothing is missed when a subscription drops or Tiled restarts.
// window.bw.state is the page's data model; the browser tests read it.
"use strict";

const bw = (window.bw = {
  state: {
    connected: null, // true / false once Tiled has answered or failed
    lastContact: null,
    runs: [], // [{uid, plan, time, status, pipelines: {name: {status, error}}}]
    empty: null,
    selected: null,
    view: "none", // none | empty | xanes | tomo | other
    drift: { points: 0 },
    cracks: { slices: 0, total: 0, shown: null },
    particles: { rows: 0 },
    series: { scans: 0 },
    errors: [], // pipeline errors shown for the selected run
    refreshes: 0,
    wsMessages: 0,
    problem: null, // last exception of the page itself
    pinned: false, // true once the user picked a run; until then the newest run is shown
    // What the page has shown over time (distinct values), for the tests and for debugging:
    // drift: {uid, points, acquiring}, cracks: {uid, slices, total}, conn: true/false.
    history: { drift: [], cracks: [], conn: [] },
  },
});

let CFG = null;
const PLOT_CONFIG = { responsive: true, displaylogo: false };
const cache = new Map(); // per selected run: outlines, fetched arrays keyed by path+shape

class TiledHttpError extends Error {
  constructor(status, path, detail) {
    super(`Tiled answered ${status} for ${path}: ${detail}`);
    this.status = status;
    this.path = path;
  }
}
class TiledDown extends Error {}

function remember(list, entry) {
  const last = list[list.length - 1];
  if (last && JSON.stringify(last) === JSON.stringify(entry)) return;
  list.push(entry);
  if (list.length > 500) list.shift();
}

// ---------------------------------------------------------------- Tiled HTTP ----------------
function apiUrl(path, params) {
  const url = new URL(`${CFG.tiled_url}/api/v1/${path}`);
  for (const [k, v] of Object.entries(params || {})) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  return url;
}

async function api(path, params) {
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), { cache: "no-store" });
  } catch (err) {
    setConnected(false);
    throw new TiledDown(String(err));
  }
  if (resp.status >= 502 && resp.status <= 504) {
    setConnected(false);
    throw new TiledDown(`HTTP ${resp.status}`);
  }
  setConnected(true);
  if (!resp.ok) {
    let detail = "";
    try {
      detail = (await resp.json()).detail;
    } catch (_e) {
      detail = resp.statusText;
    }
    throw new TiledHttpError(resp.status, path, detail);
  }
  return resp.json();
}

async function apiOrNull(path, params) {
  try {
    return await api(path, params);
  } catch (err) {
    if (err instanceof TiledHttpError && err.status === 404) return null;
    throw err;
  }
}

async function children(path) {
  // {key: {family, metadata, shape}} of a container; null when it does not exist (yet).
  const out = {};
  let offset = 0;
  for (;;) {
    const page = await apiOrNull(`search/${path}`, {
      fields: ["metadata", "structure_family", "structure"],
      "page[offset]": offset,
      "page[limit]": 200,
    });
    if (page === null) return null;
    for (const e of page.data) {
      const a = e.attributes;
      out[e.id] = {
        family: a.structure_family,
        metadata: a.metadata || {},
        shape: a.structure && a.structure.shape ? a.structure.shape : null,
      };
    }
    offset += page.data.length;
    if (!page.links.next || page.data.length === 0) return out;
  }
}

async function readArray(path, slice) {
  return api(`array/full/${path}`, { format: "application/json", slice });
}

async function readTable(path) {
  return api(`table/full/${path}`, { format: "application/json" });
}

// Arrays that did not change shape are not fetched again.
async function cachedArray(path, shape, slice) {
  const key = `${path}|${JSON.stringify(shape)}|${slice || ""}`;
  if (cache.has(key)) return cache.get(key);
  const value = await readArray(path, slice);
  cache.set(key, value);
  return value;
}

// ---------------------------------------------------------------- connection banner ---------
function setConnected(up) {
  const el = document.getElementById("conn");
  const was = bw.state.connected;
  bw.state.connected = up;
  remember(bw.state.history.conn, up);
  if (up) {
    bw.state.lastContact = new Date();
    el.dataset.state = "up";
    el.textContent = "Tiled connected";
    if (was === false) {
      // Tiled came back: subscriptions died with it.
      resubscribe();
      scheduleRefresh(0);
    }
  } else {
    el.dataset.state = "down";
    const since = bw.state.lastContact ? bw.state.lastContact.toLocaleTimeString() : "never";
    el.textContent =
      `Tiled at ${CFG.tiled_url} is not reachable — reconnecting every ` +
      `${CFG.poll_seconds} s (last contact ${since}). Showing the last data received.`;
  }
}

// ---------------------------------------------------------------- websocket subscriptions ---
const sockets = new Map(); // path -> {ws, retry}

// Rows known from websocket messages before the next HTTP read: path -> length along axis 0.
const streamedRows = new Map();

function rowsFromMessage(msg) {
  // array-data carries the patch (offset, shape); array-ref the whole new shape.
  if (!msg || !Array.isArray(msg.shape)) return null;
  if (msg.type === "array-data") {
    const offset = Array.isArray(msg.offset) ? msg.offset[0] || 0 : 0;
    return offset + msg.shape[0];
  }
  if (msg.type === "array-ref") return msg.shape[0];
  return null;
}

function subscribe(path, onRows) {
  if (sockets.has(path)) return;
  const entry = { ws: null, closed: false, delay: 1000 };
  sockets.set(path, entry);
  const open = () => {
    if (entry.closed) return;
    const url = apiUrl(`stream/single/${path}`, { envelope_format: "json" });
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (_e) {
      setTimeout(open, entry.delay);
      return;
    }
    entry.ws = ws;
    ws.onmessage = (event) => {
      bw.state.wsMessages += 1;
      entry.delay = 1000;
      let msg = null;
      try {
        msg = JSON.parse(event.data);
      } catch (_e) {
        msg = null;
      }
      const rows = rowsFromMessage(msg);
      if (rows !== null && rows > (streamedRows.get(path) || 0)) {
        streamedRows.set(path, rows);
        if (onRows) onRows(rows);
      }
      scheduleRefresh(150);
    };
    ws.onclose = () => {
      if (entry.closed) return;
      entry.delay = Math.min(entry.delay * 2, 30000);
      setTimeout(open, entry.delay);
    };
  };
  open();
}

function unsubscribeAll() {
  for (const entry of sockets.values()) {
    entry.closed = true;
    if (entry.ws) entry.ws.close();
  }
  sockets.clear();
}

function resubscribe() {
  const paths = [...sockets.keys()];
  unsubscribeAll();
  paths.forEach(subscribe);
}

// ---------------------------------------------------------------- refresh loop --------------
let refreshTimer = null;
let refreshing = false;
let refreshAgain = false;

function scheduleRefresh(delay) {
  if (refreshTimer !== null) clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, delay);
}

async function refresh() {
  refreshTimer = null;
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    await refreshRuns();
    await refreshView();
    bw.state.problem = null;
  } catch (err) {
    if (!(err instanceof TiledDown)) {
      bw.state.problem = String(err && err.stack ? err.stack : err);
      console.error(err);
    }
  } finally {
    bw.state.refreshes += 1;
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      scheduleRefresh(100);
    }
  }
}

// ---------------------------------------------------------------- run list ------------------
function summarise(pipelines, hasStop) {
  const statuses = Object.values(pipelines).map((p) => p.status);
  if (statuses.includes("failed")) return "failed";
  if (statuses.includes("running") || statuses.includes("queued")) return "running";
  if (statuses.includes("interrupted")) return "interrupted";
  if (statuses.length && statuses.every((s) => s === "complete")) return "complete";
  return hasStop ? "waiting" : "acquiring";
}

const RUN_LIMIT = 50; // newest runs listed
const TERMINAL = ["complete", "failed", "interrupted"];
const statusCache = new Map(); // uid -> {pipelines, at}: finished runs are re-read every 30 s

async function pipelinesOf(uid) {
  const pipes = (await children(`analysis/${uid}`)) || {};
  const out = {};
  for (const [name, node] of Object.entries(pipes)) {
    out[name] = {
      status: node.metadata.status || "unknown",
      error: node.metadata.error || null,
      traceback: node.metadata.traceback || null,
      metadata: node.metadata,
    };
  }
  return out;
}

async function refreshRuns() {
  // One request for the newest runs (Tiled sorts by the start document's time).
  const page = await apiOrNull("search/raw", {
    sort: "-start.time",
    fields: ["metadata"],
    "page[limit]": RUN_LIMIT,
  });
  const runs = [];
  for (const e of page ? page.data : []) {
    const md = e.attributes.metadata || {};
    const start = md.start || {};
    runs.push({
      uid: e.id,
      plan: start.plan_name || "?",
      time: start.time || 0,
      technique: start.beamwatch_technique || null,
      series: start.operando_series || null,
      imageKey: start.image_key || null,
      stop: md.stop || null,
      pipelines: {},
    });
  }
  bw.state.totalRuns = page ? page.meta.count : 0;
  // A run linked by #uid stays available even when it is older than the newest RUN_LIMIT.
  const wanted = bw.state.selected || location.hash.slice(1);
  if (wanted && !runs.find((r) => r.uid === wanted)) {
    const one = await apiOrNull(`metadata/raw/${wanted}`);
    if (one) {
      const md = one.data.attributes.metadata || {};
      const start = md.start || {};
      runs.push({
        uid: wanted, plan: start.plan_name || "?", time: start.time || 0,
        technique: start.beamwatch_technique || null, series: start.operando_series || null,
        imageKey: start.image_key || null, stop: md.stop || null, pipelines: {},
      });
    }
  }
  const now = Date.now();
  for (const run of runs) {
    const cached = statusCache.get(run.uid);
    const finished =
      cached && run.stop && Object.keys(cached.pipelines).length &&
      Object.values(cached.pipelines).every((p) => TERMINAL.includes(p.status));
    if (finished && run.uid !== bw.state.selected && now - cached.at < 30000) {
      run.pipelines = cached.pipelines;
    } else {
      run.pipelines = await pipelinesOf(run.uid);
      statusCache.set(run.uid, { pipelines: run.pipelines, at: now });
    }
    run.status = summarise(run.pipelines, run.stop !== null);
  }
  bw.state.runs = runs;
  bw.state.empty = runs.length === 0;
  renderRuns();
}

function badge(text, cls, title) {
  const span = document.createElement("span");
  span.className = `badge ${cls || text}`;
  span.textContent = text;
  if (title) span.title = title;
  return span;
}

function renderRuns() {
  document.getElementById("follow-newest").checked = !bw.state.pinned;
  const ul = document.getElementById("runs");
  ul.replaceChildren();
  if (bw.state.runs.length === 0) {
    const li = document.createElement("li");
    li.className = "muted";
    li.id = "no-runs";
    li.textContent = "No runs yet.";
    ul.append(li);
    return;
  }
  for (const run of bw.state.runs) {
    const li = document.createElement("li");
    li.className = "run" + (run.uid === bw.state.selected ? " selected" : "");
    li.dataset.uid = run.uid;
    li.dataset.status = run.status;
    const when = run.time ? new Date(run.time * 1000).toLocaleString() : "";
    const title = document.createElement("div");
    title.innerHTML = `<b></b> <span class="uid"></span>`;
    title.querySelector("b").textContent = run.plan;
    title.querySelector(".uid").textContent = run.uid.slice(0, 8);
    const meta = document.createElement("div");
    meta.className = "muted";
    meta.textContent = when;
    const badges = document.createElement("div");
    badges.append(badge(run.status));
    for (const [name, p] of Object.entries(run.pipelines)) {
      badges.append(badge(`${name}: ${p.status}`, p.status, p.error || ""));
    }
    li.append(title, meta, badges);
    li.addEventListener("click", () => {
      bw.state.pinned = true;
      select(run.uid);
    });
    ul.append(li);
  }
  if (bw.state.totalRuns > bw.state.runs.length) {
    const more = el("li", { className: "muted" });
    more.append(
      document.createTextNode(`${bw.state.totalRuns - bw.state.runs.length} older runs: `),
      el("a", { href: `${CFG.tiled_url}/ui/browse/raw`, target: "_blank" }, "browse them in Tiled")
    );
    ul.append(more);
  }
}

function select(uid, options) {
  if (bw.state.selected === uid) return;
  bw.state.selected = uid;
  if (!(options && options.keepHash)) history.replaceState(null, "", `#${uid}`);
  cache.clear();
  streamedRows.clear();
  unsubscribeAll();
  subscribe("raw");
  viewKey = null;
  bw.state.drift.points = 0;
  bw.state.cracks = { slices: 0, total: 0, shown: null };
  bw.state.particles.rows = 0;
  bw.state.series.scans = 0;
  bw.state.edgeMap = false;
  followSlices = true;
  document.getElementById("main").replaceChildren();
  renderRuns();
  scheduleRefresh(0);
}

// ---------------------------------------------------------------- views ---------------------
let viewKey = null; // which layout the main panel currently holds

function main() {
  return document.getElementById("main");
}

function ensureLayout(key, build) {
  if (viewKey === key) return;
  viewKey = key;
  const m = main();
  m.replaceChildren();
  build(m);
}

function card(parent, id, title, extra) {
  const div = document.createElement("div");
  div.className = "card";
  div.id = `card-${id}`;
  const h = document.createElement("h3");
  h.textContent = title;
  div.append(h);
  if (extra) extra(div);
  const plot = document.createElement("div");
  plot.className = "plot";
  plot.id = `plot-${id}`;
  div.append(plot);
  parent.append(div);
  return plot;
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  if (text !== undefined) e.textContent = text;
  return e;
}

async function refreshView() {
  const m = main();
  if (bw.state.empty) {
    bw.state.view = "empty";
    m.dataset.view = "empty";
    viewKey = "empty";
    m.replaceChildren(
      el("h2", {}, "No runs in this catalog yet"),
      el(
        "p",
        {},
        `Publish a Bluesky run to ${CFG.bus_address} (see the README) and it appears here ` +
          "while it is acquired; analysis results follow frame by frame."
      )
    );
    return;
  }
  const newest = bw.state.runs[0];
  const wanted = location.hash.slice(1);
  if (!bw.state.pinned && wanted && bw.state.runs.find((r) => r.uid === wanted)) {
    bw.state.pinned = true; // a link to a run keeps showing that run
    if (wanted !== bw.state.selected) select(wanted);
    return;
  }
  if (!bw.state.selected || !bw.state.runs.find((r) => r.uid === bw.state.selected) ||
      (!bw.state.pinned && newest.uid !== bw.state.selected)) {
    // Until the user picks a run, follow the newest one (a new scan shows up by itself).
    select(newest.uid, { keepHash: true });
    return;
  }
  const run = bw.state.runs.find((r) => r.uid === bw.state.selected);
  subscribe("raw");
  const kind = run.pipelines.xanes
    ? "xanes"
    : run.pipelines.cracks || run.plan === "tomo_scan_plan"
      ? "tomo"
      : run.plan === "xanes_scan_plan"
        ? "xanes"
        : "other";
  bw.state.view = kind;
  m.dataset.view = kind;
  ensureLayout(`${run.uid}|${kind}`, (root) => buildHeader(root, run, kind));
  renderHeader(run);
  if (kind === "xanes") await renderXanes(run);
  else if (kind === "tomo") await renderTomo(run);
  else await renderOther(run);
}

function buildHeader(root, run, kind) {
  root.append(el("h2", { id: "run-title" }));
  root.append(el("div", { id: "run-status" }));
  root.append(el("div", { id: "run-errors" }));
  const grid = el("div", { className: "grid", id: "grid" });
  root.append(grid);
  if (kind === "xanes") buildXanes(grid);
  else if (kind === "tomo") buildTomo(grid);
}

function renderHeader(run) {
  const t = document.getElementById("run-title");
  t.textContent = `${run.plan} — ${run.uid}`;
  const s = document.getElementById("run-status");
  s.replaceChildren(badge(run.status));
  for (const [name, p] of Object.entries(run.pipelines)) s.append(badge(`${name}: ${p.status}`, p.status));
  if (!run.stop) s.append(el("span", { className: "muted" }, " acquisition in progress"));
  if (!Object.keys(run.pipelines).length)
    s.append(el("span", { className: "muted" }, " waiting for the analysis to start"));
  const errs = document.getElementById("run-errors");
  errs.replaceChildren();
  bw.state.errors = [];
  for (const [name, p] of Object.entries(run.pipelines)) {
    if (p.status !== "failed") continue;
    bw.state.errors.push({ pipeline: name, error: p.error });
    const box = el("div", { className: "error pipeline-error" });
    box.dataset.pipeline = name;
    box.append(el("b", {}, `The ${name} analysis failed: `), el("span", {}, p.error || "(no message)"));
    if (p.traceback) box.append(el("pre", {}, p.traceback));
    box.append(el("div", { className: "muted" }, "Results written before the failure are shown below."));
    errs.append(box);
  }
}

async function renderOther(run) {
  const grid = document.getElementById("grid");
  if (!grid.childElementCount) {
    grid.append(
      el("p", { className: "muted" }, "No live view for this kind of run; browse it in Tiled's own UI:"),
      el("a", { href: `${CFG.tiled_url}/ui/browse/raw/${run.uid}`, target: "_blank" }, "open in Tiled")
    );
  }
}

// ---------------------------------------------------------------- XANES ---------------------
function buildXanes(grid) {
  card(grid, "frame", "Latest frame with particle outlines and ids");
  card(grid, "drift", "Global drift against frame number (pixels)");
  card(grid, "tracks", "Per-particle tracks (shift against frame 0, pixels)");
  card(grid, "edge", "Edge energy map (eV) — when the scan is complete");
  card(grid, "spectra", "Mean normalised spectra per particle — when the scan is complete");
  card(grid, "series", "Operando series: cumulative displacement per particle across scans");
}

function downsampleStep(shape) {
  return Math.max(1, Math.ceil(Math.max(shape[shape.length - 1], shape[shape.length - 2]) / 256));
}

function outlines(labels) {
  // Boundary pixels of every label: {k: [[row...], [col...]]}
  const out = {};
  const h = labels.length;
  const w = labels[0].length;
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const v = labels[r][c];
      if (!v) continue;
      const edge =
        r === 0 || c === 0 || r === h - 1 || c === w - 1 ||
        labels[r - 1][c] !== v || labels[r + 1][c] !== v ||
        labels[r][c - 1] !== v || labels[r][c + 1] !== v;
      if (!edge) continue;
      (out[v] = out[v] || [[], []])[0].push(r);
      out[v][1].push(c);
    }
  }
  return out;
}

function heat(z, step, extra) {
  return Object.assign(
    { type: "heatmap", z, x0: 0, dx: step, y0: 0, dy: step, colorscale: "Greys", reversescale: true, showscale: false },
    extra || {}
  );
}

// Plotly keeps (and mutates) the layout object it is given: every plot gets a fresh one.
function imageLayout(extra) {
  return Object.assign(
    {
      margin: { l: 40, r: 10, t: 24, b: 30 },
      yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain" },
      xaxis: { constrain: "domain" },
      showlegend: false,
    },
    extra || {}
  );
}

async function renderXanes(run) {
  const base = `analysis/${run.uid}/xanes`;
  subscribe(`${base}/global_shift`, (rows) => {
    bw.state.drift.streamed = rows; // drawn by the refresh this message triggers
  });
  const nodes = (await children(base)) || {};
  const shift = nodes.global_shift;
  const n = shift && shift.shape ? shift.shape[0] : 0;
  // Drift against frame number.
  if (n > 0) {
    const drift = await cachedArray(`${base}/global_shift`, shift.shape, `0:${n}`);
    const frames = drift.map((_r, i) => i);
    // A frame where no particle was registered has an unknown drift (NaN, null in JSON): it
    // is a gap in the curve and is counted above it, never drawn as 0.
    const unknown = drift.filter((r) => r[0] === null || Number.isNaN(r[0])).length;
    draw(
      "plot-drift",
      [
        { x: frames, y: drift.map((r) => r[0]), name: "dy", mode: "lines+markers" },
        { x: frames, y: drift.map((r) => r[1]), name: "dx", mode: "lines+markers" },
      ],
      {
        margin: { l: 50, r: 10, t: unknown ? 30 : 10, b: 40 },
        title: unknown ? { text: `drift unknown in ${unknown} frame(s): no particle registered`, font: { size: 12 } } : undefined,
        xaxis: { title: { text: "frame" } },
        yaxis: { title: { text: "drift (px)" } },
      },
      PLOT_CONFIG
    );
  }
  bw.state.drift.points = n;
  remember(bw.state.history.drift, { uid: run.uid, points: n, acquiring: !run.stop });
  // Per-particle tracks.
  const pshift = nodes.particle_shift;
  let shifts = null;
  if (pshift && pshift.shape && pshift.shape[1] > 0) {
    shifts = await cachedArray(`${base}/particle_shift`, pshift.shape);
    draw(
      "plot-tracks",
      shifts.map((track, k) => ({
        x: track.map((p) => p[1]),
        y: track.map((p) => p[0]),
        name: `particle ${k + 1}`,
        mode: "lines+markers",
        marker: { size: 4 },
      })),
      { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "shift x (px)" } }, yaxis: { title: { text: "shift y (px)" } } },
      PLOT_CONFIG
    );
  }
  // Latest analysed frame with outlines.
  await renderLatestFrame(run, nodes, n, shifts, run.imageKey);
  // After the scan: edge-energy map and spectra.
  if (nodes.edge_energy && nodes.edge_energy.shape) {
    const step = downsampleStep(nodes.edge_energy.shape);
    const edge = await cachedArray(`${base}/edge_energy`, nodes.edge_energy.shape, `::${step},::${step}`);
    draw(
      "plot-edge",
      [heat(edge, step, { colorscale: "Viridis", reversescale: false, showscale: true, colorbar: { title: { text: "edge energy (eV)" } } })],
      imageLayout(),
      PLOT_CONFIG
    );
    bw.state.edgeMap = true;
  } else {
    setNote("plot-edge", run.status === "failed" ? "not computed: the analysis failed" : "computed when the scan completes");
  }
  if (nodes.spectra && nodes.energy && nodes.spectra.shape) {
    const spectra = await cachedArray(`${base}/spectra`, nodes.spectra.shape);
    const energy = await cachedArray(`${base}/energy`, nodes.energy.shape);
    draw(
      "plot-spectra",
      spectra.map((s, k) => ({ x: energy, y: s, name: `particle ${k + 1}`, mode: "lines" })),
      { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "energy (eV)" } }, yaxis: { title: { text: "normalised absorbance" } } },
      PLOT_CONFIG
    );
  } else {
    setNote("plot-spectra", "computed when the scan completes");
  }
  if (nodes.deformation_displacement && nodes.deformation_displacement.shape) {
    const disp = await cachedArray(`${base}/deformation_displacement`, nodes.deformation_displacement.shape);
    const scans = disp.length ? disp[0].length : 0;
    bw.state.series.scans = scans;
    draw(
      "plot-series",
      disp.map((track, k) => ({
        x: track.map((_p, i) => i + 1),
        y: track.map((p) => (p[0] === null ? null : Math.hypot(p[0], p[1]))),
        name: `particle ${k + 1}`,
        mode: "lines+markers",
      })),
      { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "scan in the series" }, dtick: 1 }, yaxis: { title: { text: "displacement from scan 1 (px)" } } },
      PLOT_CONFIG
    );
  } else {
    setNote("plot-series", run.series ? "computed after each scan of the series" : "this scan is not part of an operando series");
  }
}

async function renderLatestFrame(run, nodes, n, shifts, keyHint) {
  if (n === 0) {
    setNote("plot-frame", "waiting for the first analysed frame");
    return;
  }
  const primary = await children(`raw/${run.uid}/primary`);
  if (!primary) return;
  let key = keyHint;
  if (!key || !primary[key]) {
    key = Object.keys(primary).find((k) => primary[k].shape && primary[k].shape.length === 3);
  }
  if (!key) return;
  const shape = primary[key].shape;
  const i = Math.min(n, shape[0]) - 1;
  if (i < 0) return;
  const step = downsampleStep(shape);
  const frame = await cachedArray(`raw/${run.uid}/primary/${key}`, [i], `${i},::${step},::${step}`);
  const traces = [heat(frame, step)];
  if (nodes.labels && nodes.labels.shape) {
    const cacheKey = `outlines|${run.uid}`;
    if (!cache.has(cacheKey)) {
      const labels = await readArray(`analysis/${run.uid}/xanes/labels`);
      cache.set(cacheKey, outlines(labels));
    }
    const outl = cache.get(cacheKey);
    const ids = { x: [], y: [], text: [] };
    for (const [label, [rows, cols]] of Object.entries(outl)) {
      const k = Number(label) - 1;
      const s = shifts && shifts[k] && shifts[k][i] && shifts[k][i][0] !== null ? shifts[k][i] : [0, 0];
      traces.push({
        type: "scatter",
        mode: "markers",
        x: cols.map((c) => c + s[1]),
        y: rows.map((r) => r + s[0]),
        marker: { size: 2, color: "#ff5722" },
        hoverinfo: "skip",
        name: `particle ${label}`,
      });
      ids.x.push(cols.reduce((a, b) => a + b, 0) / cols.length + s[1]);
      ids.y.push(rows.reduce((a, b) => a + b, 0) / rows.length + s[0]);
      ids.text.push(String(label));
    }
    traces.push({ type: "scatter", mode: "text", ...ids, textfont: { color: "#0d47a1", size: 15, family: "sans-serif" }, name: "ids" });
  }
  draw("plot-frame", traces, { ...imageLayout(), title: { text: `frame ${i}`, font: { size: 12 } } }, PLOT_CONFIG);
  bw.state.frameShown = i;
}

function draw(plotId, traces, layout, config) {
  // A "computed when…" note is replaced by the plot once there is data.
  const div = document.getElementById(plotId);
  if (!div) return null;
  if (div.dataset.note) {
    delete div.dataset.note;
    div.replaceChildren();
  }
  return Plotly.react(div, traces, layout, config);
}

function setNote(plotId, text) {
  const div = document.getElementById(plotId);
  if (!div || div.dataset.note === text || div.data) return;
  div.dataset.note = text;
  div.replaceChildren(el("p", { className: "muted" }, text));
}

// ---------------------------------------------------------------- tomography ----------------
let followSlices = true;

function buildTomo(grid) {
  card(grid, "slice", "Reconstructed slice with the crack overlay (red)", (div) => {
    const row = el("div", { className: "slider" });
    const input = el("input", { type: "range", min: 0, max: 0, value: 0, id: "slice-slider" });
    const label = el("span", { id: "slice-label" }, "slice –");
    const follow = el("label", {}, "");
    const box = el("input", { type: "checkbox", checked: true, id: "slice-follow" });
    follow.append(box, document.createTextNode(" follow"));
    input.addEventListener("input", () => {
      followSlices = false;
      box.checked = false;
      scheduleRefresh(0);
    });
    box.addEventListener("change", () => {
      followSlices = box.checked;
      scheduleRefresh(0);
    });
    row.append(input, label, follow);
    div.append(el("div", { id: "crack-progress", className: "muted" }, "waiting for the reconstruction"), row);
  });
  card(grid, "damage", "Damage density (crack share of the moving window) of this slice");
  card(grid, "depth", "Damage against depth (crack area / particle area per slice)");
  card(grid, "correlation", "Particle density against damage density");
  const tcard = el("div", { className: "card", id: "card-table" });
  tcard.append(el("h3", {}, "Particles (click a column to sort)"), el("div", { className: "tablewrap", id: "particle-table" }));
  grid.append(tcard);
  card(grid, "sizes", "Particle size distribution");
  card(grid, "detachment", "Degree of detachment");
  card(grid, "flawed", "Flawed fraction");
}

async function renderTomo(run) {
  const base = `analysis/${run.uid}/cracks`;
  subscribe(`${base}/mask`, (rows) => showCrackProgress(run, Math.max(rows, bw.state.cracks.slices), bw.state.cracks.total));
  const nodes = (await children(base)) || {};
  const recon = nodes.reconstruction;
  const mask = nodes.mask;
  const total = recon && recon.shape ? recon.shape[0] : 0;
  const done = mask && mask.shape ? mask.shape[0] : 0;
  showCrackProgress(run, done, total);
  const slider = document.getElementById("slice-slider");
  if (done > 0) {
    slider.max = done - 1;
    if (followSlices) slider.value = done - 1;
    const z = Math.min(Number(slider.value), done - 1);
    document.getElementById("slice-label").textContent = `slice ${z} of ${total}`;
    const step = downsampleStep(recon.shape);
    const sl = `${z},::${step},::${step}`;
    const img = await cachedArray(`${base}/reconstruction`, [z], sl);
    const crack = await cachedArray(`${base}/mask`, [z, done > z], sl);
    const overlay = crack.map((row) => row.map((v) => (v ? 1 : null)));
    draw(
      "plot-slice",
      [heat(img, step, { reversescale: false }), heat(overlay, step, { colorscale: [[0, "rgba(229,57,53,0.85)"], [1, "rgba(229,57,53,0.85)"]], hoverinfo: "skip" })],
      imageLayout(),
      PLOT_CONFIG
    );
    bw.state.cracks.shown = z;
    if (nodes.damage_density && nodes.damage_density.shape) {
      const dmg = await cachedArray(`${base}/damage_density`, [z], sl);
      draw(
        "plot-damage",
        [heat(dmg, step, { colorscale: "Hot", reversescale: true, showscale: true, colorbar: { title: { text: "crack share" } } })],
        imageLayout(),
        PLOT_CONFIG
      );
    } else setNote("plot-damage", "computed when every slice is segmented");
  } else {
    setNote("plot-slice", "no slice segmented yet");
    setNote("plot-damage", "computed when every slice is segmented");
  }
  if (nodes.depth_profile && nodes.depth_profile.shape) {
    const prof = await cachedArray(`${base}/depth_profile`, nodes.depth_profile.shape);
    draw(
      "plot-depth",
      [{ x: prof, y: prof.map((_v, i) => i), mode: "lines+markers", name: "damage" }],
      { margin: { l: 60, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "crack area / particle area" } }, yaxis: { title: { text: "slice (0 = separator side)" }, autorange: "reversed" } },
      PLOT_CONFIG
    );
  } else setNote("plot-depth", "computed when every slice is segmented");
  const fit = run.pipelines.cracks && run.pipelines.cracks.metadata.volume_fit;
  if (fit && nodes.damage_density && nodes.particle_density) {
    const shape = nodes.damage_density.shape;
    const sz = Math.max(1, Math.ceil(shape[0] / 8));
    const sxy = Math.max(1, Math.ceil(shape[1] / 16));
    const sl = `::${sz},::${sxy},::${sxy}`;
    const dmg = (await cachedArray(`${base}/damage_density`, shape, sl)).flat(2);
    const part = (await cachedArray(`${base}/particle_density`, shape, sl)).flat(2);
    const lo = Math.min(...part);
    const hi = Math.max(...part);
    draw(
      "plot-correlation",
      [
        { x: part, y: dmg, mode: "markers", marker: { size: 3, opacity: 0.4 }, name: "windows" },
        {
          x: [lo, hi],
          y: [fit.intercept + fit.slope * lo, fit.intercept + fit.slope * hi],
          mode: "lines",
          name: `fit: slope ${fit.slope.toFixed(3)}, r = ${fit.pearson_r.toFixed(2)}`,
          line: { color: "#c62828" },
        },
      ],
      { margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: true, legend: { x: 0, y: 1 }, xaxis: { title: { text: "particle density" } }, yaxis: { title: { text: "damage density" } } },
      PLOT_CONFIG
    );
  } else setNote("plot-correlation", "computed when every slice is segmented");
  await renderParticles(run);
}

function showCrackProgress(run, done, total) {
  bw.state.cracks.total = total;
  bw.state.cracks.slices = done;
  remember(bw.state.history.cracks, { uid: run.uid, slices: done, total });
  const progress = document.getElementById("crack-progress");
  if (!progress) return;
  if (!total) {
    progress.textContent = run.stop ? "reconstructing…" : "collecting projections (the crack map starts when the scan stops)";
  } else {
    progress.textContent = `crack map: ${done} / ${total} slices segmented` + (done === total ? " (complete)" : " — growing");
  }
}

let tableSort = { column: "label", descending: false };

async function renderParticles(run) {
  const p = run.pipelines.particles;
  const base = `analysis/${run.uid}/particles`;
  if (!p || p.status !== "complete") {
    const wrap = document.getElementById("particle-table");
    const text = p && p.status === "failed" ? "the particle analysis failed (see above)" : "computed after the crack map";
    if (wrap.textContent !== text) wrap.replaceChildren(el("p", { className: "muted" }, text));
    ["sizes", "detachment", "flawed"].forEach((id) => setNote(`plot-${id}`, text));
    return;
  }
  const key = `table|${run.uid}`;
  if (!cache.has(key)) cache.set(key, await readTable(`${base}/table`));
  const table = cache.get(key);
  renderTable(table);
  // Distributions from the table itself, particles cut by the volume border drawn apart.
  const hist = (column, target, xlabel) => {
    const values = table[column] || [];
    const border = table.touches_border || [];
    const pick = (cut) => values.filter((v, i) => v !== null && Boolean(border[i]) === cut);
    draw(
      target,
      [
        { type: "histogram", x: pick(false), name: "whole particles", nbinsx: 20 },
        { type: "histogram", x: pick(true), name: "cut by the volume border", nbinsx: 20, opacity: 0.6 },
      ].filter((t) => t.x.length > 0),
      { barmode: "stack", margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: true, legend: { x: 0.55, y: 1 }, xaxis: { title: { text: xlabel } }, yaxis: { title: { text: "particles" } } },
      PLOT_CONFIG
    );
  };
  hist("equivalent_diameter_px", "plot-sizes", "equivalent diameter (px)");
  hist("detachment", "plot-detachment", "degree of detachment (0 intact, 1 detached)");
  const flawed = (table.flawed || []).filter((v) => v === true || v === 1).length;
  const n = (table.label || []).length;
  draw(
    "plot-flawed",
    [{ type: "bar", x: ["unflawed", "flawed"], y: [n - flawed, flawed], marker: { color: ["#2e7d32", "#c62828"] } }],
    { margin: { l: 50, r: 10, t: 30, b: 40 }, title: { text: `flawed fraction ${n ? ((100 * flawed) / n).toFixed(1) : 0} %`, font: { size: 12 } }, yaxis: { title: { text: "particles" } } },
    PLOT_CONFIG
  );
}

const TABLE_COLUMNS = [
  "label", "volume_voxels", "equivalent_diameter_px", "centroid_z", "sphericity",
  "crack_fraction", "flawed_slices", "flawed", "detachment", "touches_border",
];

function renderTable(table) {
  const columns = TABLE_COLUMNS.filter((c) => c in table);
  const n = columns.length ? table[columns[0]].length : 0;
  bw.state.particles.rows = n;
  bw.state.particles.sort = { ...tableSort };
  const order = [...Array(n).keys()];
  const col = table[tableSort.column] || table[columns[0]];
  order.sort((a, b) => (col[a] < col[b] ? -1 : col[a] > col[b] ? 1 : 0) * (tableSort.descending ? -1 : 1));
  const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v));
  const t = el("table", { className: "particles", id: "particles" });
  const head = el("tr");
  for (const c of columns) {
    const th = el("th", {}, c + (c === tableSort.column ? (tableSort.descending ? " ▼" : " ▲") : ""));
    th.dataset.column = c;
    th.addEventListener("click", () => {
      tableSort = { column: c, descending: tableSort.column === c ? !tableSort.descending : false };
      renderTable(table);
    });
    head.append(th);
  }
  t.append(head);
  for (const i of order) {
    const tr = el("tr");
    for (const c of columns) tr.append(el("td", {}, fmt(table[c][i])));
    t.append(tr);
  }
  document.getElementById("particle-table").replaceChildren(t);
}

// ---------------------------------------------------------------- start ---------------------
async function start() {
  CFG = await (await fetch("/config.json", { cache: "no-store" })).json();
  bw.config = CFG;
  const link = document.getElementById("tiled-link");
  link.replaceChildren(el("a", { href: `${CFG.tiled_url}/ui/`, target: "_blank" }, `Tiled: ${CFG.tiled_url}`));
  const follow = document.getElementById("follow-newest");
  follow.addEventListener("change", () => {
    bw.state.pinned = !follow.checked;
    if (follow.checked) history.replaceState(null, "", location.pathname);
    scheduleRefresh(0);
  });
  subscribe("raw");
  await refresh();
  setInterval(() => scheduleRefresh(0), CFG.poll_seconds * 1000);
}

window.addEventListener("hashchange", () => {
  const uid = location.hash.slice(1);
  if (uid && uid !== bw.state.selected) {
    bw.state.pinned = true;
    select(uid);
  }
});

start().catch((err) => {
  bw.state.problem = String(err);
  main().replaceChildren(el("div", { className: "error" }, `The page could not start: ${err}`));
});
