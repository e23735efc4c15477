// Tomography run: the crack map growing slice by slice, damage maps and profile, the density
// correlation, then the particle table and distributions of the particle stage.
import { cached, cachedArray, children, readTable } from "../tiled.js";
import { subscribe } from "../subscriptions.js";
import { scheduleRefresh } from "../scheduler.js";
import { card, draw, el, heat, imageLayout, plotLayout, setNote } from "../dom.js";
import { downsampleStep } from "../images.js";
import { layout, remember, state, ui } from "../state.js";
import { lengthScale, particleColumn, statedSize, windowText } from "../units.js";

export function buildTomo(grid) {
  card(grid, "slice", "Reconstructed slice with the crack overlay (red)", (div) => {
    const row = el("div", { className: "slider" });
    const input = el("input", { type: "range", min: 0, max: 0, value: 0, id: "slice-slider" });
    const label = el("span", { id: "slice-label" }, "slice –");
    const follow = el("label", {}, "");
    const box = el("input", { type: "checkbox", checked: true, id: "slice-follow" });
    follow.append(box, document.createTextNode(" follow"));
    input.addEventListener("input", () => {
      ui.followSlices = false;
      box.checked = false;
      scheduleRefresh(0);
    });
    box.addEventListener("change", () => {
      ui.followSlices = box.checked;
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

// The voxel size the analysis states (cracks, else particles metadata): um or px.
function tomoLength(run) {
  return lengthScale(statedSize(run, [layout.cracks.pipeline, layout.particles.pipeline], "voxel_size_um"));
}

// Axis titles of a slice image in the run's length unit.
function sliceLayout(length) {
  return imageLayout({
    margin: { l: 50, r: 10, t: 24, b: 40 },
    xaxis: { constrain: "domain", title: { text: `x (${length.unit})` } },
    yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain", title: { text: `y (${length.unit})` } },
  });
}

export async function renderTomo(run) {
  const C = layout.cracks;
  const base = `${layout.containers.analysis}/${run.uid}/${C.pipeline}`;
  const length = tomoLength(run);
  const cracksMd = (run.pipelines[C.pipeline] || {}).metadata || {};
  state.units = { length: length.unit, scale: length.scale, window: cracksMd.window || null };
  const damageTitle = document.querySelector("#card-damage h3");
  if (damageTitle) {
    damageTitle.textContent = `Damage density (crack share of the ${windowText(cracksMd.window, length)} window) of this slice`;
  }
  subscribe(`${base}/${C.mask}`, (rows) => showCrackProgress(run, Math.max(rows, state.cracks.slices), state.cracks.total));
  const nodes = (await children(base)) || {};
  const recon = nodes[C.reconstruction];
  const mask = nodes[C.mask];
  const total = recon && recon.shape ? recon.shape[0] : 0;
  const done = mask && mask.shape ? mask.shape[0] : 0;
  showCrackProgress(run, done, total);
  const slider = document.getElementById("slice-slider");
  const damageNode = nodes[C.damage_density];
  if (done > 0) {
    slider.max = done - 1;
    if (ui.followSlices) slider.value = done - 1;
    const z = Math.min(Number(slider.value), done - 1);
    document.getElementById("slice-label").textContent = `slice ${z} of ${total}`;
    const step = downsampleStep(recon.shape);
    const sl = `${z},::${step},::${step}`;
    const img = await cachedArray(`${base}/${C.reconstruction}`, [z], sl);
    const crack = await cachedArray(`${base}/${C.mask}`, [z, done > z], sl);
    const overlay = crack.map((row) => row.map((v) => (v ? 1 : null)));
    const d = step * length.scale; // image pixels in the run's length unit
    draw(
      "plot-slice",
      [heat(img, d, { reversescale: false }), heat(overlay, d, { colorscale: [[0, "rgba(229,57,53,0.85)"], [1, "rgba(229,57,53,0.85)"]], hoverinfo: "skip" })],
      sliceLayout(length)
    );
    state.cracks.shown = z;
    if (damageNode && damageNode.shape) {
      const dmg = await cachedArray(`${base}/${C.damage_density}`, [z], sl);
      draw(
        "plot-damage",
        [heat(dmg, d, { colorscale: "Hot", reversescale: true, showscale: true, colorbar: { title: { text: "crack share" } } })],
        sliceLayout(length)
      );
    } else setNote("plot-damage", "computed when every slice is segmented");
  } else {
    setNote("plot-slice", "no slice segmented yet");
    setNote("plot-damage", "computed when every slice is segmented");
  }
  const profNode = nodes[C.depth_profile];
  if (profNode && profNode.shape) {
    const prof = await cachedArray(`${base}/${C.depth_profile}`, profNode.shape);
    // slice centres, as the analysis' depth_profile figure and slice_depth array
    const depth = prof.map((_v, i) => (length.unit === "um" ? (i + 0.5) * length.scale : i));
    const depthTitle = length.unit === "um" ? "depth from the separator (um)" : "slice (0 = separator side; voxel size unknown)";
    draw(
      "plot-depth",
      [{ x: prof, y: depth, mode: "lines+markers", name: "damage" }],
      plotLayout("crack area / particle area", "", {
        margin: { l: 60, r: 10, t: 10, b: 40 },
        yaxis: { title: { text: depthTitle }, autorange: "reversed" },
      })
    );
  } else setNote("plot-depth", "computed when every slice is segmented");
  const cracks = run.pipelines[C.pipeline];
  const fit = cracks && cracks.metadata.volume_fit;
  const partNode = nodes[C.particle_density];
  if (fit && damageNode && partNode) {
    const shape = damageNode.shape;
    const sz = Math.max(1, Math.ceil(shape[0] / 8));
    const sxy = Math.max(1, Math.ceil(shape[1] / 16));
    const sl = `::${sz},::${sxy},::${sxy}`;
    const dmg = (await cachedArray(`${base}/${C.damage_density}`, shape, sl)).flat(2);
    const part = (await cachedArray(`${base}/${C.particle_density}`, shape, sl)).flat(2);
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
      plotLayout(
        `particle density (share of the ${windowText(cracksMd.window, length)} window)`,
        "damage density (crack share)",
        { showlegend: true, legend: { x: 0, y: 1 } }
      )
    );
  } else setNote("plot-correlation", "computed when every slice is segmented");
  await renderParticles(run, length);
}

function showCrackProgress(run, done, total) {
  state.cracks.total = total;
  state.cracks.slices = done;
  remember(state.history.cracks, { uid: run.uid, slices: done, total });
  const progress = document.getElementById("crack-progress");
  if (!progress) return;
  if (!total) {
    progress.textContent = run.stop ? "reconstructing…" : "collecting projections (the crack map starts when the scan stops)";
  } else {
    progress.textContent = `crack map: ${done} / ${total} slices segmented` + (done === total ? " (complete)" : " — growing");
  }
}

async function renderParticles(run, length) {
  const P = layout.particles;
  const S = layout.status;
  const p = run.pipelines[P.pipeline];
  if (!p || p.status !== S.complete) {
    const wrap = document.getElementById("particle-table");
    const text = p && p.status === S.failed ? "the particle analysis failed (see above)" : "computed after the crack map";
    if (wrap.textContent !== text) wrap.replaceChildren(el("p", { className: "muted" }, text));
    ["sizes", "detachment", "flawed"].forEach((id) => setNote(`plot-${id}`, text));
    return;
  }
  const base = `${layout.containers.analysis}/${run.uid}/${P.pipeline}`;
  const table = await cached(`table|${run.uid}`, () => readTable(`${base}/${P.table}`));
  renderTable(table, length);
  const col = layout.particle_columns;
  // Distributions from the table itself, particles cut by the volume border drawn apart.
  const hist = (column, target, xlabel, scale = 1) => {
    const values = (table[column] || []).map((v) => (v === null ? null : v * scale));
    const border = table[col.touches_border] || [];
    const pick = (cut) => values.filter((v, i) => v !== null && Boolean(border[i]) === cut);
    draw(
      target,
      [
        { type: "histogram", x: pick(false), name: "whole particles", nbinsx: 20 },
        { type: "histogram", x: pick(true), name: "cut by the volume border", nbinsx: 20, opacity: 0.6 },
      ].filter((t) => t.x.length > 0),
      plotLayout(xlabel, "particles", { barmode: "stack", showlegend: true, legend: { x: 0.55, y: 1 } })
    );
  };
  hist(col.equivalent_diameter_px, "plot-sizes", `equivalent diameter (${length.unit})`, length.scale);
  hist(col.detachment, "plot-detachment", "degree of detachment (0 intact, 1 detached)");
  const flawed = (table[col.flawed] || []).filter((v) => v === true || v === 1).length;
  const n = (table[col.label] || []).length;
  draw(
    "plot-flawed",
    [{ type: "bar", x: ["unflawed", "flawed"], y: [n - flawed, flawed], marker: { color: ["#2e7d32", "#c62828"] } }],
    plotLayout("", "particles", {
      margin: { l: 50, r: 10, t: 30, b: 40 },
      title: { text: `flawed fraction ${n ? ((100 * flawed) / n).toFixed(1) : 0} %`, font: { size: 12 } },
    })
  );
}

// The particle table: stored columns (data-column, what sorting uses), lengths shown in the
// run's unit with the unit in the header (units.js particleColumn).
function renderTable(table, length) {
  const columns = Object.values(layout.particle_columns).filter((c) => c in table);
  const shown = columns.map((c) => ({ column: c, ...particleColumn(c, length, layout.particle_columns) }));
  const n = columns.length ? table[columns[0]].length : 0;
  const sort = ui.tableSort;
  state.particles.rows = n;
  state.particles.sort = { ...sort };
  state.particles.columns = shown;
  const order = [...Array(n).keys()];
  const col = table[sort.column] || table[columns[0]];
  order.sort((a, b) => (col[a] < col[b] ? -1 : col[a] > col[b] ? 1 : 0) * (sort.descending ? -1 : 1));
  const fmt = (v, scale) => {
    if (v === null || (typeof v === "number" && Number.isNaN(v))) return "–"; // unknown
    if (typeof v !== "number") return String(v);
    const x = v * scale;
    return Number.isInteger(x) ? String(x) : x.toFixed(3);
  };
  const t = el("table", { className: "particles", id: "particles" });
  const head = el("tr");
  for (const { column: c, header } of shown) {
    const th = el("th", {}, header + (c === sort.column ? (sort.descending ? " ▼" : " ▲") : ""));
    th.dataset.column = c;
    th.title = c === header ? c : `${header}; stored as ${c}`;
    th.addEventListener("click", () => {
      ui.tableSort = { column: c, descending: sort.column === c ? !sort.descending : false };
      renderTable(table, length);
    });
    head.append(th);
  }
  t.append(head);
  for (const i of order) {
    const tr = el("tr");
    for (const { column: c, scale } of shown) tr.append(el("td", {}, fmt(table[c][i], scale)));
    t.append(tr);
  }
  document.getElementById("particle-table").replaceChildren(t);
}
