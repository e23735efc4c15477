"""An analysis worker process that dies on the first frame of a run whose plan is ``poison``.

Stands in for a bug that crashes every worker taking a run (a document that segfaults a
library, exhausts memory): the process SIGKILLs itself, as the kernel would. Any other run it
processes as ``beamwatch worker`` does. Settings come from the environment (``BEAMWATCH_*``).

    python -m tests.services.poison_worker DATA_DIR NATS_URL METRICS_PORT
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.logs import configure_logging
from services.core.settings import load_settings
from services.runtime.consumer import Consumer

POISON_PLAN = "poison"


class CrashOnFirstFrame:
    name = "crash"
    version = "1"

    def __init__(self, start: dict[str, Any]) -> None:
        self.parameters: dict[str, Any] = {}

    def on_frame(self, frame: Any, out: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def on_stop(self, stop: Any, out: Any) -> None:
        pass


def main(data_dir: str, nats_url: str, metrics_port: int) -> int:
    settings = load_settings(data_dir=data_dir, bus={"mode": "nats", "nats_url": nats_url})
    configure_logging("INFO", service="poison-worker")
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    registry.register(
        "crash", lambda start: start.get("plan_name") == POISON_PLAN, CrashOnFirstFrame
    )
    consumer = Consumer("analysis", settings, registry=registry)
    consumer.metrics.serve(settings.metrics.host, metrics_port)
    return consumer.run_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
