// The figures the analysis writes for the papers (analysis/<uid>/<pipeline>/figures/<name>,
// RGB arrays), shown as PNG images Tiled renders. Listed again only when a pipeline status of
// the run changes (figures are written before a pipeline says "complete"), not on every frame.
import { apiUrl, children } from "../tiled.js";
import { el } from "../dom.js";
import { layout, state } from "../state.js";

export function buildFigures(grid) {
  const div = el("div", { className: "card figures", id: "card-figures" });
  div.append(el("h3", {}, "Figures written by the analysis"), el("div", { id: "figures" }));
  div.lastChild.append(el("p", { className: "muted" }, "written when a pipeline finishes"));
  grid.append(div);
}

// Pipelines of the run whose layout has a figures container, in the run's order.
function figurePipelines(run) {
  return Object.keys(run.pipelines).filter((name) => layout[name] && layout[name].figures);
}

export async function renderFigures(run) {
  const box = document.getElementById("figures");
  if (!box) return;
  const statuses = JSON.stringify(Object.entries(run.pipelines).map(([name, p]) => [name, p.status]));
  if (box.dataset.statuses === statuses) return;
  const shown = [];
  const items = [];
  for (const pipeline of figurePipelines(run)) {
    const path = `${layout.containers.analysis}/${run.uid}/${pipeline}/${layout[pipeline].figures}`;
    const figures = (await children(path)) || {};
    for (const name of Object.keys(figures).sort()) {
      const img = el("img", { src: apiUrl(`array/full/${path}/${name}`, { format: "image/png" }).href, alt: `${pipeline}: ${name}` });
      const figure = el("figure");
      figure.dataset.pipeline = pipeline;
      figure.dataset.name = name;
      figure.append(img, el("figcaption", {}, `${pipeline}: ${name}`));
      items.push(figure);
      shown.push({ pipeline, name });
    }
  }
  if (items.length) box.replaceChildren(...items);
  else box.replaceChildren(el("p", { className: "muted" }, "written when a pipeline finishes"));
  box.dataset.statuses = statuses; // only after every container was read (Tiled may be down)
  state.figures = shown;
  state.figureListings += 1;
}
