// Pure helpers for images read from Tiled (nested arrays as Tiled's JSON gives them).

// Step that brings the larger of the last two axes to at most 256 samples.
export function downsampleStep(shape) {
  return Math.max(1, Math.ceil(Math.max(shape[shape.length - 1], shape[shape.length - 2]) / 256));
}

// Boundary pixels of every label of a 2-D label image: {label: [[row...], [col...]]}.
export function outlines(labels) {
  const out = {};
  const h = labels.length;
  const w = h ? labels[0].length : 0;
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

// Finite values of a nested array, flattened (NaN arrives as null in JSON: unknown, left out).
export function finiteValues(nested) {
  return nested.flat(Infinity).filter((v) => typeof v === "number" && Number.isFinite(v));
}
