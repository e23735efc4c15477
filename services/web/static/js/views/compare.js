// Compare view: two or more ticked runs, their distributions overlaid, one trace per run —
// particle sizes, detachment, flawed fraction, damage against depth, edge energy. It reads the
// same Tiled arrays and tables as the single-run views.
import { cached, cachedArray, children, readTable } from "../tiled.js";
import { card, draw, el, plotLayout } from "../dom.js";
import { downsampleStep, finiteValues } from "../images.js";
import { layout, state } from "../state.js";
import { setCompare } from "../selection.js";

const COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#ad1457"];
const CARDS = [
  ["sizes", "Particle size distribution (whole particles)"],
  ["detachment", "Degree of detachment (whole particles)"],
  ["flawed", "Flawed fraction (whole particles)"],
  ["depth", "Damage against depth"],
  ["edge", "Edge energy of the particle pixels"],
];

// ---- pure helpers (tested in the browser tests) ----
export function runLabel(run) {
  return `${run.plan} ${run.uid.slice(0, 8)}`;
}

// "um" when every run states its voxel size, else "px": one axis never mixes the two.
export function commonUnit(voxelSizes) {
  return voxelSizes.length && voxelSizes.every((v) => typeof v === "number" && v > 0) ? "um" : "px";
}

// Values of `column` for the particles not cut by the volume border, unknown (null) left out,
// times `scale`.
export function wholeParticleValues(table, column, scale) {
  const values = table[column] || [];
  const border = table[layout.particle_columns.touches_border] || [];
  const s = scale === undefined ? 1 : scale;
  return values.filter((v, i) => v !== null && !border[i]).map((v) => v * s);
}

// Share of the whole particles that are flawed; null when there is none.
export function flawedFraction(table) {
  const flawed = wholeParticleValues(table, layout.particle_columns.flawed).map((v) => (v === true || v === 1 ? 1 : 0));
  return flawed.length ? flawed.reduce((a, b) => a + b, 0) / flawed.length : null;
}

// Plotly bins shared by every run's histogram: n bins over the range of all the values.
export function commonBins(valueLists, n) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const values of valueLists) {
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (!Number.isFinite(lo)) return undefined;
  const size = hi > lo ? (hi - lo) / n : 1;
  return { start: lo - size / 2, end: hi + size / 2, size };
}

// Depth of every slice from the separator side: its centre in um when the voxel size is known
// (as the analysis' slice_depth and depth_profile figure), else the slice index.
export function depthAxis(n, voxelUm) {
  return [...Array(n).keys()].map((z) => (voxelUm ? (z + 0.5) * voxelUm : z));
}

// ---- reading ----
async function readRun(run) {
  const A = layout.containers.analysis;
  const P = layout.particles;
  const C = layout.cracks;
  const X = layout.xanes;
  const out = { run, voxel: null, table: null, profile: null, edge: null };
  const particles = run.pipelines[P.pipeline];
  if (particles && particles.status === layout.status.complete) {
    out.voxel = particles.metadata.voxel_size_um || null;
    out.table = await cached(`table|${run.uid}`, () => readTable(`${A}/${run.uid}/${P.pipeline}/${P.table}`));
  }
  if (run.pipelines[C.pipeline]) {
    const nodes = (await children(`${A}/${run.uid}/${C.pipeline}`)) || {};
    const node = nodes[C.depth_profile];
    if (node && node.shape) out.profile = await cachedArray(`${A}/${run.uid}/${C.pipeline}/${C.depth_profile}`, node.shape);
  }
  if (run.pipelines[X.pipeline]) {
    const nodes = (await children(`${A}/${run.uid}/${X.pipeline}`)) || {};
    const node = nodes[X.edge_energy];
    if (node && node.shape) {
      const step = downsampleStep(node.shape);
      out.edge = finiteValues(await cachedArray(`${A}/${run.uid}/${X.pipeline}/${X.edge_energy}`, node.shape, `::${step},::${step}`));
    }
  }
  return out;
}

// ---- drawing ----
export function buildCompare(root) {
  root.append(el("h2", { id: "run-title" }, "Comparing runs"));
  const list = el("div", { id: "compare-runs" });
  const clear = el("button", { id: "compare-clear", type: "button" }, "clear the comparison");
  clear.addEventListener("click", () => setCompare([]));
  root.append(list, clear);
  const grid = el("div", { className: "grid", id: "grid" });
  root.append(grid);
  for (const [id, title] of CARDS) {
    card(grid, id, title, (div) => div.append(el("div", { className: "muted compare-missing", id: `missing-${id}` })));
  }
}

function noteMissing(id, names) {
  const box = document.getElementById(`missing-${id}`);
  if (box) box.textContent = names.length ? `not available for: ${names.join(", ")}` : "";
}

export async function renderCompare() {
  const runs = state.compare.map((uid) => state.runs.find((r) => r.uid === uid)).filter(Boolean);
  const list = document.getElementById("compare-runs");
  list.replaceChildren(
    ...runs.map((run, k) => {
      const item = el("span", { className: "compare-run" }, `${runLabel(run)} (${run.status})`);
      item.style.borderColor = COLOURS[k % COLOURS.length];
      return item;
    })
  );
  const data = [];
  for (const run of runs) data.push(await readRun(run));
  const colour = (d) => COLOURS[runs.indexOf(d.run) % COLOURS.length];
  const withTable = data.filter((d) => d.table);
  const unit = commonUnit(withTable.map((d) => d.voxel));
  const scale = (d) => (unit === "um" ? d.voxel : 1);
  const col = layout.particle_columns;
  const missing = (pred) => data.filter((d) => !pred(d)).map((d) => runLabel(d.run));
  const traces = {};
  // A run with no value to show (no particle results, every particle cut by the border, no
  // edge-energy map) gets no trace and is named under the plot.
  const hist = (id, pick, xlabel, ylabel) => {
    const has = (d) => {
      const values = pick(d);
      return Boolean(values && values.length);
    };
    noteMissing(id, missing(has));
    const xbins = commonBins(data.filter(has).map(pick), 25);
    const ts = data
      .filter(has)
      .map((d) => ({
        type: "histogram",
        x: pick(d),
        name: runLabel(d.run),
        histnorm: "probability",
        xbins, // the same bins for every run
        autobinx: false,
        opacity: 0.55,
        marker: { color: colour(d) },
        meta: d.run.uid,
      }));
    traces[id] = ts.length;
    if (ts.length) draw(`plot-${id}`, ts, plotLayout(xlabel, ylabel, { barmode: "overlay", showlegend: true, legend: { x: 0.5, y: 1 } }));
  };
  hist("sizes", (d) => d.table && wholeParticleValues(d.table, col.equivalent_diameter_px, scale(d)), `equivalent diameter (${unit})`, "share of particles");
  hist("detachment", (d) => d.table && wholeParticleValues(d.table, col.detachment), "degree of detachment (0 intact, 1 detached)", "share of particles");
  hist("edge", (d) => d.edge, "edge energy (eV)", "share of pixels");
  const flawed = withTable.filter((d) => flawedFraction(d.table) !== null);
  traces.flawed = flawed.length;
  if (flawed.length) {
    draw(
      "plot-flawed",
      flawed.map((d) => {
        const fraction = flawedFraction(d.table);
        const n = wholeParticleValues(d.table, col.flawed).length;
        return {
          type: "bar",
          x: [runLabel(d.run)],
          y: [fraction],
          text: [`${(100 * fraction).toFixed(1)} % of ${n}`],
          textposition: "auto",
          name: runLabel(d.run),
          marker: { color: colour(d) },
          meta: d.run.uid,
        };
      }),
      plotLayout("", "flawed fraction", { showlegend: false, yaxis: { title: { text: "flawed fraction" }, range: [0, 1] } })
    );
  }
  noteMissing("flawed", missing((d) => d.table && flawedFraction(d.table) !== null));
  const profiles = data.filter((d) => d.profile);
  const depthUnit = commonUnit(profiles.map((d) => d.voxel));
  traces.depth = profiles.length;
  if (profiles.length) {
    draw(
      "plot-depth",
      profiles.map((d) => ({
        x: d.profile,
        y: depthAxis(d.profile.length, depthUnit === "um" ? d.voxel : null),
        mode: "lines+markers",
        name: runLabel(d.run),
        marker: { color: colour(d) },
        line: { color: colour(d) },
        meta: d.run.uid,
      })),
      plotLayout("crack area / particle area", "", {
        margin: { l: 60, r: 10, t: 10, b: 40 },
        showlegend: true,
        yaxis: { title: { text: depthUnit === "um" ? "depth (um, 0 = separator side)" : "slice (0 = separator side)" }, autorange: "reversed" },
      })
    );
  }
  noteMissing("depth", missing((d) => d.profile));
  state.compared = { uids: runs.map((r) => r.uid), unit, depthUnit, traces };
}
