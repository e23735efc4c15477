// The figures the analysis writes for the papers (analysis/<uid>/<pipeline>/figures/<name>,
// RGB uint8 arrays), shown as written: the raw bytes are read from Tiled and drawn as they are.
// (Tiled's own image/png rendering stretches every array's 1st-99th percentile to 0-255, which
// made the figures darker and harsher than the PNG files.) Listed again only when a pipeline
// status of the run changes (figures are written before a pipeline says "complete"), not on
// every frame.
import { TiledDown, apiBytes, children } from "../tiled.js";
import { el } from "../dom.js";
import { layout, state } from "../state.js";

export function buildFigures(grid) {
  const div = el("div", { className: "card figures", id: "card-figures" });
  div.append(
    el("h3", {}, "Figures written by the analysis"),
    el("div", { id: "figure-notes" }),
    el("div", { id: "figures" })
  );
  div.lastChild.append(el("p", { className: "muted" }, "written when a pipeline finishes"));
  grid.append(div);
}

// Pipelines of the run whose layout has a figures container, in the run's order.
function figurePipelines(run) {
  return Object.keys(run.pipelines).filter((name) => layout[name] && layout[name].figures);
}

// RGBA pixels (for ImageData) of row-major RGB bytes of an (height, width, 3) image; null when
// the byte count does not match the shape.
export function rgbToRgba(bytes, height, width) {
  if (bytes.length !== height * width * 3) return null;
  const out = new Uint8ClampedArray(height * width * 4);
  for (let i = 0, j = 0; i < bytes.length; i += 3, j += 4) {
    out[j] = bytes[i];
    out[j + 1] = bytes[i + 1];
    out[j + 2] = bytes[i + 2];
    out[j + 3] = 255;
  }
  return out;
}

let shownUrls = []; // object URLs of the figures on screen, released when they are replaced

// An object URL of the figure at `path` as written (PNG of the raw RGB bytes).
async function figureUrl(path, shape) {
  if (!shape || shape.length !== 3 || shape[2] !== 3) {
    throw new Error(`figure ${path} is not an RGB image (shape ${JSON.stringify(shape)})`);
  }
  const [height, width] = shape;
  const bytes = new Uint8Array(await apiBytes(`array/full/${path}`, { format: "application/octet-stream" }));
  const rgba = rgbToRgba(bytes, height, width);
  if (rgba === null) throw new Error(`figure ${path}: ${bytes.length} bytes for shape ${shape}`);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return URL.createObjectURL(blob);
}

// What a run asked for that was not computed: the XANES chemistry (start document
// lcf_references / xanes_clusters / lcf_sum_to_one) refused when the run started, or failed
// after the scan. [{pipeline, option, error, request, when}] from the pipelines' metadata.
export function chemistryProblems(run) {
  const key = layout.xanes.chemistry;
  const out = [];
  for (const [pipeline, p] of Object.entries(run.pipelines)) {
    const chem = p.metadata && p.metadata[key];
    if (!chem || chem.status !== layout.status.failed) continue;
    const refused = chem.request !== undefined; // refused at the start, before any frame
    out.push({
      pipeline,
      option: chem.option || null,
      error: chem.error || "(no message)",
      request: refused ? chem.request : null,
      when: refused ? "refused" : "failed",
    });
  }
  return out;
}

// A request as one line: "lcf_references = {pristine: NCA.csv, charged: inline (30 rows)}".
export function describeRequest(request) {
  const value = (v) =>
    v !== null && typeof v === "object"
      ? `{${Object.entries(v).map(([k, x]) => `${k}: ${value(x)}`).join(", ")}}`
      : String(v);
  return Object.entries(request || {}).map(([k, v]) => `${k} = ${value(v)}`).join("; ");
}

function renderNotes(run) {
  const notes = document.getElementById("figure-notes");
  if (!notes) return;
  const problems = chemistryProblems(run);
  const text = JSON.stringify(problems);
  state.chemistryProblems = problems;
  if (notes.dataset.shown === text) return;
  notes.dataset.shown = text;
  notes.replaceChildren(
    ...problems.map((p) => {
      const box = el("div", { className: "note chemistry-note" });
      box.dataset.pipeline = p.pipeline;
      box.dataset.when = p.when;
      const head =
        p.when === "refused"
          ? `${p.pipeline} chemistry (LCF / clusters) not computed: the run's request was refused when it started. `
          : `${p.pipeline} chemistry (LCF / clusters) failed after the scan. `;
      box.append(el("b", {}, head), el("span", { className: "chemistry-error" }, p.error));
      if (p.request) {
        box.append(el("div", { className: "muted chemistry-request" }, `asked: ${describeRequest(p.request)}`));
      }
      box.append(
        el("div", { className: "muted" }, "The rest of the analysis goes on; the figures below are those it wrote.")
      );
      return box;
    })
  );
}

export async function renderFigures(run) {
  const box = document.getElementById("figures");
  if (!box) return;
  renderNotes(run);
  const statuses = JSON.stringify(Object.entries(run.pipelines).map(([name, p]) => [name, p.status]));
  if (box.dataset.statuses === statuses) return;
  const shown = [];
  const items = [];
  const urls = [];
  try {
    for (const pipeline of figurePipelines(run)) {
      const path = `${layout.containers.analysis}/${run.uid}/${pipeline}/${layout[pipeline].figures}`;
      const figures = (await children(path)) || {};
      for (const name of Object.keys(figures).sort()) {
        const figure = el("figure");
        figure.dataset.pipeline = pipeline;
        figure.dataset.name = name;
        let img;
        try {
          const url = await figureUrl(`${path}/${name}`, figures[name].shape);
          urls.push(url);
          img = el("img", { src: url, alt: `${pipeline}: ${name}` });
        } catch (err) {
          if (err instanceof TiledDown) throw err; // listed again when Tiled is back
          img = el("p", { className: "muted" }, `cannot be shown: ${err.message}`);
        }
        figure.append(img, el("figcaption", {}, `${pipeline}: ${name}`));
        items.push(figure);
        shown.push({ pipeline, name });
      }
    }
  } catch (err) {
    urls.forEach((u) => URL.revokeObjectURL(u));
    throw err;
  }
  if (!box.isConnected || state.selected !== run.uid) {
    // another run was selected while the figures were read: this card is gone
    urls.forEach((u) => URL.revokeObjectURL(u));
    return;
  }
  shownUrls.forEach((u) => URL.revokeObjectURL(u));
  shownUrls = urls;
  if (items.length) box.replaceChildren(...items);
  else box.replaceChildren(el("p", { className: "muted" }, "written when a pipeline finishes"));
  box.dataset.statuses = statuses; // only after every container was read (Tiled may be down)
  state.figures = shown;
  state.figureListings += 1;
}
