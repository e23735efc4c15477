"""A beamline user's RunEngine: only bluesky, ophyd.sim, pyzmq, msgpack and numpy.

Publishes one run to the proxy with the msgpack serializer documented in the README, then
prints the run uid. It pings (``beamwatch_ping``) until the test writes ``go`` on stdin, so the
run starts only once 0MQ has connected (a plain user would sleep a second instead).
"""

import select
import sys

import msgpack
import numpy as np
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.plans import count
from ophyd.sim import direct_img


def default(obj):
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(1, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj)!r}")


def serializer(doc):
    return msgpack.packb(doc, default=default)


publisher = Publisher(sys.argv[1], serializer=serializer)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    publisher("beamwatch_ping", {})
sys.stdin.readline()
RE = RunEngine({})
RE.subscribe(publisher)
(uid,) = RE(count([direct_img], num=3), sample="external user")
print(uid, flush=True)
publisher.close()
