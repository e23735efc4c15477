"""The Dask cluster the slabs run on, and what its workers report about their memory."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from services.core.settings import DaskSettings

logger = logging.getLogger(__name__)


@contextmanager
def open_client(settings: DaskSettings) -> Iterator[Any]:
    """A ``distributed.Client``: on ``settings.scheduler_address``, else on a LocalCluster.

    The LocalCluster runs ``n_workers`` worker processes (one nanny each) of
    ``threads_per_worker`` threads, each with ``memory_limit_mb``: the nanny restarts a
    worker that goes beyond 95 % of it (Dask's ``terminate`` fraction), so a task that does
    not fit fails loudly instead of swapping the machine.
    """
    from distributed import Client, LocalCluster

    if settings.scheduler_address:
        logger.info("slabs on the Dask scheduler %s", settings.scheduler_address)
        with Client(settings.scheduler_address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            memory_limit=int(settings.memory_limit_mb * 2**20),
            # a free loopback port: None would mean the default :8787, which another
            # cluster (or process) on this machine may hold
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "slabs on a LocalCluster: %d workers x %d threads, %.0f MB each",
            settings.n_workers,
            settings.threads_per_worker,
            settings.memory_limit_mb,
        )
        yield client


def run_tasks(
    client: Any,
    function: Callable[..., Any],
    arguments: Sequence[tuple[Any, ...]],
    *,
    progress: Callable[[int], None] | None = None,
    weights: Sequence[int] | None = None,
) -> list[Any]:
    """Run ``function(*args)`` for every tuple of ``arguments`` on the cluster, in order.

    ``progress`` is called with ``weights[i]`` (default 1) as task i finishes; the first
    failing task raises here (the others are cancelled).
    """
    from distributed import as_completed

    futures = [client.submit(function, *args, pure=False) for args in arguments]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            if progress is not None:
                progress(weights[i] if weights is not None else 1)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def _peak_rss_mb() -> float:
    """Peak resident memory of this process's own program so far (MB).

    Linux's ``VmHWM`` (the high-water mark of this address space), not ``getrusage``'s
    ``ru_maxrss``: that one survives ``fork`` + ``exec``, so a worker spawned from a large
    process (a test session holding torch and a few volumes) would report its parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_peak_memory_mb(client: Any) -> dict[str, float]:
    """Peak resident memory (MB) of every worker process since it started."""
    return dict(client.run(_peak_rss_mb))


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (s)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_cpu_seconds(client: Any) -> float:
    """CPU time the worker processes have used so far (s), summed: unlike wall time, about
    what a stage costs whatever else the machine runs."""
    return float(sum(client.run(_cpu_seconds).values()))


def worker_ids(client: Any) -> dict[str, int]:
    """Worker address -> process id, to tell a restarted worker (a new pid) from the same."""
    import os

    return dict(client.run(os.getpid))
