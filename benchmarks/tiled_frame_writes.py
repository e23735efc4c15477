"""Frames/s the embedded Tiled server alone takes: ``python -m benchmarks.tiled_frame_writes``.

Case b of :mod:`benchmarks.ingest_rates` (512 x 512 frames inside Events, goal >= 100/s) is
bounded by what Tiled takes per byte, whatever the consumer does. This starts only the
embedded Tiled server (as ``beamwatch up`` does) and writes frames with the client calls the
raw path makes (``write_array`` for the first block, then ``patch(..., extend=True)`` per
block), without the bus, the journal or the spool, for several layouts, alternately
(``--trials`` rounds), so the layouts are compared under the same load:

* ``block N``: blocks of N frames, the array created by the first block (so a Zarr chunk
  holds N frames: Tiled keeps the chunk shape of the block that created the array);
* ``per-frame chunks``: blocks of 16 frames, the array created by one frame (one frame per
  chunk) and the rest of the first block patched in, the layout that avoids rewriting a
  chunk that a later block only partly fills.

Frames are random 12-bit values in uint16 (compressible like detector noise, not like the
constant frames of ``ingest_rates``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: (label, frames per block, frames in the block that creates the array)
LAYOUTS = (
    ("block 16 (8 MB)", 16, 16),
    ("block 64 (32 MB)", 64, 64),
    ("per-frame chunks, block 16", 16, 1),
)


def write_frames(
    parent: Any, key: str, pool: np.ndarray, total: int, block: int, first: int
) -> float:
    """Write ``total`` frames (taken from ``pool``) in blocks of ``block``, the array created
    by the first ``first``; return the seconds it took."""
    t0 = time.perf_counter()
    node = parent.write_array(pool[:first], key=key)
    offset = first
    while offset < total:
        n = min(block - offset % block if offset < block else block, total - offset)
        node.patch(pool[:n], offset=(offset,), extend=True)
        offset += n
    if node.shape[0] != total:
        raise RuntimeError(f"{key}: {node.shape[0]} frames advertised, {total} written")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=192, help="frames per layout and trial")
    parser.add_argument("--size", type=int, default=512, help="frame edge (pixels)")
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args(argv)
    if args.frames < 64 or args.size < 1 or args.trials < 1:
        parser.error("--frames >= 64, --size >= 1, --trials >= 1")
    from benchmarks.stack import running_stack

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 4096, (64, args.size, args.size), dtype=np.uint16)
    frame_mb = pool[0].nbytes / 1e6
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {label: [] for label, _b, _f in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="beamwatch-tfw-") as tmp:
        with running_stack(Path(tmp) / "data", ("tiled",)) as stack:
            client = stack.client()
            try:
                parent = client.create_container("frames")
                parent.write_array(pool[:1], key="warm-up")  # the server's lazy imports
                for trial in range(args.trials):
                    for i, (label, block, first) in enumerate(LAYOUTS):
                        seconds = write_frames(
                            parent, f"t{trial}-{i}", pool, args.frames, block, first
                        )
                        rates[label].append(args.frames / seconds)
            finally:
                client.context.close()
    print(
        f"{os.cpu_count()} cores, load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; {args.frames} frames of "
        f"{args.size} x {args.size} uint16 per layout and trial"
    )
    for label, values in rates.items():
        each = ", ".join(f"{v:.0f}" for v in values)
        best = max(values)
        print(f"  {label:<28} frames/s per trial: {each:<16} ({best * frame_mb:.0f} MB/s best)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
