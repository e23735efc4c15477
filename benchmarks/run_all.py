"""Run every benchmark in turn (``make benchmark``); each prints its own table and ratios."""

from __future__ import annotations

import platform
import sys

from benchmarks import particles_benchmark, tomo_benchmark, xanes_benchmark


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(f"machine: {machine}, python {platform.python_version()}")
    status = 0
    for name, bench in (
        ("xanes", xanes_benchmark),
        ("tomo", tomo_benchmark),
        ("particles", particles_benchmark),
    ):
        print(f"\n===== {name} =====", flush=True)
        status |= int(bench.main(args if name == "tomo" else []) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
