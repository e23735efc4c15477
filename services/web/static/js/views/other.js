// Runs no live view knows: a link to Tiled's own UI.
import { el } from "../dom.js";
import { config, layout } from "../state.js";

export function buildOther(_grid) {}

export async function renderOther(run) {
  const grid = document.getElementById("grid");
  if (grid.childElementCount) return;
  grid.append(
    el("p", { className: "muted" }, "No live view for this kind of run; browse it in Tiled's own UI:"),
    el("a", { href: `${config.tiled_url}/ui/browse/${layout.containers.raw}/${run.uid}`, target: "_blank" }, "open in Tiled")
  );
}
