import pickle

import numpy as np
import pytest

from services.core.serialization import (
    MalformedMessage,
    dumps,
    format_bus_message,
    loads,
    parse_bus_message,
)


def test_roundtrip_keeps_arrays_dtype_and_shape():
    doc = {
        "uid": "x",
        "data": {"img": np.arange(12, dtype=np.uint16).reshape(3, 4), "e": np.float64(8.3)},
    }
    out = loads(dumps(doc))
    assert out["data"]["img"].dtype == np.uint16
    np.testing.assert_array_equal(out["data"]["img"], doc["data"]["img"])
    assert out["data"]["e"] == pytest.approx(8.3)


def test_external_publisher_recipe_matches_our_decoder():
    # The README recipe, written without beamwatch imports.
    import msgpack

    def default(obj):
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            return msgpack.ExtType(
                1, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
            )
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(type(obj))

    frame = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    payload = msgpack.packb({"data": {"f": frame}}, default=default)
    np.testing.assert_array_equal(loads(payload)["data"]["f"], frame)


def test_pickle_payload_is_rejected_without_being_unpickled():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    message = b" start " + pickle.dumps(Boom())
    with pytest.raises(MalformedMessage):
        parse_bus_message(message)


@pytest.mark.parametrize(
    "message, fragment",
    [
        (b"no-spaces", "split"),
        (b" nonsense " + dumps({}), "unknown document name"),
        (b" start " + dumps([1, 2]), "expected a map"),
        (b" start \xff\xfe", "not valid msgpack"),
    ],
)
def test_malformed_messages_say_what_is_wrong(message, fragment):
    with pytest.raises(MalformedMessage, match=fragment):
        parse_bus_message(message)


def test_object_and_truncated_arrays_are_refused():
    import msgpack

    bad = msgpack.ExtType(1, msgpack.packb(["|O", [2], b"12345678" * 2]))
    with pytest.raises(MalformedMessage, match="not allowed"):
        loads(msgpack.packb({"a": bad}))
    short = msgpack.ExtType(1, msgpack.packb(["<f8", [4], b"1234"]))
    with pytest.raises(MalformedMessage, match="expected 32"):
        loads(msgpack.packb({"a": short}))


def test_bus_message_format_matches_bluesky_publisher():
    name, doc = parse_bus_message(format_bus_message("stop", {"uid": "u"}))
    assert (name, doc) == ("stop", {"uid": "u"})
