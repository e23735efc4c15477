"""The requests a Tiled server answered, counted from its access log.

``tiled serve`` logs one line per request (uvicorn's access log, through tiled's own format):
``[id] 127.0.0.1:PORT (user) - "METHOD /path?query HTTP/1.1" STATUS reason``, with ANSI
colours when it thinks it writes to a terminal. :func:`parse` reads those lines (others, such
as start-up messages, are skipped); :func:`kind` sorts a request into what it costs the
server; :func:`summary` prints the counts per kind and per route (run uids and keys under a
run written ``<uid>``), for ``python -m benchmarks.tiled_requests LOG [--runs N]`` and for
``benchmarks.worker_scaling``, which counts the slice of the log written while its workers
ran. ``tests/services/test_tiled_requests.py`` pins the count of one run with it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: The kinds of :func:`kind`, in the order :func:`summary` prints them.
KINDS = (
    "metadata read",
    "node creation",
    "metadata update",
    "array write",
    "table append",
    "data source update",
    "deletion",
    "data read",
    "other",
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int

    @property
    def kind(self) -> str:
        return kind(self)

    @property
    def route(self) -> str:
        """The path with run uids written ``<uid>``."""
        return _UID.sub("<uid>", self.path)


def parse(text: str) -> list[Request]:
    """The requests of an access log's ``text``, in order."""
    found = []
    for line in _ANSI.sub("", text).splitlines():
        m = _ACCESS.search(line)
        if m is not None:
            path = re.sub("/+", "/", m["target"].split("?", 1)[0])
            found.append(Request(m["method"], path, int(m["status"])))
    return found


def read_log(path: Path, start: int = 0, end: int | None = None) -> list[Request]:
    """The requests logged in ``path`` between byte offsets ``start`` and ``end``."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
    return parse(data.decode("utf-8", errors="replace"))


def kind(request: Request) -> str:
    """What a request is to the server: one of :data:`KINDS`."""
    method, path = request.method, request.path
    parts = path.split("/")
    route = parts[3] if len(parts) > 3 and parts[1:3] == ["api", "v1"] else ""
    if method == "GET" and route == "metadata":
        return "metadata read"
    if method == "POST" and route in ("metadata", "register"):
        return "node creation"
    if method == "PATCH" and route == "metadata":
        return "metadata update"
    if method in ("PUT", "PATCH", "POST") and route == "array":
        return "array write"
    if method in ("PUT", "PATCH", "POST") and route == "table":
        return "table append"
    if method == "PUT" and route == "data_source":
        return "data source update"
    if method == "DELETE":
        return "deletion"
    if method == "GET" and route in ("array", "table", "node"):
        return "data read"
    return "other"


def count_kinds(requests: Iterable[Request]) -> Counter[str]:
    return Counter(r.kind for r in requests)


def count_routes(requests: Iterable[Request]) -> Counter[tuple[str, str, int]]:
    """Requests per method, route (uids written ``<uid>``) and status."""
    return Counter((r.method, r.route, r.status) for r in requests)


def summary(requests: list[Request], runs: int = 1, top: int = 0) -> str:
    """One line of counts per kind (per run when ``runs`` > 1), then the ``top`` routes."""
    kinds = count_kinds(requests)
    per = f" ({len(requests) / runs:.1f} per run)" if runs > 1 else ""
    parts = [
        f"{name} {kinds[name]}" + (f" ({kinds[name] / runs:.1f})" if runs > 1 else "")
        for name in KINDS
        if kinds[name]
    ]
    not_found = sum(1 for r in requests if r.status == 404)
    lines = [f"{len(requests)} requests{per}: {', '.join(parts)}; {not_found} answered 404"]
    for (method, route, status), n in count_routes(requests).most_common(top):
        lines.append(f"  {n:5d}  {method} {route} {status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a Tiled server's log (its stdout and stderr)")
    parser.add_argument("--runs", type=int, default=1, help="runs the log covers (per-run counts)")
    parser.add_argument("--top", type=int, default=30, help="routes listed, most frequent first")
    args = parser.parse_args(argv)
    print(summary(read_log(args.log), args.runs, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
