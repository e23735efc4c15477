// DOM and Plotly helpers shared by the views.

export const PLOT_CONFIG = { responsive: true, displaylogo: false };

export function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  if (text !== undefined) e.textContent = text;
  return e;
}

export function main() {
  return document.getElementById("main");
}

export function badge(text, cls, title) {
  const span = el("span", { className: `badge ${cls || text}` }, text);
  if (title) span.title = title;
  return span;
}

// A card with a title and a plot div (id plot-<id>); extra(div) adds controls above the plot.
export function card(parent, id, title, extra) {
  const div = el("div", { className: "card", id: `card-${id}` });
  div.append(el("h3", {}, title));
  if (extra) extra(div);
  const plot = el("div", { className: "plot", id: `plot-${id}` });
  div.append(plot);
  parent.append(div);
  return plot;
}

// A "computed when…" note is replaced by the plot once there is data.
export function draw(plotId, traces, layout) {
  const div = document.getElementById(plotId);
  if (!div) return null;
  if (div.dataset.note) {
    delete div.dataset.note;
    div.replaceChildren();
  }
  return window.Plotly.react(div, traces, layout, PLOT_CONFIG);
}

export function setNote(plotId, text) {
  const div = document.getElementById(plotId);
  if (!div || div.dataset.note === text || div.data) return;
  div.dataset.note = text;
  div.replaceChildren(el("p", { className: "muted" }, text));
}

export function heat(z, step, extra) {
  return Object.assign(
    { type: "heatmap", z, x0: 0, dx: step, y0: 0, dy: step, colorscale: "Greys", reversescale: true, showscale: false },
    extra || {}
  );
}

// Plotly keeps (and mutates) the layout object it is given: every plot gets a fresh one.
export function imageLayout(extra) {
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

export function plotLayout(xlabel, ylabel, extra) {
  return Object.assign(
    { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: xlabel } }, yaxis: { title: { text: ylabel } } },
    extra || {}
  );
}
