"""Alignment feedback: a plan hook that reads beamwatch's live drift and re-centres the sample.

beamwatch's XANES consumer publishes, after each frame, one JSON message on a 0MQ PUB socket
(``bus.feedback_address``)::

    {"run_uid": ..., "seq_num": 7, "energy": 8342.0, "dy_px": 1.3, "dx_px": -0.4,
     "dy_um": 0.039, "dx_um": -0.012}

The shift is the measured global drift of the current frame relative to frame 0 of the scan,
in (row, col) order. :class:`DriftFeedback` turns it into stage moves before each energy point:
the correction accumulates (``new position = position - gain * measured shift``), so the sample
stays where it was in the first frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import zmq

logger = logging.getLogger(__name__)


class DriftFeedback:
    """A ``before_point`` hook for :func:`bluesky_plans.plans.xanes_scan_plan`.

    Parameters
    ----------
    address : str
        The consumer's feedback PUB address, e.g. ``tcp://127.0.0.1:5579``.
    stage_y, stage_x : ophyd positioners
        Sample stage axes in micrometres.
    pixel_size_um : float
        Detector pixel size at the sample, to convert pixels into stage units.
    gain : float
        Fraction of the measured drift corrected per point (1 = full correction).
    wait_s : float
        How long to wait for the previous point's message before moving on.
    """

    def __init__(
        self,
        address: str,
        stage_y: Any,
        stage_x: Any,
        pixel_size_um: float,
        *,
        gain: float = 1.0,
        wait_s: float = 2.0,
        context: zmq.Context | None = None,
    ) -> None:
        if pixel_size_um <= 0:
            raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.stage_y, self.stage_x = stage_y, stage_x
        self.pixel_size_um = pixel_size_um
        self.gain = gain
        self.wait_s = wait_s
        self.corrections: list[tuple[int, float, float]] = []
        self._last_seq = 0
        self.run_uid: str | None = None

    def document(self, name: str, doc: dict[str, Any]) -> None:
        """Subscribe this to the RunEngine (``RE.subscribe(feedback.document)``) so only drift
        messages of the run being acquired are used."""
        if name == "start":
            self.run_uid = doc["uid"]
            self._last_seq = 0

    def _latest(self, want_seq: int) -> dict[str, Any] | None:
        """The newest drift message; wait up to ``wait_s`` for ``seq_num >= want_seq``."""
        latest = None
        timeout_ms = int(self.wait_s * 1000)
        while self._socket.poll(timeout_ms, zmq.POLLIN):
            try:
                msg = json.loads(self._socket.recv())
            except ValueError:
                continue
            if self.run_uid is not None and msg.get("run_uid") != self.run_uid:
                continue  # an older run's drift
            if int(msg.get("seq_num", 0)) <= self._last_seq:
                continue
            latest = msg
            if int(msg["seq_num"]) >= want_seq:
                timeout_ms = 0  # drain anything newer, then stop
        return latest

    def __call__(self, index: int, energy: float) -> Generator[Any, Any, None]:
        if index == 0:
            self._last_seq = 0
            return (yield from bps.null())
        msg = self._latest(want_seq=index)
        if msg is None:
            logger.warning("no drift message for point %d; stage not moved", index)
            return (yield from bps.null())
        self._last_seq = int(msg["seq_num"])
        dy, dx = float(msg["dy_px"]), float(msg["dx_px"])
        y = float(self.stage_y.position) - self.gain * dy * self.pixel_size_um
        x = float(self.stage_x.position) - self.gain * dx * self.pixel_size_um
        self.corrections.append((index, dy, dx))
        yield from bps.mv(self.stage_y, y, self.stage_x, x)

    def close(self) -> None:
        self._socket.close(0)
