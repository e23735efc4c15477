from prometheus_client import CollectorRegistry

from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher, RunRouter


class Recorder(RunRouter):
    def __init__(self, start):
        self.calls = [("start", start["uid"])]
        self.lost = []

    def descriptor(self, doc):
        self.calls.append(("descriptor", doc["uid"]))

    def event(self, doc):
        self.calls.append(("event", doc["seq_num"]))

    def stream_datum(self, doc):
        self.calls.append(("stream_datum", (doc["indices"]["start"], doc["indices"]["stop"])))

    def events_lost(self, descriptor, seq_nums):
        self.lost.append(seq_nums)

    def stream_lost(self, stream, seq_nums):
        self.lost.append((stream, seq_nums))

    def stop(self, doc):
        self.calls.append(("stop", doc is None))


def _metric(metrics, name, **labels):
    value = metrics.registry.get_sample_value(name, {"service": "t", **labels})
    return value or 0.0


def make(recover=None, clock=None):
    metrics = Metrics("t", CollectorRegistry())
    routers = []

    def factory(start):
        r = Recorder(start)
        routers.append(r)
        return r

    kwargs = {"recover_start": recover, "idle_timeout": 10.0}
    if clock:
        kwargs["clock"] = clock
    return RunDispatcher([factory], metrics, **kwargs), routers, metrics


def docs(uid="run1"):
    start = {"uid": uid, "time": 0.0}
    desc = {"uid": f"{uid}-d", "run_start": uid, "name": "primary", "data_keys": {}}
    events = [
        {"uid": f"e{i}", "descriptor": desc["uid"], "seq_num": i, "time": 0.0, "data": {}}
        for i in range(1, 6)
    ]
    stop = {"uid": "s", "run_start": uid, "time": 1.0, "exit_status": "success"}
    return start, desc, events, stop


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_seq_num_gap_is_counted_and_passed_to_routers():
    clock = Clock()
    d, routers, metrics = make(clock=clock)
    start, desc, events, stop = docs()
    d("start", start)
    d("descriptor", desc)
    for e in events:
        if e["seq_num"] not in (2, 3):
            d("event", e)
    d("stop", stop)
    assert routers[0].lost == [] and ("stop", False) not in routers[0].calls  # waits a while
    clock.now += 6.0  # past the reorder timeout (5 s): the gap is given up
    d.sweep()
    assert routers[0].lost == [[2, 3]]
    assert routers[0].calls[-1] == ("stop", False)
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="event") == 2
    assert [c for c in routers[0].calls if c[0] == "event"] == [
        ("event", 1),
        ("event", 4),
        ("event", 5),
    ]


def test_missing_start_is_recovered_from_the_callback():
    recovered = {"uid": "run1", "time": 0.0, "plan_name": "from-tiled"}
    d, routers, metrics = make(recover=lambda uid: recovered if uid == "run1" else None)
    start, desc, events, stop = docs()
    d("descriptor", desc)
    d("event", events[0])
    d("stop", stop)
    assert routers[0].calls[0] == ("start", "run1")
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="start") == 1
    assert _metric(metrics, "beamwatch_messages_recovered_total", kind="start") == 1


def test_missing_start_without_recovery_still_opens_the_run():
    d, routers, metrics = make()
    start, desc, events, stop = docs()
    d("descriptor", desc)
    assert routers and routers[0].calls[0] == ("start", "run1")
    assert _metric(metrics, "beamwatch_messages_recovered_total", kind="start") == 0


def test_stream_datum_gap_is_rebuilt_in_order():
    d, routers, metrics = make()
    start, desc, _events, stop = docs()
    d("start", start)
    d("descriptor", desc)
    d(
        "stream_resource",
        {"uid": "sr", "run_start": "run1", "data_key": "img", "uri": "file:///x.h5"},
    )
    for i in (0, 3):
        d(
            "stream_datum",
            {
                "uid": f"sd{i}",
                "stream_resource": "sr",
                "descriptor": desc["uid"],
                "indices": {"start": i, "stop": i + 1},
                "seq_nums": {"start": i + 1, "stop": i + 2},
            },
        )
    got = [c[1] for c in routers[0].calls if c[0] == "stream_datum"]
    assert got == [(0, 1), (1, 3), (3, 4)]
    assert _metric(metrics, "beamwatch_messages_recovered_total", kind="stream_datum") == 1


def test_idle_run_gets_a_lost_stop():
    now = [0.0]
    d, routers, metrics = make(clock=lambda: now[0])
    start, desc, events, _stop = docs()
    d("start", start)
    d("descriptor", desc)
    now[0] = 5.0
    d.sweep()
    assert d.open_runs == ["run1"]
    now[0] = 20.0
    d.sweep()
    assert d.open_runs == []
    assert routers[0].calls[-1] == ("stop", True)
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="stop") == 1


def test_a_failing_router_does_not_stop_the_others():
    metrics = Metrics("t", CollectorRegistry())

    class Broken(RunRouter):
        def event(self, doc):
            raise RuntimeError("boom")

    good = []
    d = RunDispatcher([lambda s: Broken(), lambda s: good.append(Recorder(s)) or good[-1]], metrics)
    start, desc, events, stop = docs()
    for name, doc in [("start", start), ("descriptor", desc), ("event", events[0]), ("stop", stop)]:
        d(name, doc)
    assert ("event", 1) in good[0].calls
    assert (
        metrics.registry.get_sample_value(
            "beamwatch_pipeline_errors_total", {"service": "t", "pipeline": "Broken"}
        )
        == 1
    )


def test_document_missing_fields_is_counted_as_malformed():
    d, routers, metrics = make()
    d("descriptor", {"uid": "d"})  # no run_start
    assert _metric(metrics, "beamwatch_messages_malformed_total", reason="schema") == 1


def test_bad_fields_are_dropped_named_and_counted_and_the_rest_kept():
    import numpy as np

    from services.core.serialization import UndecodableField

    seen = []

    class Recorder(RunRouter):
        def event(self, doc):
            seen.append(("event", doc["seq_num"], sorted(doc["data"])))

        def bad_fields(self, descriptor, seq_num, problems):
            seen.append(("bad", seq_num, sorted(problems)))

    metrics = Metrics("t")
    d = RunDispatcher([lambda start: Recorder()], metrics)
    d("start", {"uid": "r", "time": 0})
    keys = {
        "img": {"shape": [4, 4], "dtype": "array", "source": "sim"},
        "e": {"shape": [], "dtype": "number", "source": "sim"},
    }
    d("descriptor", {"uid": "d", "run_start": "r", "name": "primary", "data_keys": keys})
    good = np.zeros((4, 4))
    bad_images = [
        np.zeros((1, 1, 4, 4)),
        np.zeros((0, 4)),
        np.float64(3.0),
        "not an image",
        np.zeros((5, 5)),
        UndecodableField("why"),
    ]
    for seq, img in enumerate([good, *bad_images, good], start=1):
        d(
            "event",
            {
                "descriptor": "d",
                "seq_num": seq,
                "time": 0,
                "data": {"img": img, "e": 1.0},
                "timestamps": {"img": 0, "e": 0},
            },
        )
    d(
        "event",
        {
            "descriptor": "d",
            "seq_num": 9,
            "time": 0,
            "data": {"img": good, "e": "x"},
            "timestamps": {"img": 0, "e": 0},
        },
    )
    events = [s for s in seen if s[0] == "event"]
    assert [s[1] for s in events] == list(range(1, 10))  # no event lost
    assert [s[2] for s in events] == [["e", "img"]] + [["e"]] * 6 + [["e", "img"], ["img"]]
    assert [s[1:] for s in seen if s[0] == "bad"] == [(q, ["img"]) for q in range(2, 8)] + [
        (9, ["e"])
    ]
    total = sum(
        metrics.registry.get_sample_value(
            "beamwatch_event_fields_dropped_total", {"service": "t", "problem": p}
        )
        or 0
        for p in ("shape", "type", "dtype", "undecodable", "unknown key")
    )
    assert total == 7


def test_reordered_duplicated_late_and_missing_events_are_ordered_and_counted():
    clock = Clock()
    d, routers, metrics = make(clock=clock)
    start, desc, events, stop = docs()
    stop = dict(stop, num_events={"primary": 6})
    by_seq = {e["seq_num"]: e for e in events}
    by_seq[6] = dict(by_seq[5], seq_num=6, uid="e6")
    # an event before its descriptor, two swapped, one twice, one missing (4), stop early
    d("start", start)
    d("event", by_seq[1])
    d("descriptor", desc)
    for seq in (3, 2, 2, 5):
        d("event", by_seq[seq])
    d("stop", stop)
    d("event", by_seq[6])  # after the stop
    seen = [c[1] for c in routers[0].calls if c[0] == "event"]
    assert seen == [1, 2, 3]  # 5 and 6 wait for 4
    assert ("stop", False) not in routers[0].calls
    clock.now += 6.0
    d.sweep()
    seen = [c[1] for c in routers[0].calls if c[0] == "event"]
    assert seen == [1, 2, 3, 5, 6]
    assert routers[0].lost == [[4]]
    assert routers[0].calls[-1] == ("stop", False)
    assert _metric(metrics, "beamwatch_messages_duplicated_total", kind="event") == 1
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="event") == 1


def test_a_stop_before_the_last_events_waits_for_them():
    d, routers, metrics = make(clock=Clock())
    start, desc, events, stop = docs()
    d("start", start)
    d("descriptor", desc)
    for e in events[:3]:
        d("event", e)
    d("stop", dict(stop, num_events={"primary": 5}))
    assert ("stop", False) not in routers[0].calls
    for e in events[3:]:
        d("event", e)
    assert [c[1] for c in routers[0].calls if c[0] == "event"] == [1, 2, 3, 4, 5]
    assert routers[0].calls[-1] == ("stop", False) and routers[0].lost == []


def test_a_stop_whose_announced_events_never_come_declares_them_lost():
    clock = Clock()
    d, routers, metrics = make(clock=clock)
    start, desc, events, stop = docs()
    d("start", start)
    d("descriptor", desc)
    for e in events[:3]:
        d("event", e)
    d("stop", dict(stop, num_events={"primary": 5}))
    clock.now += 6.0
    d.sweep()
    assert routers[0].lost == [[4, 5]]
    assert routers[0].calls[-1] == ("stop", False)


def test_pages_are_routed_as_their_single_documents():
    from event_model import pack_datum_page, pack_event_page

    d, routers, metrics = make()
    start, desc, events, stop = docs()
    seen = []

    class PageRecorder(Recorder):
        def event(self, doc):
            seen.append(doc)

        def datum(self, doc):
            seen.append(doc)

    d = RunDispatcher([PageRecorder], metrics, idle_timeout=10.0)
    desc["data_keys"] = {"x": {"dtype": "number", "shape": [], "source": "s"}}
    d("start", start)
    d("descriptor", desc)
    for e in events:
        e.update(data={"x": float(e["seq_num"])}, timestamps={"x": 0.5})
    d("event_page", pack_event_page(*events[:3]))
    resource = {"uid": "res1", "run_start": "run1", "spec": "S", "root": "/", "resource_path": "f"}
    d("resource", resource)
    datums = [
        {"datum_id": f"res1/{i}", "resource": "res1", "datum_kwargs": {"i": i}} for i in (0, 1)
    ]
    d("datum_page", pack_datum_page(*datums))
    assert [(e["seq_num"], e["data"], e["uid"]) for e in seen[:3]] == [
        (i, {"x": float(i)}, f"e{i}") for i in (1, 2, 3)
    ]
    assert [(x["datum_id"], x["datum_kwargs"]) for x in seen[3:]] == [
        ("res1/0", {"i": 0}),
        ("res1/1", {"i": 1}),
    ]
    # a page whose lists disagree in length is refused whole, not padded with empty events
    short = pack_event_page(*events[3:])
    short["uid"] = short["uid"][:1]
    d("event_page", short)
    assert len(seen) == 5
    assert _metric(metrics, "beamwatch_messages_malformed_total", reason="schema") == 1


def test_a_stream_the_stop_counts_without_its_descriptor_is_lost_for_the_routers():
    # the flat descriptor and its events never came (in flight at a consumer's kill): the
    # stop's num_events is the only trace, and the routers must hear of it (chaos, seed 14)
    clock = Clock()
    d, routers, metrics = make(clock=clock)
    start, desc, events, stop = docs()
    d("start", start)
    d("descriptor", desc)
    for e in events:
        d("event", e)
    d("stop", {**stop, "num_events": {"primary": 5, "flat": 3}})
    clock.now += 6.0
    d.sweep()
    assert routers[0].lost == [("flat", [1, 2, 3])]
    assert routers[0].calls[-1] == ("stop", False)
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="descriptor") == 1


def test_a_stop_alone_opens_its_run_once_the_start_is_in_tiled():
    # nothing of the run but its stop came; the raw path writes the start to Tiled a little
    # later: the start is looked for again until it is there
    clock = Clock()
    start, desc, events, stop = docs()
    in_tiled = {}
    d, routers, metrics = make(recover=in_tiled.get, clock=clock)
    d("stop", {**stop, "num_events": {"primary": 5}})
    assert routers == []
    clock.now += 1.0
    d.sweep()
    assert routers == []  # not looked for again yet (every 2 s)
    in_tiled[start["uid"]] = start
    clock.now += 1.5
    d.sweep()
    assert len(routers) == 1 and routers[0].calls[0] == ("start", start["uid"])
    clock.now += 6.0  # the stop waits for its events, then the stream is lost
    d.sweep()
    assert routers[0].lost == [("primary", [1, 2, 3, 4, 5])]
    assert routers[0].calls[-1] == ("stop", False)
    assert _metric(metrics, "beamwatch_messages_recovered_total", kind="start") == 1
    d("stop", stop)  # the same stop again: the run is finished, nothing more
    assert len(routers) == 1 and routers[0].calls.count(("stop", False)) == 1


def test_a_stop_alone_whose_start_never_comes_makes_no_run():
    clock = Clock()
    _start, _desc, _events, stop = docs()
    d, routers, metrics = make(recover=lambda uid: None, clock=clock)
    d("stop", stop)
    for _ in range(100):
        clock.now += 2.5
        d.sweep()
    assert routers == [] and d.open_runs == []
    assert _metric(metrics, "beamwatch_messages_lost_total", kind="start") == 1


def test_documents_delivered_again_after_the_run_finished_neither_reopen_it_nor_count_lost():
    # JetStream redelivers what a killed consumer had journaled but not acknowledged; the
    # journal's replay may finish the run (its stop was journaled) before they come again.
    clock = Clock()
    d, routers, metrics = make(clock=clock)
    start, desc, events, stop = docs()
    d.replay("run1", [("start", start), ("descriptor", desc), *(("event", e) for e in events)])
    d("stop", stop)
    assert routers[0].calls[-1] == ("stop", False)
    for name, doc in [("descriptor", desc), *(("event", e) for e in events[-2:]), ("stop", stop)]:
        d(name, doc)
    clock.now += 60.0  # past the reorder and idle timeouts
    d.sweep()
    assert len(routers) == 1  # not reopened as a run whose start was never seen
    assert routers[0].calls.count(("stop", False)) == 1
    assert routers[0].lost == []
    lost = [
        _metric(metrics, "beamwatch_messages_lost_total", kind=k)
        for k in ("start", "descriptor", "event")
    ]
    assert lost == [0, 0, 0]
    assert _metric(metrics, "beamwatch_messages_duplicated_total", kind="event") == 2
    assert _metric(metrics, "beamwatch_messages_duplicated_total", kind="descriptor") == 1


def test_a_long_lived_dispatcher_forgets_the_oldest_finished_runs_but_not_recent_ones(
    monkeypatch,
):
    import services.runs.routing as routing

    monkeypatch.setattr(routing, "FINISHED_KEPT", 20)
    d, routers, metrics = make()
    for i in range(60):
        start, desc, events, stop = docs(f"run{i}")
        for name, doc in [
            ("start", start),
            ("descriptor", desc),
            ("stop", {**stop, "uid": f"s{i}"}),
        ]:
            d(name, doc)
    assert len(routers) == 60 and d.open_runs == []
    # memory stays bounded: at most FINISHED_KEPT + 10 % runs and their descriptors remembered
    assert 20 <= len(d._finished) <= 22
    assert len(d._run_of_descriptor) == len(d._finished)
    assert set(d._run_of_descriptor.values()) == set(d._finished)
    # a recent run's descriptor delivered again is still known as a duplicate, not a new run
    start, desc, events, stop = docs("run59")
    d("descriptor", desc)
    assert len(routers) == 60
    assert _metric(metrics, "beamwatch_messages_duplicated_total", kind="descriptor") == 1
