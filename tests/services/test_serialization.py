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


def test_msgpack_numpy_arrays_and_scalars_are_decoded():
    import msgpack
    import msgpack_numpy

    from services.core.serialization import parse_bus_message

    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    doc = {"data": {"img": frame, "e": np.float64(8333.5), "ok": np.bool_(True)}, "seq_num": 1}
    message = b" event " + msgpack.packb(doc, default=msgpack_numpy.encode)
    name, out = parse_bus_message(message)
    assert name == "event"
    assert out["data"]["img"].dtype == np.uint16
    np.testing.assert_array_equal(out["data"]["img"], frame)
    assert out["data"]["e"] == 8333.5 and out["data"]["ok"] is True


def test_msgpack_numpy_object_arrays_are_refused_without_unpickling():
    import msgpack
    import msgpack_numpy

    from services.core.serialization import UndecodableField, parse_bus_message

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    evil = np.empty(1, dtype=object)
    evil[0] = Boom()
    good = np.ones((2, 2))
    payload = msgpack.packb(
        {"data": {"evil": evil, "good": good}}, default=msgpack_numpy.encode, use_bin_type=True
    )
    _, out = parse_bus_message(b" event " + payload)
    assert isinstance(out["data"]["evil"], UndecodableField)
    assert "object" in out["data"]["evil"].reason
    np.testing.assert_array_equal(out["data"]["good"], good)


def test_json_payloads_are_decoded():
    import json

    name, out = parse_bus_message(b" start " + json.dumps({"uid": "u1", "time": 1.0}).encode())
    assert (name, out) == ("start", {"uid": "u1", "time": 1.0})
    with pytest.raises(MalformedMessage, match="not valid JSON"):
        parse_bus_message(b" start {not json")


def test_one_bad_array_does_not_cost_the_document():
    import msgpack

    from services.core.serialization import UndecodableField, parse_bus_message

    short = msgpack.ExtType(1, msgpack.packb(["<f8", [4], b"1234"]))
    _, out = parse_bus_message(b" event " + msgpack.packb({"data": {"a": short, "b": 2.0}}))
    assert isinstance(out["data"]["a"], UndecodableField) and out["data"]["b"] == 2.0
