"""Simulated beamline devices (ophyd v1) for the demo and the tests.

``SimHdf5Camera`` writes every frame to an HDF5 file in SWMR mode and announces it in one of
three ways (``frame_source``):

``"stream"``    event-model >= 1.21 ``StreamResource``/``StreamDatum`` (the default);
``"resource"``  legacy ``Resource``/``Datum`` (spec ``AD_HDF5_SWMR_STREAM``, ``frame`` kwarg);
``"event"``     the array itself inside the Event document (no file reference).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import Status

FRAME_SOURCES = ("stream", "resource", "event")
DATASET = "/entry/data/data"


class SimHdf5Camera(Device):
    """A camera whose frames come from ``render()`` and go to a SWMR HDF5 file."""

    acquire_time = Cpt(Signal, value=0.5, kind="config")

    def __init__(
        self,
        *args: Any,
        render: Callable[[], np.ndarray],
        directory: str | Path,
        frame_source: str = "stream",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if frame_source not in FRAME_SOURCES:
            raise ValueError(f"frame_source must be one of {FRAME_SOURCES}, got {frame_source!r}")
        self._render = render
        self._directory = Path(directory)
        self.frame_source = frame_source
        self._file: h5py.File | None = None
        self._dset: Any = None
        self._index = 0
        self._assets: deque[tuple[str, dict[str, Any]]] = deque()
        self._resource_uid = ""
        self._last_value: Any = None
        self._last_time = 0.0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self.path: Path | None = None

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    # ---- staging -------------------------------------------------------------------------------
    def stage(self) -> list[Any]:
        staged = super().stage()
        self._index = 0
        self._assets.clear()
        if self.frame_source != "event":
            self._directory.mkdir(parents=True, exist_ok=True)
            self.path = self._directory / f"{self.name}_{uuid.uuid4().hex[:12]}.h5"
        return staged

    def unstage(self) -> list[Any]:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._dset = None
        return super().unstage()

    # ---- acquisition ----
    def trigger(self) -> Status:
        frame = np.asarray(self._render())
        self._shape, self._dtype = frame.shape, frame.dtype
        now = time.time()
        if self.frame_source == "event":
            self._last_value = frame
        else:
            self._append(frame)
        self._last_time = now
        status = Status(obj=self, timeout=10)
        status.set_finished()
        return status

    def _append(self, frame: np.ndarray) -> None:
        if self._file is None:
            assert self.path is not None, "camera must be staged before it is triggered"
            self._file = h5py.File(self.path, "w", libver="latest")
            self._dset = self._file.create_dataset(
                DATASET,
                shape=(0, *frame.shape),
                maxshape=(None, *frame.shape),
                chunks=(1, *frame.shape),
                dtype=frame.dtype,
            )
            self._file.swmr_mode = True
            self._announce_resource()
        i = self._index
        self._dset.resize(i + 1, axis=0)
        self._dset[i] = frame
        self._dset.flush()
        self._index += 1
        if self.frame_source == "stream":
            self._assets.append(
                (
                    "stream_datum",
                    {
                        "uid": f"{self._resource_uid}/{i}",
                        "stream_resource": self._resource_uid,
                        "descriptor": "",
                        "indices": {"start": i, "stop": i + 1},
                        "seq_nums": {"start": 0, "stop": 0},
                    },
                )
            )
        else:
            datum_id = f"{self._resource_uid}/{i}"
            self._last_value = datum_id
            self._assets.append(
                (
                    "datum",
                    {
                        "resource": self._resource_uid,
                        "datum_id": datum_id,
                        "datum_kwargs": {"frame": i},
                    },
                )
            )

    def _announce_resource(self) -> None:
        assert self.path is not None
        self._resource_uid = str(uuid.uuid4())
        if self.frame_source == "stream":
            self._assets.append(
                (
                    "stream_resource",
                    {
                        "uid": self._resource_uid,
                        "data_key": self.image_key,
                        "mimetype": "application/x-hdf5",
                        "uri": f"file://localhost{self.path.resolve()}",
                        "parameters": {
                            "dataset": DATASET,
                            "swmr": True,
                            "join_method": "stack",
                            "chunk_shape": [1, *self._frame_shape()],
                        },
                    },
                )
            )
        else:
            self._assets.append(
                (
                    "resource",
                    {
                        "uid": self._resource_uid,
                        "spec": "AD_HDF5_SWMR_STREAM",
                        "root": "/",
                        "resource_path": str(self.path.resolve()).lstrip("/"),
                        "resource_kwargs": {
                            "dataset": DATASET,
                            "join_method": "stack",
                            "chunk_shape": [1, *self._frame_shape()],
                        },
                        "path_semantics": "posix",
                    },
                )
            )

    def _frame_shape(self) -> list[int]:
        return list(self._shape or ())

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while self._assets:
            yield self._assets.popleft()

    # ---- reading ----
    def describe(self) -> dict[str, Any]:
        out = dict(super().describe())
        shape = (
            list(self._shape) if self._shape is not None else list(np.asarray(self._render()).shape)
        )
        dtype = self._dtype if self._dtype is not None else np.dtype("uint16")
        key: dict[str, Any] = {
            "source": f"SIM:{self.name}",
            "dtype": "array",
            "shape": shape,
            "dtype_numpy": np.dtype(dtype).str,
        }
        if self.frame_source == "stream":
            key["external"] = "STREAM:"
        elif self.frame_source == "resource":
            key["external"] = "FILESTORE:"
        out[self.image_key] = key
        return out

    def read(self) -> dict[str, Any]:
        out = dict(super().read())
        if self.frame_source != "stream":
            out[self.image_key] = {"value": self._last_value, "timestamp": self._last_time}
        return out


class SimTXM:
    """A simulated transmission X-ray microscope around a synthetic scene.

    ``scene`` is a :class:`synthetic.txm.TxmScene` (or anything with ``frame``,
    ``flat`` and ``dark``, e.g. :class:`synthetic.txm_dense.DenseTxmScene`: see
    :meth:`real_looking`). The sample stage (µm) moves the sample; moving ``sample_x`` by more
    than ``out_of_beam_um`` from its in-beam position takes a flat field.
    """

    def __init__(
        self,
        scene: Any,
        directory: str | Path,
        *,
        frame_source: str = "stream",
        pixel_size_um: float = 0.03,
        out_of_beam_um: float = 100.0,
        seed: int = 0,
    ) -> None:
        self.scene = scene
        self.pixel_size_um = pixel_size_um
        self.out_of_beam_um = out_of_beam_um
        self.energy = SynAxis(name="energy", value=8300.0, delay=0.0)
        self.sample_x = SynAxis(name="sample_x", value=0.0)
        self.sample_y = SynAxis(name="sample_y", value=0.0)
        self.scan_index = Signal(name="scan_index", value=0)
        self.shutter_open = Signal(name="shutter_open", value=1)
        self.camera = SimHdf5Camera(
            name="txm_cam", render=self._render, directory=directory, frame_source=frame_source
        )
        self._rng = np.random.default_rng(seed)
        self._frame_in_scan: dict[int, int] = {}

    @classmethod
    def real_looking(
        cls,
        directory: str | Path,
        *,
        seed: int = 0,
        shape: tuple[int, int] = (256, 256),
        n_particles: int = 10,
        n_frames: int = 40,
        n_scans: int = 1,
        frame_source: str = "stream",
        pixel_size_um: float = 0.03,
    ) -> SimTXM:
        """A TXM whose field of view looks like a real one (``synthetic.txm_dense``).

        Large, touching and border-cut particles, zone-plate rings and an illumination
        gradient that the flat field removes only in part, 1500 counts per pixel, dead pixels:
        the hard case of the live alignment, instead of the separated round particles of
        :class:`synthetic.txm.TxmScene`.

        Parameters
        ----------
        directory : str or Path
            Where the camera writes its HDF5 files.
        seed : int
            Scene and noise seed.
        shape : tuple of int
            Frame shape.
        n_particles : int
            Particles placed (some end up cut by the border).
        n_frames, n_scans : int
            Frames per scan and scans of the series the scene's drift covers.
        frame_source : str
            See :class:`SimHdf5Camera`.
        pixel_size_um : float
            Pixel size (µm) of the stage-to-pixel conversion.

        Returns
        -------
        SimTXM
        """
        from synthetic.txm_dense import DenseTxmScene

        scene = DenseTxmScene.random(
            seed, shape=shape, n_particles=n_particles, n_frames=n_frames, n_scans=n_scans
        )
        return cls(
            scene, directory, frame_source=frame_source, pixel_size_um=pixel_size_um, seed=seed
        )

    @property
    def motors(self) -> list[Any]:
        return [self.energy, self.sample_x, self.sample_y]

    def sample_in_beam(self) -> bool:
        return abs(float(self.sample_x.position)) < self.out_of_beam_um

    def _render(self) -> np.ndarray:
        energy = float(self.energy.position)
        if not int(self.shutter_open.get()):
            img = self.scene.dark(rng=self._rng)
        elif not self.sample_in_beam():
            img = self.scene.flat(energy, rng=self._rng)
        else:
            scan = int(self.scan_index.get())
            index = self._frame_in_scan.get(scan, 0)
            self._frame_in_scan[scan] = index + 1
            offset = (
                float(self.sample_y.position) / self.pixel_size_um,
                float(self.sample_x.position) / self.pixel_size_um,
            )
            img = self.scene.frame(
                energy, scan=scan, index=index, stage_offset_px=offset, rng=self._rng
            )
        return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


class SimTomoStation:
    """A simulated tomography station: rotation stage + camera projecting a synthetic volume.

    ``projector(angle_deg) -> (rows, cols)`` returns the line integrals of the sample at that
    angle (e.g. from :func:`pipelines.tomo.project.forward_project` on a synthetic cathode);
    the camera turns them into counts with a flat-field beam and Poisson noise.
    """

    def __init__(
        self,
        projector: Callable[[float], np.ndarray],
        shape: tuple[int, int],
        directory: str | Path,
        *,
        frame_source: str = "stream",
        i0: float = 20000.0,
        dark_level: float = 100.0,
        seed: int = 0,
    ) -> None:
        self.projector = projector
        self.shape = shape
        self.i0 = i0
        self.dark_level = dark_level
        self.rotation = SynAxis(name="rotation", value=0.0)
        self.sample_x = SynAxis(name="tomo_sample_x", value=0.0)
        self.shutter_open = Signal(name="tomo_shutter_open", value=1)
        self.camera = SimHdf5Camera(
            name="tomo_cam", render=self._render, directory=directory, frame_source=frame_source
        )
        self._rng = np.random.default_rng(seed)
        rows, cols = shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        self._beam = 1.0 - 0.15 * (((xx - cols / 2) / cols) ** 2 + ((yy - rows / 2) / rows) ** 2)

    @classmethod
    def from_frames(
        cls,
        angles_deg: np.ndarray,
        projections: np.ndarray,
        flat: np.ndarray,
        dark: np.ndarray,
        directory: str | Path,
        *,
        frame_source: str = "stream",
    ) -> SimTomoStation:
        """A station replaying simulated detector frames (e.g. ``simulate_scan`` output):
        the projection nearest to the rotation angle, flats and darks in turn."""
        angles = np.asarray(angles_deg, dtype=np.float64)
        station = cls(
            lambda a: np.zeros(projections.shape[1:]),
            projections.shape[1:],
            directory,
            frame_source=frame_source,
        )
        counters = {"flat": 0, "dark": 0}

        def replay() -> np.ndarray:
            if not int(station.shutter_open.get()):
                frame = dark[counters["dark"] % len(dark)]
                counters["dark"] += 1
                return frame
            if abs(float(station.sample_x.position)) > 100.0:
                frame = flat[counters["flat"] % len(flat)]
                counters["flat"] += 1
                return frame
            angle = float(station.rotation.position)
            return projections[int(np.argmin(np.abs(angles - angle)))]

        station.camera._render = replay
        return station

    def _render(self) -> np.ndarray:
        dark = self.dark_level
        if not int(self.shutter_open.get()):
            expected = np.full(self.shape, dark)
        elif abs(float(self.sample_x.position)) > 100.0:
            expected = dark + self.i0 * self._beam
        else:
            line_integrals = np.asarray(self.projector(float(self.rotation.position)))
            expected = dark + self.i0 * self._beam * np.exp(-line_integrals)
        counts = self._rng.poisson(np.maximum(expected, 0)).astype(np.float64)
        return np.clip(counts, 0, 65535).astype(np.uint16)
