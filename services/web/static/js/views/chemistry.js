// XANES chemistry of a run (start document lcf_references / xanes_clusters), read from the
// arrays and tables the analysis wrote to Tiled (analysis/<uid>/xanes/...): the per-pixel LCF
// fraction of each reference and the R-factor map (one map at a time, chosen in a list), the
// cluster map with its legend and the cluster spectra, and, for a scan of an operando series,
// the state-of-charge trajectory (mean +- sd per particle against time). Hovering a map shows
// the pixel's position in the run's length unit and its value. Cards stay hidden for a run that
// asked for no chemistry; a refused or failed request is said in the figures card.
import { cachedArray, cached, children, readTable } from "../tiled.js";
import { card, draw, el, heat, imageLayout, plotLayout, setNote } from "../dom.js";
import { downsampleStep } from "../images.js";
import { scheduleRefresh } from "../scheduler.js";
import { layout, state } from "../state.js";
import { lengthScale } from "../units.js";

const CARDS = ["lcf", "clusters", "cluster-spectra", "trajectory"];

// matplotlib's tab10, as the analysis' clusters figure colours its clusters
export const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

// What the user chose, per run: the LCF layer and the trajectory quantity.
const chosen = { uid: null, layer: null, quantity: null };

export function buildChemistry(grid) {
  card(grid, "lcf", "LCF per pixel: fraction of each reference, R-factor of the fit", (div) =>
    div.append(
      el("label", { className: "muted" }, "map "),
      el("select", { id: "lcf-layer" })
    )
  );
  card(grid, "clusters", "Clusters of the per-pixel spectra (PCA + k-means)");
  card(grid, "cluster-spectra", "Mean normalised spectrum of each cluster");
  card(grid, "trajectory", "State of charge across the series: mean +- sd per particle", (div) =>
    div.append(
      el("label", { className: "muted" }, "quantity "),
      el("select", { id: "trajectory-quantity" })
    )
  );
  for (const id of ["lcf-layer", "trajectory-quantity"]) {
    document.getElementById(id).addEventListener("change", (e) => {
      chosen[id === "lcf-layer" ? "layer" : "quantity"] = e.target.value;
      scheduleRefresh(0);
    });
  }
  showCards(false);
}

function showCards(visible, only) {
  for (const id of CARDS) {
    const c = document.getElementById(`card-${id}`);
    if (c) c.hidden = !visible || (only ? !only.includes(id) : false);
  }
}

// The layers of the LCF card: fraction_<name> of every reference, then the R-factor.
export function lcfLayers(names) {
  return [...names.map((n) => ({ key: `fraction_${n}`, label: `fraction of ${n}`, reference: n })), { key: "r_factor", label: "R-factor", reference: null }];
}

// A stepped Plotly colorscale for integer values 0..colors.length-1 drawn with
// zmin = -0.5 and zmax = colors.length - 0.5: each value has one colour, no blending.
export function discreteColorscale(colors) {
  const k = colors.length;
  const out = [];
  colors.forEach((c, i) => {
    out.push([i / k, c], [(i + 1) / k, c]);
  });
  return out;
}

// What a trajectory quantity is called and its unit: edge_energy_eV -> "edge energy (eV)".
export function quantityLabel(name) {
  if (name.startsWith("fraction_")) return `fraction of ${name.slice("fraction_".length)}`;
  if (name.endsWith("_eV")) return `${name.slice(0, -3).replaceAll("_", " ")} (eV)`;
  return name.replaceAll("_", " ");
}

function setOptions(select, options, value) {
  const text = JSON.stringify(options);
  if (select.dataset.options !== text) {
    select.dataset.options = text;
    select.replaceChildren(...options.map((o) => el("option", { value: o.key }, o.label)));
  }
  select.value = value;
}

function mapLayout(length, extra) {
  return imageLayout({
    margin: { l: 50, r: 10, t: 24, b: 40 },
    xaxis: { constrain: "domain", title: { text: `x (${length.unit})` } },
    yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain", title: { text: `y (${length.unit})` } },
    ...(extra || {}),
  });
}

// Hover text of a map: the pixel's place in the run's unit and its value.
function hover(length, value) {
  const f = length.unit === "um" ? ":.3g" : ":.0f";
  return `x %{x${f}} ${length.unit}, y %{y${f}} ${length.unit}<br>${value}<extra></extra>`;
}

export async function renderChemistry(run) {
  const X = layout.xanes;
  const xanes = run.pipelines[X.pipeline];
  const md = (xanes && xanes.metadata) || {};
  const chem = md[X.chemistry];
  if (chosen.uid !== run.uid) Object.assign(chosen, { uid: run.uid, layer: null, quantity: null });
  const asked = chem && chem.status !== layout.status.failed;
  if (!asked) {
    state.chemistry = null;
    showCards(false);
    return;
  }
  const base = `${layout.containers.analysis}/${run.uid}/${X.pipeline}`;
  const nodes = (await children(base)) || {};
  const length = lengthScale(md.pixel_size_um);
  const lcf = Boolean(chem.lcf || nodes[X.lcf_fraction_map]);
  const clusters = Boolean(chem.clusters || nodes[X.cluster_labels]);
  const trajectory = Boolean(nodes[X.soc_trajectory]);
  // shown before drawing: Plotly sizes a plot by its (visible) card
  showCards(true, [
    ...(lcf ? ["lcf"] : []),
    ...(clusters ? ["clusters", "cluster-spectra"] : []),
    ...(trajectory ? ["trajectory"] : []),
  ]);
  state.chemistry = {
    lcf: lcf ? await renderLcf(base, nodes, chem, length) : null,
    clusters: clusters ? await renderClusters(run, base, nodes, chem, length) : 0,
    trajectory: trajectory ? await renderTrajectory(run, base) : null,
  };
}

async function renderLcf(base, nodes, chem, length) {
  const X = layout.xanes;
  const fractions = nodes[X.lcf_fraction_map];
  const rNode = nodes[X.lcf_r_factor_map];
  if (!fractions || !fractions.shape || !rNode) {
    setNote("plot-lcf", (chem.lcf && chem.lcf.warning) || "computed when the scan completes");
    return null;
  }
  const names = (chem.lcf && chem.lcf.reference_names) || fractions.metadata.names || [];
  const layers = lcfLayers(names);
  if (!layers.some((l) => l.key === chosen.layer)) chosen.layer = layers[layers.length > 1 ? layers.length - 2 : 0].key;
  const layer = layers.find((l) => l.key === chosen.layer);
  setOptions(document.getElementById("lcf-layer"), layers, layer.key);
  const shape = fractions.shape; // (R, H, W)
  const step = downsampleStep(shape);
  let z;
  let trace;
  if (layer.reference === null) {
    z = await cachedArray(`${base}/${X.lcf_r_factor_map}`, rNode.shape, `::${step},::${step}`);
    trace = {
      colorscale: "YlOrRd",
      reversescale: true,
      zmin: 0,
      colorbar: { title: { text: "R-factor" } },
      hovertemplate: hover(length, "R-factor %{z:.3g}"),
    };
  } else {
    const k = names.indexOf(layer.reference);
    z = await cachedArray(`${base}/${X.lcf_fraction_map}`, shape, `${k},::${step},::${step}`);
    trace = {
      colorscale: "Viridis",
      reversescale: false,
      zmin: 0,
      zmax: 1,
      colorbar: { title: { text: `fraction of ${layer.reference}` } },
      hovertemplate: hover(length, `fraction of ${layer.reference} %{z:.3f}`),
    };
  }
  const median = chem.lcf && chem.lcf.r_factor_median;
  const title = layer.reference === null && typeof median === "number" ? `R-factor, median ${median.toPrecision(2)}` : layer.label;
  draw(
    "plot-lcf",
    [heat(z, step * length.scale, { showscale: true, hoverongaps: false, ...trace })],
    mapLayout(length, { title: { text: title, font: { size: 12 } } })
  );
  return { layer: layer.key, layers: layers.map((l) => l.key), step };
}

async function renderClusters(run, base, nodes, chem, length) {
  const X = layout.xanes;
  const labelsNode = nodes[X.cluster_labels];
  if (!labelsNode || !labelsNode.shape) {
    const text = (chem.clusters && chem.clusters.warning) || "computed when the scan completes";
    setNote("plot-clusters", text);
    setNote("plot-cluster-spectra", text);
    return 0;
  }
  const step = downsampleStep(labelsNode.shape);
  const labels = await cachedArray(`${base}/${X.cluster_labels}`, labelsNode.shape, `::${step},::${step}`);
  const table = nodes[X.clusters] ? await cached(`clusters|${run.uid}`, () => readTable(`${base}/${X.clusters}`)) : null;
  const spectraNode = nodes[X.cluster_spectra];
  const k = (chem.clusters && chem.clusters.n_clusters) || (spectraNode && spectraNode.shape ? spectraNode.shape[0] : 0);
  const colors = [...Array(k).keys()].map((c) => TAB10[c % TAB10.length]);
  const sizes = table && table.pixels ? table.pixels : [];
  const name = (c) => `cluster ${c}` + (sizes[c] !== undefined ? ` (${sizes[c]} px)` : "");
  draw(
    "plot-clusters",
    [
      heat(
        labels.map((row) => row.map((v) => (v === null || v < 0 ? null : v))),
        step * length.scale,
        {
          colorscale: discreteColorscale(colors),
          reversescale: false,
          zmin: -0.5,
          zmax: k - 0.5,
          showscale: true,
          hoverongaps: false,
          colorbar: { title: { text: "cluster" }, tickvals: [...Array(k).keys()], ticktext: [...Array(k).keys()].map(name) },
          hovertemplate: hover(length, "cluster %{z}"),
        }
      ),
    ],
    mapLayout(length)
  );
  if (spectraNode && spectraNode.shape && nodes[X.energy]) {
    const spectra = await cachedArray(`${base}/${X.cluster_spectra}`, spectraNode.shape);
    const energy = await cachedArray(`${base}/${X.energy}`, nodes[X.energy].shape);
    const order = energy.map((_e, i) => i).sort((a, b) => energy[a] - energy[b]);
    draw(
      "plot-cluster-spectra",
      spectra.map((s, c) => ({
        x: order.map((i) => energy[i]),
        y: order.map((i) => s[i]),
        name: name(c),
        mode: "lines",
        line: { color: colors[c] },
        hovertemplate: `${name(c)}<br>%{x:.1f} eV: %{y:.3f}<extra></extra>`,
      })),
      plotLayout("energy (eV)", "normalised absorbance", { showlegend: true, legend: { x: 0, y: 1 } })
    );
  }
  return k;
}

async function renderTrajectory(run, base) {
  const X = layout.xanes;
  // written once, after the scan (every scan of the series so far; a later scan of the series
  // writes its own run's table)
  const table = await cached(`trajectory|${run.uid}`, () => readTable(`${base}/${X.soc_trajectory}`));
  const quantities = Object.keys(table)
    .filter((c) => c.endsWith("_mean"))
    .map((c) => c.slice(0, -"_mean".length));
  if (!quantities.length) {
    setNote("plot-trajectory", "no per-particle quantity in the trajectory table");
    return null;
  }
  if (!quantities.includes(chosen.quantity)) {
    chosen.quantity = quantities.find((q) => q.startsWith("fraction_")) || quantities[0];
  }
  const q = chosen.quantity;
  setOptions(
    document.getElementById("trajectory-quantity"),
    quantities.map((k) => ({ key: k, label: quantityLabel(k) })),
    q
  );
  const n = table.particle.length;
  const elapsed = table.elapsed_s || [];
  const timed = elapsed.length === n && elapsed.every((v) => typeof v === "number" && Number.isFinite(v));
  const x = (i) => (timed ? elapsed[i] / 60 : table.scan[i]);
  const particles = [...new Set(table.particle)].sort((a, b) => a - b);
  // the table's particle is a 0-based track id; the XANES view's plots number particles
  // from 1 (label order), so the same particle has the same number everywhere
  const traces = particles.map((p) => {
    const rows = [...Array(n).keys()].filter((i) => table.particle[i] === p).sort((a, b) => table.scan[a] - table.scan[b]);
    return {
      x: rows.map(x),
      y: rows.map((i) => table[`${q}_mean`][i]),
      error_y: { type: "data", array: rows.map((i) => table[`${q}_sd`][i]), visible: true },
      customdata: rows.map((i) => table[`${q}_sd`][i]),
      mode: "lines+markers",
      name: `particle ${p + 1}`,
      hovertemplate: `particle ${p + 1}<br>${quantityLabel(q)}: %{y:.4g} +- %{customdata:.2g}<extra></extra>`,
    };
  });
  draw(
    "plot-trajectory",
    traces,
    plotLayout(timed ? "time since the first scan (min)" : "scan in the series (time stamps unknown)", quantityLabel(q), {
      showlegend: true,
    })
  );
  return { quantity: q, quantities, particles: particles.length, scans: new Set(table.scan).size };
}
