// XANES run: latest frame with particle outlines, drift, tracks; after the scan the edge-energy
// map, spectra and the operando series.
import { cache, cachedArray, children, readArray } from "../tiled.js";
import { subscribe } from "../subscriptions.js";
import { card, draw, heat, imageLayout, plotLayout, setNote } from "../dom.js";
import { downsampleStep, finiteValues, outlines } from "../images.js";
import { layout, remember, state } from "../state.js";
import { lengthScale } from "../units.js";

// Shown when the scan is complete but no pixel / particle could be normalised.
export const NO_EDGE =
  "no pixel has an edge energy: an edge needs frames in the pre-edge and post-edge windows " +
  "of the analysis (SpectraParams) and a jump between them";
export const NO_SPECTRA =
  "no particle spectrum could be normalised (no frame in the pre-edge or post-edge window)";

export function buildXanes(grid) {
  card(grid, "frame", "Latest frame with particle outlines and ids");
  card(grid, "drift", "Global drift against frame number");
  card(grid, "tracks", "Per-particle tracks (shift against frame 0)");
  card(grid, "edge", "Edge energy map (eV) — when the scan is complete");
  card(grid, "spectra", "Mean normalised spectra per particle — when the scan is complete");
  card(grid, "series", "Operando series: cumulative displacement per particle across scans");
}

// Axis titles of an image in the run's length unit.
function mapLayout(length, extra) {
  return imageLayout({
    margin: { l: 50, r: 10, t: 24, b: 40 },
    xaxis: { constrain: "domain", title: { text: `x (${length.unit})` } },
    yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain", title: { text: `y (${length.unit})` } },
    ...(extra || {}),
  });
}

const scaled = (v, s) => (v === null || Number.isNaN(v) ? null : v * s);

export async function renderXanes(run) {
  const X = layout.xanes;
  const base = `${layout.containers.analysis}/${run.uid}/${X.pipeline}`;
  const xanes = run.pipelines[X.pipeline];
  const length = lengthScale(xanes && xanes.metadata ? xanes.metadata.pixel_size_um : null);
  state.units = { length: length.unit, scale: length.scale, window: null };
  const u = length.unit;
  const s = length.scale;
  subscribe(`${base}/${X.global_shift}`, (rows) => {
    state.drift.streamed = rows; // drawn by the refresh this message triggers
  });
  const nodes = (await children(base)) || {};
  const shift = nodes[X.global_shift];
  const n = shift && shift.shape ? shift.shape[0] : 0;
  if (n > 0) {
    const drift = await cachedArray(`${base}/${X.global_shift}`, shift.shape, `0:${n}`);
    const frames = drift.map((_r, i) => i);
    // A frame where no particle was registered has an unknown drift (NaN, null in JSON): it
    // is a gap in the curve and is counted above it, never drawn as 0.
    const unknown = drift.filter((r) => r[0] === null || Number.isNaN(r[0])).length;
    draw(
      "plot-drift",
      [
        { x: frames, y: drift.map((r) => scaled(r[0], s)), name: "dy", mode: "lines+markers" },
        { x: frames, y: drift.map((r) => scaled(r[1], s)), name: "dx", mode: "lines+markers" },
      ],
      plotLayout("frame", `drift (${u})`, {
        margin: { l: 50, r: 10, t: unknown ? 30 : 10, b: 40 },
        title: unknown ? { text: `drift unknown in ${unknown} frame(s): no particle registered`, font: { size: 12 } } : undefined,
      })
    );
  }
  state.drift.points = n;
  remember(state.history.drift, { uid: run.uid, points: n, acquiring: !run.stop });
  const pshift = nodes[X.particle_shift];
  let shifts = null;
  if (pshift && pshift.shape && pshift.shape[1] > 0) {
    shifts = await cachedArray(`${base}/${X.particle_shift}`, pshift.shape);
    draw(
      "plot-tracks",
      shifts.map((track, k) => ({
        x: track.map((p) => scaled(p[1], s)),
        y: track.map((p) => scaled(p[0], s)),
        name: `particle ${k + 1}`,
        mode: "lines+markers",
        marker: { size: 4 },
      })),
      plotLayout(`shift x (${u})`, `shift y (${u})`)
    );
  }
  await renderLatestFrame(run, nodes, n, shifts, run.imageKey, length);
  const failed = run.status === layout.status.failed;
  const edgeNode = nodes[X.edge_energy];
  if (edgeNode && edgeNode.shape) {
    const step = downsampleStep(edgeNode.shape);
    const edge = await cachedArray(`${base}/${X.edge_energy}`, edgeNode.shape, `::${step},::${step}`);
    if (finiteValues(edge).length) {
      draw(
        "plot-edge",
        [heat(edge, step * s, { colorscale: "Viridis", reversescale: false, showscale: true, colorbar: { title: { text: "edge energy (eV)" } } })],
        mapLayout(length)
      );
    } else {
      // an all-NaN map drew as empty, squashed axes: say why there is none
      setNote("plot-edge", NO_EDGE);
    }
    state.edgeMap = true;
  } else {
    setNote("plot-edge", failed ? "not computed: the analysis failed" : "computed when the scan completes");
  }
  if (nodes[X.spectra] && nodes[X.energy] && nodes[X.spectra].shape) {
    const spectra = await cachedArray(`${base}/${X.spectra}`, nodes[X.spectra].shape);
    const energy = await cachedArray(`${base}/${X.energy}`, nodes[X.energy].shape);
    if (finiteValues(spectra).length) {
      draw(
        "plot-spectra",
        spectra.map((s, k) => ({ x: energy, y: s, name: `particle ${k + 1}`, mode: "lines" })),
        plotLayout("energy (eV)", "normalised absorbance")
      );
    } else {
      setNote("plot-spectra", NO_SPECTRA);
    }
  } else {
    setNote("plot-spectra", "computed when the scan completes");
  }
  const dispNode = nodes[X.deformation_displacement];
  if (dispNode && dispNode.shape) {
    const disp = await cachedArray(`${base}/${X.deformation_displacement}`, dispNode.shape);
    state.series.scans = disp.length ? disp[0].length : 0;
    draw(
      "plot-series",
      disp.map((track, k) => ({
        x: track.map((_p, i) => i + 1),
        y: track.map((p) => (p[0] === null ? null : Math.hypot(p[0], p[1]) * s)),
        name: `particle ${k + 1}`,
        mode: "lines+markers",
      })),
      plotLayout("scan in the series", `displacement from scan 1 (${u})`, { xaxis: { title: { text: "scan in the series" }, dtick: 1 } })
    );
  } else {
    setNote("plot-series", run.series ? "computed after each scan of the series" : "this scan is not part of an operando series");
  }
}

async function renderLatestFrame(run, nodes, n, shifts, keyHint, length) {
  if (n === 0) {
    setNote("plot-frame", "waiting for the first analysed frame");
    return;
  }
  const X = layout.xanes;
  const rawBase = `${layout.containers.raw}/${run.uid}/primary`;
  const primary = await children(rawBase);
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
  const frame = await cachedArray(`${rawBase}/${key}`, [i], `${i},::${step},::${step}`);
  const sc = length.scale;
  const traces = [heat(frame, step * sc)];
  if (nodes[X.labels] && nodes[X.labels].shape) {
    const cacheKey = `outlines|${run.uid}`;
    if (!cache.has(cacheKey)) {
      const labels = await readArray(`${layout.containers.analysis}/${run.uid}/${X.pipeline}/${X.labels}`);
      cache.set(cacheKey, outlines(labels));
    }
    const ids = { x: [], y: [], text: [] };
    for (const [label, [rows, cols]] of Object.entries(cache.get(cacheKey))) {
      const k = Number(label) - 1;
      const s = shifts && shifts[k] && shifts[k][i] && shifts[k][i][0] !== null ? shifts[k][i] : [0, 0];
      traces.push({
        type: "scatter",
        mode: "markers",
        x: cols.map((c) => (c + s[1]) * sc),
        y: rows.map((r) => (r + s[0]) * sc),
        marker: { size: 2, color: "#ff5722" },
        hoverinfo: "skip",
        name: `particle ${label}`,
      });
      ids.x.push((cols.reduce((a, b) => a + b, 0) / cols.length + s[1]) * sc);
      ids.y.push((rows.reduce((a, b) => a + b, 0) / rows.length + s[0]) * sc);
      ids.text.push(String(label));
    }
    traces.push({ type: "scatter", mode: "text", ...ids, textfont: { color: "#0d47a1", size: 15, family: "sans-serif" }, name: "ids" });
  }
  draw("plot-frame", traces, mapLayout(length, { title: { text: `frame ${i}`, font: { size: 12 } } }));
  state.frameShown = i;
}
