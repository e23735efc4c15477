"""``beamwatch import`` and ``beamwatch reprocess``: instrument files in Tiled as a run, and a
stored run analysed again with new parameters.

``import FILES...``
    Reads instrument files (:mod:`services.core.instrument_files`), turns them into the Bluesky
    documents of one run (``plan_name`` ``beamwatch_import``; the start document's
    ``beamwatch_source`` says what was read) and writes them through the raw path of the live
    service: ``raw/<uid>`` with streams ``primary`` (frames with ``energy`` in eV or
    ``rotation`` in degrees), ``flat`` and ``dark``. Frames already normalised by the instrument
    software (FXI) keep their flats and darks in ``flat_applied`` / ``dark_applied`` instead,
    so no pipeline applies them twice.
``reprocess UID [--params P.json] [--pipelines NAME...]``
    Reads ``raw/<uid>`` back from Tiled, replays it as documents through the live analysis
    (the same registry, routers and pipelines) with the start document's parameter keys
    overridden by ``--params``. The results of a run analysed for the first time (an import)
    land where the live service puts them, ``analysis/<uid>/<pipeline>``; later ones in new
    containers ``analysis/<uid>/<pipeline>-r<k>`` (k = 1, 2, ...), the earlier results staying
    as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.inputs import (
    add_settings_options,
    as_paths,
    read_scan,
    resolve_size,
    settings_from_args,
    tiled_client,
)
from services.core.instrument_files import InstrumentFileError, InstrumentScan
from services.tiled.records import ArrayRows, Container, RawDoc, RawDocs, Record, TableRows
from services.tiled.spool import Spool

__all__ = ["import_command", "import_scan", "register", "reprocess_command", "reprocess_run"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_BAD_INPUT = 2
IMAGE_KEY = "image"
#: Start-document keys the pipelines read their parameters from; ``--params`` may set these.
PARAMETER_KEYS = (
    "beamwatch_xanes_params",
    "beamwatch_recon_params",
    "beamwatch_crack_params",
    "beamwatch_particle_params",
    "beamwatch_stats_params",
)
WRITE_TIMEOUT_S = 600.0


class RunInputError(ValueError):
    """A run that cannot be imported or reprocessed; the message says what is missing."""


def register(subparsers: Any) -> None:
    """Add ``import`` and ``reprocess`` to an argparse sub-parsers object."""
    imp = subparsers.add_parser(
        "import",
        help="register instrument files in Tiled as a run (raw/<uid>), analysable like a live one",
        description="Read Xradia, FXI, Data Exchange, NXtomo or TIFF files (one file, several "
        "or a folder) and register them in Tiled under raw/<uid> with a start document that "
        "describes the source. Prints the run uid. Tiled is the one of the settings "
        "(--config, --data-dir of `beamwatch up`, or BEAMWATCH_TILED__URL).",
    )
    imp.add_argument("input", type=Path, nargs="+", help="instrument files or a folder")
    imp.add_argument(
        "--technique",
        choices=("xanes", "tomography"),
        default=None,
        help="what the frames are (default: from the files: energies vary -> xanes, angles -> "
        "tomography)",
    )
    imp.add_argument(
        "--pixel-size-um", type=float, default=None, help="pixel size in um (overrides the file's)"
    )
    imp.add_argument("--sample", default=None, help="sample name for the start document")
    add_settings_options(imp)
    imp.set_defaults(func=import_command)

    rep = subparsers.add_parser(
        "reprocess",
        help="analyse a stored run again with new parameters into new result containers",
        description="Replay raw/<uid> from Tiled through the live analysis pipelines. A run "
        "without results (an import) gets them in analysis/<uid>/<pipeline>, as the live "
        "service writes them; a run that has results gets new containers "
        "analysis/<uid>/<pipeline>-r<k> and the earlier ones stay. Prints the containers "
        "written.",
    )
    rep.add_argument("uid", help="run uid (raw/<uid> in Tiled)")
    rep.add_argument(
        "--params",
        type=Path,
        default=None,
        help="JSON object of start-document parameter keys: " + ", ".join(PARAMETER_KEYS),
    )
    rep.add_argument(
        "--pipelines",
        nargs="+",
        default=None,
        help="pipelines to run (default: those the run selects, except 'frames')",
    )
    add_settings_options(rep)
    rep.set_defaults(func=reprocess_command)


# ---------------------------------------------------------------------------------- import
def _technique(scan: InstrumentScan, requested: str | None) -> str:
    if requested is not None:
        technique = requested
    elif scan.kind == "xanes":
        technique = "xanes"
    elif scan.kind == "projections":
        technique = "tomography"
    else:
        raise RunInputError(
            f"{scan.source}: the files do not say whether they are a XANES series or "
            "tomography projections; give --technique"
        )
    if technique == "xanes" and scan.energies_eV is None:
        raise RunInputError(f"{scan.source}: a XANES run needs energies and the files hold none")
    if technique == "tomography" and scan.angles_rad is None:
        raise RunInputError(f"{scan.source}: a tomography run needs angles; the files hold none")
    if scan.kind == "volume":
        raise RunInputError(f"{scan.source}: a reconstructed volume, not a scan to import")
    return technique


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flat_energies(scan: InstrumentScan) -> list[float | None]:
    """Energy of each flat: that of the frames it serves (per-frame flats), else None."""
    n_flats = 0 if scan.flats is None else scan.flats.shape[0]
    out: list[float | None] = [None] * n_flats
    if scan.flat_of_frame is not None and scan.energies_eV is not None:
        for i, chosen in enumerate(scan.flat_of_frame):
            for j in chosen:
                out[j] = float(scan.energies_eV[i])
    return out


def run_documents(
    scan: InstrumentScan, technique: str, pixel_size_um: float | None, sample: str | None
) -> list[tuple[str, Any]]:
    """The Bluesky documents of one imported run, images inside the events.

    Parameters
    ----------
    scan : InstrumentScan
        What was read.
    technique : str
        ``xanes`` or ``tomography``.
    pixel_size_um : float or None
        Sample-plane pixel size, None when unknown.
    sample : str or None
        Sample name.

    Returns
    -------
    list of (name, document)
    """
    from event_model import compose_run

    source = {
        "format": scan.format,
        "kind": scan.kind,
        "description": scan.source,
        "files": [Path(f).name for f in scan.files],
        "folder": str(Path(scan.files[0]).resolve().parent),
        "normalized": scan.normalized,
    }
    # document keys may hold no dots: file names become values
    for key, value in _plain(scan.metadata).items():
        if isinstance(value, dict):
            value = [{"file": k, "value": v} for k, v in value.items()]
        source[key] = value
    metadata: dict[str, Any] = {
        "plan_name": "beamwatch_import",
        "beamwatch_technique": technique,
        "beamwatch_source": source,
        "image_key": IMAGE_KEY,
        "energy_key": "energy",
        "angle_key": "rotation",
        "num_points": scan.n_frames,
    }
    if pixel_size_um is not None:
        metadata["pixel_size_um"] = float(pixel_size_um)
    if sample:
        metadata["sample_name"] = sample
    bundle = compose_run(metadata=metadata)
    docs: list[tuple[str, Any]] = [("start", bundle.start_doc)]
    height, width = scan.frames.shape[1:]

    def image_key(dtype: np.dtype) -> dict[str, Any]:
        return {
            "source": f"beamwatch import ({scan.format})",
            "dtype": "array",
            "dtype_numpy": np.dtype(dtype).str,
            "shape": [int(height), int(width)],
        }

    def number_key(units: str) -> dict[str, Any]:
        return {
            "source": f"beamwatch import ({scan.format})",
            "dtype": "number",
            "shape": [],
            "units": units,
        }

    now = time.time()
    # flats and darks first, as a scan takes them: the live XANES pipeline builds its
    # reference from the flats it has when the first sample frame arrives
    prefix = "_applied" if scan.normalized else ""
    flat_energy = _flat_energies(scan)
    for name, stack in (("dark", scan.darks), ("flat", scan.flats)):
        if stack is None:
            continue
        keys = {IMAGE_KEY: image_key(stack.dtype)}
        with_energy = name == "flat" and all(e is not None for e in flat_energy)
        if with_energy:
            keys["energy"] = number_key("eV")
        if name == "flat" and scan.flat_exposure_s is not None:
            keys["exposure_time"] = number_key("s")
        desc = bundle.compose_descriptor(name=name + prefix, data_keys=keys)
        docs.append(("descriptor", desc.descriptor_doc))
        for j in range(stack.shape[0]):
            data: dict[str, Any] = {IMAGE_KEY: stack[j]}
            if with_energy:
                data["energy"] = flat_energy[j]
            if "exposure_time" in keys:
                data["exposure_time"] = float(scan.flat_exposure_s[j])  # type: ignore[index]
            docs.append(
                (
                    "event",
                    desc.compose_event(
                        data=data, timestamps={k: now for k in data}, seq_num=j + 1, time=now
                    ),
                )
            )
    primary_keys = {IMAGE_KEY: image_key(scan.frames.dtype)}
    if scan.energies_eV is not None:
        primary_keys["energy"] = number_key("eV")
    if scan.angles_rad is not None:
        primary_keys["rotation"] = number_key("deg")
    if scan.exposure_s is not None:
        primary_keys["exposure_time"] = number_key("s")
    desc = bundle.compose_descriptor(name="primary", data_keys=primary_keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(scan.n_frames):
        data = {IMAGE_KEY: scan.frames[i]}
        if scan.energies_eV is not None:
            data["energy"] = float(scan.energies_eV[i])
        if scan.angles_rad is not None:
            data["rotation"] = float(np.rad2deg(scan.angles_rad[i]))
        if scan.exposure_s is not None:
            data["exposure_time"] = float(scan.exposure_s[i])
        docs.append(
            (
                "event",
                desc.compose_event(
                    data=data, timestamps={k: now for k in data}, seq_num=i + 1, time=now
                ),
            )
        )
    docs.append(("stop", bundle.compose_stop(exit_status="success")))
    return docs


def _write_through_spool(settings: Any, client: Any, label: str, feed: Any) -> Spool:
    """A started spool applying records to ``client``; ``feed(spool)`` puts the records."""
    from services.core.metrics import Metrics
    from services.tiled.applier import is_transient, is_unreachable

    directory = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=_spool_root(settings)))
    spool = Spool(
        directory,
        _import_applier(client),
        Metrics(label),
        max_backoff=settings.retry_max_backoff,
        is_transient=is_transient,
        is_unreachable=is_unreachable,
    )
    spool.start()
    feed(spool)
    return spool


#: Rows bluesky's TiledWriter holds before it writes (import: a whole stream at once).
IMPORT_WRITER_BATCH = 100_000


def _import_applier(client: Any) -> Any:
    """A ``TiledApplier`` whose raw ``TiledWriter`` writes an event page in one request (the
    live raw path uses ``batch_size=1`` so that every event shows at once)."""
    from services.tiled.applier import TiledApplier, ensure_container

    class ImportApplier(TiledApplier):
        def _raw_doc(self, record: RawDoc) -> None:
            if self._raw_writer is None:
                from bluesky.callbacks.tiled_writer import TiledWriter

                raw = ensure_container(self.client, ["raw"])
                self._raw_writer = TiledWriter(raw, batch_size=IMPORT_WRITER_BATCH)
            self._raw_writer(record.name, record.doc)

        def _raw_docs(self, record: RawDocs) -> None:
            for one in record.records:  # the TiledWriter batches the rows itself
                self._raw_doc(one)

    return ImportApplier(client)


def _spool_root(settings: Any) -> Path:
    root = Path(settings.spool_dir) / "offline"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _finish(spool: Spool, what: str) -> bool:
    done = spool.wait_empty(WRITE_TIMEOUT_S)
    spool.stop(drain_timeout=0 if not done else 30)
    if not done:
        logger.error(
            "%s: %d write(s) not applied to Tiled within %.0f s; they stay in %s",
            what,
            spool.depth(),
            WRITE_TIMEOUT_S,
            spool.directory,
        )
    return done


#: Image rows per Tiled write when an imported stack is stored (about this many bytes).
IMPORT_BLOCK_BYTES = 64 * 1024 * 1024


def import_records(docs: list[tuple[str, Any]]) -> list[Record]:
    """Spool records that store the documents of :func:`run_documents` in Tiled.

    As the live raw path does, the 2-D images are taken out of the documents and stored as
    arrays ``raw/<uid>/<stream>/image``; here each stream's events go as one event page and its
    images in blocks of about ``IMPORT_BLOCK_BYTES`` (a live run writes both one event at a time).
    """
    from event_model import pack_event_page

    records: list[Record] = []
    uid = docs[0][1]["uid"]
    stream_of: dict[str, str] = {}
    events: dict[str, list[Any]] = {}

    def flush(descriptor_uid: str) -> None:
        page_events = events.pop(descriptor_uid, [])
        if not page_events:
            return
        images = np.stack([e["data"].pop(IMAGE_KEY) for e in page_events])
        for e in page_events:
            e["timestamps"].pop(IMAGE_KEY, None)
        records.append(RawDoc("event_page", dict(pack_event_page(*page_events)), run=uid))
        step = max(1, IMPORT_BLOCK_BYTES // max(1, images[0].nbytes))
        for offset in range(0, len(images), step):
            records.append(
                ArrayRows(
                    ("raw", uid, stream_of[descriptor_uid]),
                    IMAGE_KEY,
                    images[offset : offset + step],
                    offset=offset,
                    metadata={"source": "beamwatch import", "data_key": IMAGE_KEY},
                )
            )

    for name, doc in docs:
        if name == "descriptor":
            doc = dict(doc)
            doc["data_keys"] = {k: v for k, v in doc["data_keys"].items() if k != IMAGE_KEY}
            stream_of[doc["uid"]] = doc["name"]
            records.append(RawDoc(name, doc, run=uid))
        elif name == "event":
            events.setdefault(doc["descriptor"], []).append(
                {**doc, "data": dict(doc["data"]), "timestamps": dict(doc["timestamps"])}
            )
        else:
            for descriptor_uid in list(events):
                flush(descriptor_uid)
            records.append(RawDoc(name, doc, run=uid))
    return records


def import_scan(
    paths: list[Path],
    settings: Any,
    *,
    technique: str | None = None,
    pixel_size_um: float | None = None,
    sample: str | None = None,
) -> str:
    """Register instrument files in Tiled as a run; returns its uid.

    Raises
    ------
    InstrumentFileError, RunInputError
        Unreadable files, or files that are not a scan of the technique.
    RuntimeError
        Tiled did not take every write within the timeout.
    """
    scan = read_scan(paths)
    technique = _technique(scan, technique)
    pixel = resolve_size(pixel_size_um, scan.pixel_size_um, str(paths[0]))
    docs = run_documents(scan, technique, pixel, sample)
    uid = docs[0][1]["uid"]
    client = tiled_client(settings)
    try:

        def feed(spool: Spool) -> None:
            for record in import_records(docs):
                spool.put(record)

        spool = _write_through_spool(settings, client, "import", feed)
        if not _finish(spool, f"import {uid}"):
            raise RuntimeError(f"import {uid}: Tiled did not take every write")
    finally:
        client.context.close()
    logger.info("imported %s as raw/%s (%s, %d frames)", scan.source, uid, technique, scan.n_frames)
    return uid


def import_command(args: argparse.Namespace) -> int:
    """Run ``beamwatch import``; prints the run uid. Exit 0, 1 (Tiled writes), 2 (input)."""
    import sys

    try:
        uid = import_scan(
            as_paths(args.input),
            settings_from_args(args),
            technique=args.technique,
            pixel_size_um=args.pixel_size_um,
            sample=args.sample,
        )
    except (InstrumentFileError, RunInputError) as exc:
        logger.error("import: %s", exc)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        logger.error("%s", exc)
        return EXIT_WRITE_FAILED
    sys.stdout.write(uid + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------- reprocess
def _load_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunInputError(f"cannot read --params file {path}: {exc}") from exc
    if not isinstance(overrides, dict):
        raise RunInputError(f"--params file {path} must hold a JSON object")
    unknown = sorted(set(overrides) - set(PARAMETER_KEYS))
    if unknown:
        raise RunInputError(
            f"--params file {path}: unknown keys {unknown}; known: {', '.join(PARAMETER_KEYS)}"
        )
    return overrides


def _stream_arrays(stream: Any) -> tuple[dict[str, np.ndarray], Any]:
    """Image arrays (ndim >= 3) and the readings table of one stored stream."""
    base = stream.base if hasattr(stream, "base") else stream
    images: dict[str, np.ndarray] = {}
    table = None
    for key in base:
        node = base[key]
        if key == "internal":
            table = node.read()
        elif getattr(node, "structure_family", None) == "array" and len(node.shape) >= 3:
            images[key] = node.read()
    return images, table


def stored_documents(client: Any, uid: str) -> list[tuple[str, Any]]:
    """The documents of ``raw/<uid>`` as stored in Tiled, images back inside the events.

    Raises
    ------
    RunInputError
        The run is not in Tiled or holds no frames.
    """
    raw = client["raw"]
    if uid not in raw:
        raise RunInputError(f"run {uid} is not in Tiled (raw/)")
    node = raw[uid]
    start = dict(node.metadata.get("start") or {})
    stop = node.metadata.get("stop") or None
    if not start:
        raise RunInputError(f"raw/{uid} has no start document")
    docs: list[tuple[str, dict[str, Any]]] = [("start", start)]
    n_images = 0
    order = {"dark": 0, "flat": 1, "primary": 2}
    for name in sorted(node, key=lambda n: (order.get(n, 3), n)):
        images, table = _stream_arrays(node[name])
        if not images:
            continue
        n = min(len(v) for v in images.values())
        rows = [] if table is None else table.to_dict(orient="records")
        by_seq = {int(r["seq_num"]): r for r in rows if "seq_num" in r}
        descriptor_uid = str(uuid.uuid4())
        readings = [
            c for c in (table.columns if table is not None else []) if c not in ("seq_num", "time")
        ]
        readings = [c for c in readings if not c.startswith("ts_")]
        data_keys = {
            key: {"source": "tiled", "dtype": "array", "shape": list(array.shape[1:])}
            for key, array in images.items()
        }
        data_keys.update({c: {"source": "tiled", "dtype": "number", "shape": []} for c in readings})
        docs.append(
            (
                "descriptor",
                {
                    "uid": descriptor_uid,
                    "run_start": uid,
                    "name": name,
                    "time": float(start.get("time", time.time())),
                    "data_keys": data_keys,
                    "configuration": {},
                    "object_keys": {},
                    "hints": {},
                },
            )
        )
        for i in range(n):
            row = by_seq.get(i + 1, {})
            data: dict[str, Any] = {key: array[i] for key, array in images.items()}
            data.update({c: row[c] for c in readings if c in row})
            t = float(row.get("time", start.get("time", 0.0)))
            docs.append(
                (
                    "event",
                    {
                        "uid": str(uuid.uuid4()),
                        "descriptor": descriptor_uid,
                        "seq_num": i + 1,
                        "time": t,
                        "data": data,
                        "timestamps": {k: t for k in data},
                        "filled": {},
                    },
                )
            )
        n_images += n
    if n_images == 0:
        raise RunInputError(f"raw/{uid} holds no image stream to analyse")
    docs.append(
        (
            "stop",
            dict(stop)
            if stop
            else {
                "uid": str(uuid.uuid4()),
                "run_start": uid,
                "time": time.time(),
                "exit_status": "success",
            },
        )
    )
    return docs


class _RedirectingSpool(Spool):
    """A spool that writes ``analysis/<uid>/<pipeline>...`` to ``<pipeline>-r<k>`` instead."""

    def __init__(self, *args: Any, uid: str, suffix: str, note: dict[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._uid = uid
        self._suffix = suffix
        self._note = note

    def put(self, record: Record) -> None:
        if isinstance(record, TableRows) and record.rows and record.n_rows == 0:
            return  # no rows (e.g. no particle found): nothing to append, and Tiled refuses it
        if isinstance(record, RawDoc | RawDocs):
            super().put(record)
            return
        path = record.path
        if len(path) >= 3 and path[:2] == ("analysis", self._uid):
            original = path[2]
            record = replace(record, path=(*path[:2], f"{original}{self._suffix}", *path[3:]))
            if isinstance(record, Container) and len(path) == 3:
                extra = {"reprocess_of": original} if self._suffix else {}
                record = replace(record, metadata={**record.metadata, **extra, **self._note})
        super().put(record)


def _next_suffix(client: Any, uid: str, names: list[str]) -> str:
    """``""`` when none of ``names`` has results yet (a first analysis lands where the live
    one would), else ``-r<k>`` with k one more than any earlier reprocess."""
    existing: list[str] = []
    if "analysis" in client and uid in client["analysis"]:
        existing = list(client["analysis"][uid])
    if not set(names) & set(existing):
        return ""
    numbers = [int(m.group(1)) for k in existing if (m := re.search(r"-r(\d+)$", k))]
    return f"-r{max(numbers, default=0) + 1}"


def reprocess_run(
    uid: str,
    settings: Any,
    *,
    overrides: dict[str, Any] | None = None,
    pipelines: list[str] | None = None,
) -> dict[str, str]:
    """Analyse ``raw/<uid>`` again; returns {pipeline: new container key}.

    Raises
    ------
    RunInputError
        Unknown run, no frames, no pipeline for the run, parameters the pipelines refuse.
    RuntimeError
        Tiled did not take every write within the timeout.
    """
    from services.analysis.registry import default_registry
    from services.analysis.router import AnalysisRunRouter
    from services.core.metrics import Metrics
    from services.tiled.applier import TiledApplier, is_transient, is_unreachable

    overrides = overrides or {}
    client = tiled_client(settings)
    try:
        docs = stored_documents(client, uid)
        start = {**docs[0][1], **overrides}
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        figures = Path(settings.data_dir) / "figures" / f"reprocess-{stamp}"
        registry = default_registry(
            figures_dir=figures, feedback=None, references_dir=Path(settings.data_dir)
        )
        if pipelines is not None:
            unknown = sorted(set(pipelines) - set(registry.names))
            if unknown:
                raise RunInputError(f"unknown pipelines {unknown}; known: {registry.names}")
            start["beamwatch_pipelines"] = list(pipelines)
        entries = registry.select(start)
        if pipelines is None:
            entries = [e for e in entries if e.name != "frames"]
        if not entries:
            raise RunInputError(
                f"no analysis pipeline selects run {uid} (plan_name "
                f"{start.get('plan_name')!r}); name them with --pipelines"
            )
        for entry in entries:  # parameters are checked before anything is written
            try:
                entry.factory(start)
            except ValueError as exc:
                raise RunInputError(f"pipeline {entry.name}: {exc}") from exc
        suffix = _next_suffix(client, uid, [e.name for e in entries])
        note = {"reprocessed": True, "overrides": overrides, "reprocessed_at": time.time()}
        metrics = Metrics("reprocess")
        directory = Path(tempfile.mkdtemp(prefix="reprocess-", dir=_spool_root(settings)))
        spool = _RedirectingSpool(
            directory,
            TiledApplier(client),
            metrics,
            max_backoff=settings.retry_max_backoff,
            is_transient=is_transient,
            is_unreachable=is_unreachable,
            uid=uid,
            suffix=suffix,
            note=note,
        )
        spool.start()
        router = AnalysisRunRouter(start, entries, spool, metrics)
        for name, doc in docs:
            getattr(router, name)(doc)
        if not _finish(spool, f"reprocess {uid}"):
            raise RuntimeError(f"reprocess {uid}: Tiled did not take every write")
        result = {e.name: f"{e.name}{suffix}" for e in entries}
        for name, key in result.items():
            status = client["analysis"][uid][key].metadata.get("status")
            logger.info("reprocessed %s -> analysis/%s/%s (%s)", name, uid, key, status)
        return result
    finally:
        client.context.close()


def reprocess_command(args: argparse.Namespace) -> int:
    """Run ``beamwatch reprocess``; prints the new container keys. Exit 0, 1, 2."""
    import sys

    try:
        result = reprocess_run(
            args.uid,
            settings_from_args(args),
            overrides=_load_overrides(args.params),
            pipelines=args.pipelines,
        )
    except RunInputError as exc:
        logger.error("reprocess: %s", exc)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        logger.error("%s", exc)
        return EXIT_WRITE_FAILED
    for key in result.values():
        sys.stdout.write(f"analysis/{args.uid}/{key}\n")
    return EXIT_OK
