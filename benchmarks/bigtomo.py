"""A tomogram larger than a worker's memory, slab by slab on a Dask LocalCluster.

``python -m benchmarks.bigtomo --size 1024`` writes the projections of a ``size^3`` cathode
phantom to an HDF5 file slab by slab (never the whole scan in memory), then runs
reconstruction, crack map with quantification, and particle instances, measurements, flaw
calls and statistics on a LocalCluster whose workers each have ``--cap-mb`` (2048) of
memory; it reports the time of each stage and the peak resident memory of every worker
(``getrusage`` in the worker processes; a worker restarted by its nanny would be a new
process and fails the run).

``--compare`` (default for sizes up to 256) also runs the in-memory pipelines on the same
file and reports whether the results are identical: reconstruction, crack and particle masks,
density maps and every quantification number, particle labels up to relabelling and the
particle table (the degree of detachment is not computed slab by slab).

Simulating ``--angles`` projections of a genuine 1024^3 phantom takes long, so the phantom is
made of ``--distinct`` different cathode slabs of ``--gen-rows`` rows, repeated along z (each
detector row sees one slice in parallel-beam geometry, so a slab's projections are its rows'
projections); every slice still costs what a genuine one costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.bigtomo")


def write_projections(
    path: Path, size: int, n_angles: int, gen_rows: int, distinct: int, seed: int = 7
) -> np.ndarray:
    """Projections, flats and darks of a ``size^3`` phantom written slab by slab."""
    import h5py

    from synthetic.cathode import make_cathode_volume
    from synthetic.scan import simulate_scan

    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    pieces: dict[int, Any] = {}
    with h5py.File(path, "w") as h5:
        data = h5.create_dataset(
            "/entry/data/data", (n_angles, size, size), dtype=np.uint16, chunks=(1, 16, size)
        )
        h5["/entry/data/rotation_angle"] = angles
        flat = dark = None
        for r0 in range(0, size, gen_rows):
            rows = min(gen_rows, size - r0)
            key = (r0 // gen_rows) % distinct
            if key not in pieces:
                truth = make_cathode_volume((gen_rows, size, size), seed=seed + key)
                pieces[key] = simulate_scan(truth.attenuation, angles, seed=seed + 100 + key)
            frames = pieces[key]
            data[:, r0 : r0 + rows] = frames.projections[:, :rows]
            if flat is None:
                flat = h5.create_dataset(
                    "/entry/data/flat", (frames.flat.shape[0], size, size), dtype=np.uint16
                )
                dark = h5.create_dataset(
                    "/entry/data/dark", (frames.dark.shape[0], size, size), dtype=np.uint16
                )
            flat[:, r0 : r0 + rows] = frames.flat[:, :rows]
            assert dark is not None
            dark[:, r0 : r0 + rows] = frames.dark[:, :rows]
    return angles


class _StageProgress:
    """Prints a stage's slices done every tenth of the volume (flushed: a long run that is
    stopped still shows how far it got)."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done, self.shown = stage, total, 0, 0
        self.t0 = time.perf_counter()

    def __call__(self, slices: int) -> None:
        self.done += slices
        if self.done * 10 // self.total > self.shown or self.done == self.total:
            self.shown = self.done * 10 // self.total
            elapsed = time.perf_counter() - self.t0
            print(
                f"    {self.stage}: {self.done}/{self.total} slices, {elapsed:.0f} s",
                flush=True,
            )


def _stage_done(stage: str, seconds: float, cpu: float) -> None:
    print(f"  done: {stage} {seconds:.1f} s (workers' CPU {cpu:.1f} s)", flush=True)


def run_slabs(
    path: Path, angles: np.ndarray, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The three stages on a LocalCluster; times, worker peaks and the results' stores."""
    from pipelines.cracks.segment import CrackParams
    from pipelines.particles.analyze import ParticleParams
    from pipelines.particles.stats import particle_statistics
    from pipelines.tomo.fbp import ReconParams
    from services.core.settings import DaskSettings
    from services.slabs.cluster import (
        open_client,
        worker_cpu_seconds,
        worker_ids,
        worker_peak_memory_mb,
    )
    from services.slabs.tomo import (
        ProjectionFile,
        analyze_particles_slabs,
        map_cracks_slabs,
        reconstruct_slabs,
    )

    settings = DaskSettings(n_workers=args.workers, memory_limit_mb=args.cap_mb)
    source = ProjectionFile(str(path), flat="/entry/data/flat", dark="/entry/data/dark")
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with open_client(settings) as client:
        pids = worker_ids(client)
        t0 = time.perf_counter()
        c0 = worker_cpu_seconds(client)
        recon = reconstruct_slabs(
            client,
            source,
            angles,
            ReconParams(),
            work,
            memory_limit_mb=args.cap_mb,
            rows=args.slab,
            progress=_StageProgress("reconstruction", args.size),
        )
        seconds["reconstruction"] = time.perf_counter() - t0
        cpu["reconstruction"] = worker_cpu_seconds(client) - c0
        _stage_done("reconstruction", seconds["reconstruction"], cpu["reconstruction"])
        peak_recon = worker_peak_memory_mb(client)
        if args.stages == "reconstruction":
            return {
                "seconds": seconds,
                "cpu": cpu,
                "peak_mb": peak_recon,
                "peak_mb_after_reconstruction": peak_recon,
                "restarted": worker_ids(client) != pids,
                "recon": recon,
            }
        t0 = time.perf_counter()
        c0 = worker_cpu_seconds(client)
        cracks = map_cracks_slabs(
            client,
            recon.volume,
            recon.shape,
            CrackParams(),
            work,
            memory_limit_mb=args.cap_mb,
            slab=args.slab,
            sample=recon.sample,
            progress=_StageProgress("crack map", recon.shape[0]),
        )
        seconds["cracks_and_quantification"] = time.perf_counter() - t0
        cpu["cracks_and_quantification"] = worker_cpu_seconds(client) - c0
        _stage_done(
            "cracks_and_quantification",
            seconds["cracks_and_quantification"],
            cpu["cracks_and_quantification"],
        )
        t0 = time.perf_counter()
        c0 = worker_cpu_seconds(client)
        particles = analyze_particles_slabs(
            client,
            recon.volume,
            recon.shape,
            ParticleParams(),
            work,
            memory_limit_mb=args.cap_mb,
            crack_mask=cracks.crack_mask,
            halo=args.halo,
            slab=args.slab,
            levels=cracks.levels,
            progress=_StageProgress("particle instances", recon.shape[0]),
        )
        print(
            "  particle stage: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in particles.seconds.items()),
            flush=True,
        )
        stats = particle_statistics(particles.table, depth=recon.shape[0])
        seconds["particles_and_statistics"] = time.perf_counter() - t0
        cpu["particles_and_statistics"] = worker_cpu_seconds(client) - c0
        peaks = worker_peak_memory_mb(client)
        restarted = worker_ids(client) != pids
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": peaks,
        "peak_mb_after_reconstruction": peak_recon,
        "restarted": restarted,
        "recon": recon,
        "cracks": cracks,
        "particles": particles,
        "stats": stats,
    }


def _read(ref: Any) -> np.ndarray:
    from services.slabs.stores import open_volume

    with open_volume(ref) as array:
        return np.asarray(array[:])


def compare(path: Path, angles: np.ndarray, slabs: dict[str, Any]) -> dict[str, Any]:
    """The in-memory pipelines on the same file, and what differs."""
    import h5py

    from pipelines.cracks.segment import map_cracks
    from pipelines.particles.analyze import ParticleParams, analyze_particles
    from pipelines.tomo.fbp import ReconParams, reconstruct

    with h5py.File(path, "r") as h5:
        projections = h5["/entry/data/data"][()]
        flat, dark = h5["/entry/data/flat"][()], h5["/entry/data/dark"][()]
    t0 = time.perf_counter()
    volume = reconstruct(projections, angles, flat=flat, dark=dark, params=ReconParams())
    del projections
    cracks = map_cracks(volume)
    particles = analyze_particles(volume, crack_mask=cracks.crack_mask, params=ParticleParams())
    seconds = time.perf_counter() - t0
    q, sq = cracks.quantification, slabs["cracks"]
    same: dict[str, bool] = {
        "reconstruction": bool(np.array_equal(_read(slabs["recon"].volume), volume)),
        "crack_mask": bool(np.array_equal(_read(sq.crack_mask), cracks.crack_mask)),
        "particle_mask": bool(np.array_equal(_read(sq.particle_mask), cracks.particle_mask)),
        "damage_density": bool(np.array_equal(_read(sq.damage_density), q.damage_density)),
        "particle_density": bool(np.array_equal(_read(sq.particle_density), q.particle_density)),
        "volume_fit": sq.volume_fit == q.volume_fit,
    }
    for name in ("depth_profile", "damage_histogram", "histogram_edges", "layer_pearson_r"):
        same[name] = bool(np.array_equal(getattr(sq, name), getattr(q, name), equal_nan=True))
    labels = _read(slabs["particles"].labels)
    pairs = np.unique(np.stack([particles.labels.ravel(), labels.ravel()]), axis=1)
    one_to_one = len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    same["particle_labels_up_to_relabelling"] = bool(one_to_one)
    table, memory_table = slabs["particles"].table, particles.table
    same["particle_count"] = len(table) == len(memory_table)
    if one_to_one and same["particle_count"]:
        mapping = {int(a): int(b) for a, b in pairs.T}
        row_of = {int(k): i for i, k in enumerate(table["label"])}
        rows = np.array([row_of[mapping[int(k)]] for k in memory_table["label"]])
        for name in ("volume_voxels", "surface_area_px2", "crack_fraction", "flawed"):
            same[f"table.{name}"] = bool(
                np.array_equal(table[name][rows], memory_table[name], equal_nan=True)
            )
    else:
        # how far apart: voxels whose labels do not correspond one to one
        agree = _largest_overlap_share(particles.labels, labels)
        same["voxels_in_matching_particles"] = agree  # type: ignore[assignment]
    return {
        "in_memory_seconds": seconds,
        "identical": same,
        "in_memory_particles": len(memory_table),
    }


def _largest_overlap_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of particle voxels of ``a`` that lie in the ``b`` label overlapping them most."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    fg = pairs[0] > 0
    best: dict[int, int] = {}
    for (x, _), c in zip(pairs[:, fg].T, counts[fg], strict=True):
        best[int(x)] = max(best.get(int(x), 0), int(c))
    return float(sum(best.values()) / max(1, int(np.count_nonzero(a))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic volume")
    parser.add_argument("--angles", type=int, default=None, help="default size * 3 // 4")
    parser.add_argument("--cap-mb", type=float, default=2048.0, help="memory per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slab", type=int, default=None, help="slices per slab (default: fit)")
    parser.add_argument("--halo", type=int, default=24, help="particle context slices")
    parser.add_argument("--gen-rows", type=int, default=32)
    parser.add_argument("--distinct", type=int, default=4)
    parser.add_argument(
        "--compare", action=argparse.BooleanOptionalAction, default=None, help="vs in-memory"
    )
    parser.add_argument(
        "--stages",
        choices=("all", "reconstruction"),
        default="all",
        help="'reconstruction': only the first stage (a quick look at a large size)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the projections and intermediate Zarr volumes go (default: a temporary "
        "directory); removed afterwards either way",
    )
    args = parser.parse_args(argv)
    n_angles = args.angles or max(8, args.size * 3 // 4)
    check = args.compare if args.compare is not None else args.size <= 256
    logging.basicConfig(level=logging.WARNING)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bigtomo-", dir=args.work_dir) as tmp:
        path = Path(tmp) / "projections.h5"
        t0 = time.perf_counter()
        angles = write_projections(path, args.size, n_angles, args.gen_rows, args.distinct)
        t_gen = time.perf_counter() - t0
        print(f"  projections written slab by slab: {t_gen:.1f} s", flush=True)
        work = Path(tmp) / "work"
        work.mkdir()
        result = run_slabs(path, angles, work, args)
        volume_mb = args.size**3 * 4 / 2**20
        print(
            f"bigtomo {args.size}^3 ({volume_mb:.0f} MB per float32 volume), {n_angles} angles, "
            f"{args.workers} workers capped at {args.cap_mb:.0f} MB"
        )
        print(f"  projections written slab by slab: {t_gen:.1f} s")
        for stage, sec in result["seconds"].items():
            print(f"  {stage:28s} {sec:8.1f} s   (workers' CPU {result['cpu'][stage]:8.1f} s)")
        total = sum(result["seconds"].values())
        total_cpu = sum(result["cpu"].values())
        print(f"  {'total':28s} {total:8.1f} s   (workers' CPU {total_cpu:8.1f} s)")
        print(f"  load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
        peaks = result["peak_mb"]
        print(
            "  worker peak memory (MB): "
            + ", ".join(f"{v:.0f}" for v in peaks.values())
            + f"  (cap {args.cap_mb:.0f}; under the cap: {max(peaks.values()) < args.cap_mb}; "
            f"worker restarted: {result['restarted']})"
        )
        report: dict[str, Any] = {
            "size": args.size,
            "angles": n_angles,
            "cap_mb": args.cap_mb,
            "workers": args.workers,
            "seconds": result["seconds"],
            "worker_cpu_seconds": result["cpu"],
            "peak_mb": list(peaks.values()),
            "restarted": result["restarted"],
        }
        if args.stages == "reconstruction":
            if args.json is not None:
                args.json.write_text(json.dumps(report, indent=2, default=str))
            return 0 if max(peaks.values()) < args.cap_mb and not result["restarted"] else 1
        stats = result["stats"]
        crack_fraction = result["cracks"].crack_area.sum() / max(
            1, result["cracks"].particle_area.sum()
        )
        print(
            f"  particles: {len(result['particles'].table)} "
            f"({result['particles'].n_slabs} slabs), "
            f"mean diameter {stats.overall.mean_diameter_um:.1f} px, flawed fraction "
            f"{stats.overall.flawed_fraction:.3f}, crack fraction "
            f"{crack_fraction:.4f}"
        )
        report["particles"] = len(result["particles"].table)
        if check:
            cmp = compare(path, angles, result)
            print(f"  in-memory pipelines: {cmp['in_memory_seconds']:.1f} s")
            for name, same in cmp["identical"].items():
                print(f"    identical {name}: {same}")
            report["compare"] = cmp
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    ok = max(peaks.values()) < args.cap_mb and not result["restarted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
