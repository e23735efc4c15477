"""Bluesky plans of the simulated beamline: operando XANES series and tomography scans."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from bluesky_plans.devices import SimTomoStation, SimTXM

Plan = Generator[Any, Any, Any]
PointHook = Callable[[int, float], Plan]


def _take(detectors: list[Any], stream: str, n: int) -> Plan:
    for _ in range(n):
        yield from bps.trigger_and_read(detectors, name=stream)


def _staged(camera: Any, plan: Plan) -> Plan:
    """Stage the camera around ``plan`` so each stream gets its own file and resource."""
    yield from bps.stage(camera)
    try:
        yield from plan
    finally:
        yield from bps.unstage(camera)


def xanes_scan_plan(
    txm: SimTXM,
    energies: Sequence[float],
    *,
    scan_index: int = 0,
    n_flats: int = 3,
    before_point: PointHook | None = None,
    md: dict[str, Any] | None = None,
) -> Plan:
    """One XANES scan = one Bluesky run: flats (sample out of beam), then one frame per energy.

    Streams: ``flat`` (sample out, one per energy of ``flat_energies``), ``primary``.
    ``before_point(i, energy)`` is a plan stub run before each energy point (alignment feedback).
    """
    energies = [float(e) for e in energies]
    if not energies:
        raise ValueError("energies must not be empty")
    cam = txm.camera
    meta = {
        "plan_name": "xanes_scan_plan",
        "beamwatch_technique": "xanes",
        "scan_index": scan_index,
        "energies": energies,
        "num_points": len(energies),
        "pixel_size_um": txm.pixel_size_um,
        "detectors": [cam.name],
        "motors": [m.name for m in txm.motors],
        "image_key": cam.image_key,
        **(md or {}),
    }

    @bpp.run_decorator(md=meta)
    def inner() -> Plan:
        yield from bps.mv(txm.scan_index, scan_index)
        home_x = float(txm.sample_x.position)
        readers = [cam, txm.energy, txm.sample_x, txm.sample_y]
        if n_flats:
            flat_energies = [energies[0], energies[-1]]
            yield from bps.mv(txm.sample_x, home_x + 2 * txm.out_of_beam_um)

            def flats() -> Plan:
                for e in flat_energies:
                    yield from bps.mv(txm.energy, e)
                    yield from _take(readers, "flat", n_flats)

            yield from _staged(cam, flats())
            yield from bps.mv(txm.sample_x, home_x)

        def points() -> Plan:
            for i, energy in enumerate(energies):
                yield from bps.mv(txm.energy, energy)
                if before_point is not None:
                    yield from before_point(i, energy)
                yield from bps.trigger_and_read(readers, name="primary")

        yield from _staged(cam, points())

    return (yield from inner())


def operando_xanes_plan(
    txm: SimTXM,
    energies: Sequence[float],
    n_scans: int,
    *,
    experiment: str = "operando-xanes",
    n_flats: int = 3,
    before_point: PointHook | None = None,
    md: dict[str, Any] | None = None,
) -> Plan:
    """Repeated XANES scans across the Ni K-edge while a cell cycles: one run per scan.

    All runs share ``experiment`` and an ``operando_series`` uid in their start documents, so
    the analysis can link the scans of one series; ``scan_index`` orders them.
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}")
    series = str(uuid.uuid4())
    uids = []
    for k in range(n_scans):
        meta = {
            "experiment": experiment,
            "operando_series": series,
            "n_scans": n_scans,
            **(md or {}),
        }
        uid = yield from xanes_scan_plan(
            txm, energies, scan_index=k, n_flats=n_flats, before_point=before_point, md=meta
        )
        uids.append(uid)
    return uids


def tomo_scan_plan(
    station: SimTomoStation,
    angles: Sequence[float],
    *,
    n_darks: int = 3,
    n_flats: int = 3,
    md: dict[str, Any] | None = None,
) -> Plan:
    """One tomogram = one run: darks (shutter closed), flats (sample out), projections.

    Streams: ``dark``, ``flat``, ``primary`` (one projection per angle, degrees).
    """
    angles = [float(a) for a in np.asarray(angles, dtype=float)]
    if len(angles) < 2:
        raise ValueError("angles must hold at least two rotation angles")
    cam = station.camera
    meta = {
        "plan_name": "tomo_scan_plan",
        "beamwatch_technique": "tomography",
        "num_points": len(angles),
        "angles": angles,
        "detectors": [cam.name],
        "motors": [station.rotation.name],
        "image_key": cam.image_key,
        **(md or {}),
    }

    @bpp.run_decorator(md=meta)
    def inner() -> Plan:
        readers = [cam, station.rotation]
        if n_darks:
            yield from bps.mv(station.shutter_open, 0)
            yield from _staged(cam, _take(readers, "dark", n_darks))
            yield from bps.mv(station.shutter_open, 1)
        if n_flats:
            yield from bps.mv(station.sample_x, 500.0)
            yield from _staged(cam, _take(readers, "flat", n_flats))
            yield from bps.mv(station.sample_x, 0.0)

        def projections() -> Plan:
            for angle in angles:
                yield from bps.mv(station.rotation, angle)
                yield from bps.trigger_and_read(readers, name="primary")

        yield from _staged(cam, projections())

    return (yield from inner())
