// Lengths as a person reads them: um when the analysis states the pixel / voxel size, px when
// it does not (never a made-up um). The analysis writes the size it uses into its metadata
// (cracks / particles: voxel_size_um; xanes: pixel_size_um) from the first frame or slice on.

// {unit, scale}: multiply a length in px by scale to get it in unit.
export function lengthScale(sizeUm) {
  return typeof sizeUm === "number" && Number.isFinite(sizeUm) && sizeUm > 0
    ? { unit: "um", scale: sizeUm }
    : { unit: "px", scale: 1 };
}

// The size the run's analysis states: the first pipeline (in `names` order) whose metadata
// has `key`; null when none states one.
export function statedSize(run, names, key) {
  for (const name of names) {
    const p = run.pipelines[name];
    const v = p && p.metadata ? p.metadata[key] : undefined;
    if (v !== undefined && v !== null) return v;
  }
  return null;
}

// "24 px" or "24 px (12 um)": a window side as the paper states it, in um when known.
export function windowText(px, length) {
  if (!px) return "moving";
  const um = length.unit === "um" ? ` (${+(px * length.scale).toPrecision(3)} um)` : "";
  return `${px} x ${px} px${um}`;
}

// How the particle table shows a stored column: {header, scale} (scale multiplies the stored
// value). The table stores lengths in voxels (equivalent_diameter_px, centroid_z/y/x), areas in
// voxel faces (surface_area_px2) and volumes in voxels; with a known voxel size they are shown
// in um, um² and um³, else in px, px² and voxels, never "um". Other columns keep their name.
export function particleColumn(column, length, columns) {
  const um = length.unit === "um";
  const s = length.scale;
  const c = columns;
  const lengths = {
    [c.equivalent_diameter_px]: "equivalent diameter",
    [c.centroid_z]: "centroid z",
    [c.centroid_y]: "centroid y",
    [c.centroid_x]: "centroid x",
  };
  if (column in lengths) return { header: `${lengths[column]} (${um ? "um" : "px"})`, scale: um ? s : 1 };
  if (column === c.surface_area_px2) return { header: `surface area (${um ? "um²" : "px²"})`, scale: um ? s * s : 1 };
  if (column === c.volume_voxels) return { header: `volume (${um ? "um³" : "voxels"})`, scale: um ? s * s * s : 1 };
  return { header: column, scale: 1 };
}
