"""A full-size tomogram through the live service: ``python -m benchmarks.tomo_live_benchmark``.

Starts everything ``beamwatch up`` starts (Tiled, the bus proxy, both consumers, the live page)
in a temporary data directory, runs one simulated tomography scan through a real RunEngine onto
the bus, and measures how long the analysis consumer needs after the scan's stop document:

- until ``analysis/<uid>/cracks`` is ``complete`` (reconstruction, the crack map written slice by
  slice, quantification, figures), the issue's goal being a 512^3 volume in under 10 minutes on
  2 CPU cores;
- until ``analysis/<uid>/particles`` is ``complete`` (the second stage).

It also prints the consumer's own timings (from the containers' metadata) and the crack IoU of
the live map against the phantom. The raw consumer registers the same frames in Tiled at the
same time, as it would at a beamline.

Simulating 769 projections of a 512^3 phantom would take about 15 minutes, so the phantom is a
cathode ``--slab`` rows high repeated along z: in parallel-beam geometry each detector row sees
one slice, so its projections are the slab's repeated along the rows. Reconstruction, crack
mapping and particle analysis do the same work per slice as for a genuine volume.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.core.logs import configure_logging
from services.core.settings import load_settings

logger = logging.getLogger("benchmarks.tomo_live")


def wait_for_status(client: Any, uid: str, pipeline: str, timeout: float) -> float:
    """Poll until ``analysis/<uid>/<pipeline>`` is complete; return the monotonic time then."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = client["analysis"][uid][pipeline].metadata.get("status")
        except KeyError:
            status = None
        if status == "complete":
            return time.monotonic()
        if status == "failed":
            raise RuntimeError(
                f"{pipeline} failed: {client['analysis'][uid][pipeline].metadata.get('error')}"
            )
        time.sleep(1.0)
    raise TimeoutError(f"{pipeline} of {uid} not complete after {timeout:.0f} s ({status})")


def simulate(size: int, slab: int, seed: int) -> tuple[np.ndarray, Any, np.ndarray]:
    """Angles, simulated frames and the true crack mask of a size^3 (slab-periodic) phantom."""
    from synthetic.cathode import make_cathode_volume
    from synthetic.scan import simulate_scan

    repeats = -(-size // slab)
    phantom = make_cathode_volume((slab, size, size), seed=seed)
    angles = np.linspace(0.0, 180.0, int(size * 1.5) + 1, endpoint=False)
    frames = simulate_scan(phantom.attenuation, angles, seed=seed + 1)
    for name in ("projections", "flat", "dark"):
        rows = getattr(frames, name)
        setattr(frames, name, np.tile(rows, (1, repeats, 1))[:, :size])
    truth = np.tile(phantom.crack_mask, (repeats, 1, 1))[:size]
    return angles, frames, truth


def run(size: int, slab: int, timeout: float) -> dict[str, Any]:
    from tiled.client import from_uri

    from bluesky_plans.devices import SimTomoStation
    from bluesky_plans.plans import tomo_scan_plan
    from pipelines.tomo.fbp import inside_circle
    from services.runtime.demo import bus_run_engine, running_services

    t0 = time.monotonic()
    angles, frames, truth = simulate(size, slab, seed=3)
    seconds = time.monotonic() - t0
    logger.info("simulated %d projections of %d^3 in %.0f s", len(angles), size, seconds)
    with tempfile.TemporaryDirectory(prefix="beamwatch-bench-") as tmp:
        settings = load_settings(None, data_dir=Path(tmp))
        with running_services(settings):
            client = from_uri(settings.tiled_url, api_key=settings.resolved_api_key())
            station = SimTomoStation.from_frames(
                angles, frames.projections, frames.flat, frames.dark, settings.detector_dir
            )
            with bus_run_engine(settings) as RE:
                t_start = time.monotonic()
                (uid,) = RE(tomo_scan_plan(station, list(angles), md={"sample": "benchmark"}))
                t_stop = time.monotonic()
            logger.info("scan %s: %d projections in %.0f s", uid, len(angles), t_stop - t_start)
            t_cracks = wait_for_status(client, uid, "cracks", timeout)
            logger.info("cracks complete %.0f s after the stop document", t_cracks - t_stop)
            t_particles = wait_for_status(client, uid, "particles", timeout)
            cracks = client["analysis"][uid]["cracks"]
            particles = client["analysis"][uid]["particles"].metadata
            mask = cracks["mask"].read().astype(bool)
            inside = inside_circle(size)
            pred, true = mask[:, inside], truth[:, inside]
            iou = float((pred & true).sum() / max((pred | true).sum(), 1))
            client.context.close()
            return {
                "shape": [size] * 3,
                "angles": len(angles),
                "scan_seconds": t_stop - t_start,
                "cracks_complete_after_stop_seconds": t_cracks - t_stop,
                "particles_complete_after_stop_seconds": t_particles - t_stop,
                "consumer_seconds_reconstruction": cracks.metadata.get("seconds_reconstruction"),
                "consumer_seconds_cracks": cracks.metadata.get("seconds_cracks"),
                "consumer_seconds_cracks_total": cracks.metadata.get("seconds_total"),
                "consumer_seconds_particles": particles.get("seconds"),
                "particle_stage_seconds": particles.get("stage_seconds"),
                "particles": particles.get("particles"),
                "crack_iou": iou,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="volume side (default 512)")
    parser.add_argument("--slab", type=int, default=64, help="phantom rows, repeated along z")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per stage")
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    args = parser.parse_args(argv)
    if args.size < 16 or args.slab < 1:
        parser.error("--size must be >= 16 and --slab >= 1")
    configure_logging("INFO", service="benchmark")
    result = run(args.size, min(args.slab, args.size), args.timeout)
    print("live tomography:", json.dumps(result, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
