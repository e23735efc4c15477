"""``beamwatch delete UID...``: runs out of Tiled and off the disk.

Deletes ``raw/<uid>`` and ``analysis/<uid>`` (every pipeline's results, reprocessed ones
included) from the configured Tiled, then the frame arrays the raw consumer wrote for the run
(``DIR/raw_frames/<uid>``, registered in Tiled as external data: Tiled does not delete external
files). Tiled first: nothing is left that advertises frames whose files are gone; a deletion
that stopped half-way is finished by running the command again. Detector files (written by the
detector, registered from the run's documents) are not ours and stay.

A run that a consumer still has open (its journal ``DIR/spool/<role>/runs/<uid>.msgpack``) or
whose writes are still queued (``DIR/spool/<role>/<n>-<uid>.msgpack``) is not deleted: the
consumer would write parts of it again. ``--force`` deletes it all the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from services.cli.inputs import add_settings_options, settings_from_args, tiled_client
from services.core.identifiers import check_uid
from services.core.layout import ANALYSIS, RAW

__all__ = ["RunInUse", "delete_command", "delete_run", "register", "run_in_use"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_DELETED = 1


class RunInUse(RuntimeError):
    """A run a consumer is still writing."""


def register(subparsers: Any) -> None:
    """Add ``delete`` to an argparse sub-parsers object."""
    delete = subparsers.add_parser(
        "delete",
        help="delete runs: raw/<uid> and analysis/<uid> in Tiled and the raw consumer's frame "
        "files",
        description="Delete runs from the configured Tiled (raw/<uid>, analysis/<uid>) and the "
        "frame files the raw consumer wrote for them (DATA_DIR/raw_frames/<uid>). A run a "
        "consumer is still writing (its journal or queued writes in DATA_DIR/spool) is not "
        "deleted unless --force. Detector files stay.",
    )
    delete.add_argument("uid", nargs="+", help="run uids")
    delete.add_argument(
        "--force",
        action="store_true",
        help="delete runs a consumer is still writing (it may write parts of them again)",
    )
    add_settings_options(delete)
    delete.set_defaults(func=delete_command)


def run_in_use(spool_dir: Path, uid: str) -> list[Path]:
    """The spool files that say a consumer still writes run ``uid``: its journal and its
    queued writes, in every role's spool."""
    check_uid(uid, "run uid")
    spool_dir = Path(spool_dir)
    return sorted([*spool_dir.glob(f"*/runs/{uid}.msgpack"), *spool_dir.glob(f"*/*-{uid}.msgpack")])


def delete_run(
    client: Any, uid: str, *, frames_dir: Path, spool_dir: Path, force: bool = False
) -> list[str]:
    """Delete run ``uid`` from Tiled and its frame files; return what was deleted.

    Raises :class:`RunInUse` (nothing deleted) while a consumer writes it, unless ``force``.
    """
    from services.tiled.frame_files import remove_run_frames

    check_uid(uid, "run uid")
    in_use = run_in_use(spool_dir, uid)
    if in_use and not force:
        raise RunInUse(
            f"run {uid} is still being written ({', '.join(str(p) for p in in_use[:3])}); "
            "wait for the consumers, or use --force"
        )
    deleted = []
    for top in (RAW, ANALYSIS):
        if top in client and uid in client[top]:
            client[top].delete_contents([uid], recursive=True, external_only=False)
            deleted.append(f"{top}/{uid}")
    if remove_run_frames(frames_dir, uid):
        deleted.append(str(Path(frames_dir) / uid))
    return deleted


def delete_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = tiled_client(settings)
    failed = False
    try:
        for uid in args.uid:
            try:
                deleted = delete_run(
                    client,
                    uid,
                    frames_dir=settings.raw_frames_dir,
                    spool_dir=settings.spool_dir,
                    force=args.force,
                )
            except (RunInUse, ValueError) as exc:
                logger.error("%s", exc)
                failed = True
                continue
            if deleted:
                logger.info("deleted %s", ", ".join(deleted))
                sys.stdout.write(uid + "\n")
            else:
                logger.warning("run %s: nothing to delete (not in Tiled, no frame files)", uid)
    finally:
        client.context.close()
    return EXIT_NOT_DELETED if failed else EXIT_OK
