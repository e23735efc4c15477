"""Run every benchmark in turn (``make benchmark``); each prints its own table and ratios.

The raw-path ingest rates (``benchmarks.ingest_rates``, about 6 minutes: a Tiled server, the
proxy and the raw consumer are started for it, on the 0MQ and on the JetStream bus) run by
default. ``--full-size``
(``make benchmark-full``) adds the two whole-512^3 runs: the particle pipeline on a 512^3
volume (about 3 to 6 minutes) and a 512^3 tomography scan through the live service (about 12
minutes), and the chaos run (``benchmarks.chaos``: 10 scans while children are killed, about
10 minutes).
"""

from __future__ import annotations

import argparse
import platform
import sys

from benchmarks import (
    bigtomo,
    bus_throughput,
    chaos,
    ingest_rates,
    particles_benchmark,
    tomo_benchmark,
    tomo_live_benchmark,
    xanes_benchmark,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size", action="store_true", help="also the two whole-512^3 runs (~18 min more)"
    )
    # any other options (--quick, --threads N, --json F) go to the tomography benchmark
    args, tomo_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(f"machine: {machine}, python {platform.python_version()}")
    runs = [
        ("xanes", xanes_benchmark.main, []),
        ("tomo", tomo_benchmark.main, tomo_args),
        ("particles", particles_benchmark.main, []),
        # slab by slab on Dask vs in memory; `python -m benchmarks.bigtomo --size 1024` for more
        ("bigtomo 128^3", bigtomo.main, ["--size", "128", "--slab", "32"]),
        ("bus", bus_throughput.main, []),
        ("raw ingest rates", ingest_rates.main, []),
    ]
    if args.full_size:
        runs += [
            ("particles 512^3", particles_benchmark.main, ["--timing-only", "--full-size", "512"]),
            ("live tomography 512^3", tomo_live_benchmark.main, ["--size", "512"]),
            ("chaos: 10 scans, children killed", chaos.main, []),
        ]
    status = 0
    for name, bench, bench_args in runs:
        print(f"\n===== {name} =====", flush=True)
        status |= int(bench(bench_args) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
