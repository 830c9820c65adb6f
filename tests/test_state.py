"""Tests for archiver.state.State, checked against celery.events.state.State as the oracle."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid as uuidlib
from collections import defaultdict

import pytest
from celery.events.state import State as CeleryState
from celery.events.state import Task as CeleryTask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver.state import (
    HEAP_CHUNK,
    LRU,
    PRECEDENCE,
    READY_STATES,
    State,
    Task,
    Worker,
    heartbeat_expires,
    precedence,
)

from .helpers import SAMPLE, celery_state, read_events

#: Celery's drift warning raises for far-future times; the oracle keeps quiet.
pytestmark = pytest.mark.usefixtures("celery_drift_warning_off")

EVENT_TIMES = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)
TASK_FIELDS = (
    "state",
    "name",
    "retries",
    "result",
    "exception",
    *EVENT_TIMES,
    "timestamp",
    "args",
    "kwargs",
    "eta",
    "expires",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "client",
    "clock",
    "root_id",
    "parent_id",
)
WORKER_FIELDS = (
    "processed",
    "active",
    "heartbeats",
    "pid",
    "freq",
    "clock",
    "loadavg",
    "sw_ident",
    "sw_ver",
    "sw_sys",
    "alive",
)


# -- helpers ---------------------------------------------------------------------------------


def task_event(type_: str, uuid: str = "t1", *, hostname: str = "w1@vm", ts: float = 100.0, **kw):
    """A well-formed task event as Celery's receiver hands it over."""
    event = {
        "type": f"task-{type_}",
        "uuid": uuid,
        "hostname": hostname,
        "timestamp": ts,
        "local_received": ts + 0.01,
        "clock": int(ts),
        "pid": 1,
        "utcoffset": 0.0,
    }
    event.update(kw)
    return event


def worker_event(
    type_: str, hostname: str = "w1@vm", *, ts: float = 100.0, received: float | None = None, **kw
):
    """A well-formed worker event."""
    event = {
        "type": f"worker-{type_}",
        "hostname": hostname,
        "timestamp": ts,
        "local_received": ts + 0.01 if received is None else received,
        "clock": 1,
        "freq": 2.0,
        "pid": 10,
        "active": 0,
        "processed": 0,
        "loadavg": [0.1, 0.2, 0.3],
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "utcoffset": 0.0,
    }
    event.update(kw)
    return event


def feed(state, events) -> None:
    """Feed a private copy of every event (Celery's State mutates the dicts it is given)."""
    for event in events:
        state.event(dict(event))


def both(events, **kwargs) -> tuple[State, CeleryState]:
    """An archiver State and a Celery State fed the same events."""
    ours, theirs = State(**kwargs), CeleryState(**kwargs)
    feed(ours, events)
    feed(theirs, events)
    return ours, theirs


def task_view(task) -> dict:
    view = {field: getattr(task, field, None) for field in TASK_FIELDS}
    view["worker"] = task.worker.hostname if task.worker is not None else None
    return view


def worker_view(worker) -> dict:
    beats = worker.heartbeats
    if beats and type(beats[-1]) is int and beats[-1] > 1e308:  # Celery's alive overflows
        return {f: getattr(worker, f, None) for f in WORKER_FIELDS if "alive" not in f}
    return {field: getattr(worker, field, None) for field in WORKER_FIELDS}


def state_view(state, *, weak_sets: bool = True) -> dict:
    """Everything comparable between the two States (weak sets only when nothing was evicted)."""
    view = {
        "tasks": {uuid: task_view(task) for uuid, task in state.tasks.items()},
        "task_order": list(state.tasks),
        "workers": {name: worker_view(worker) for name, worker in state.workers.items()},
        "worker_order": list(state.workers),
        "event_count": state.event_count,
        "task_count": state.task_count,
        "task_types": sorted(state._seen_types, key=str),  # Celery cannot sort a name 42
    }
    if weak_sets:
        view["children"] = {
            uuid: sorted(child.uuid for child in task.children)
            for uuid, task in state.tasks.items()
        }
        for index in ("tasks_by_type", "tasks_by_worker"):
            view[index] = {
                key: sorted(task.uuid for task in tasks)
                for key, tasks in getattr(state, index).items()
                if tasks
            }
    return view


def assert_same(ours: dict, theirs: dict) -> None:
    """Compare two state views, naming the first task or worker that differs."""
    assert ours["task_order"] == theirs["task_order"]
    for uuid, task in theirs["tasks"].items():
        assert ours["tasks"][uuid] == task, uuid
    for name, worker in theirs["workers"].items():
        assert ours["workers"][name] == worker, name
    assert ours == theirs


def ready_and_unready(state) -> tuple[set[str], set[str]]:
    ready = {u for u, t in state.tasks.items() if t.state in READY_STATES}
    return ready, set(state.tasks) - ready


# -- recorded events, for the property tests -----------------------------------------------------

EVENTS = read_events(SAMPLE)
EVENTS_BY_TASK: dict[str, list[dict]] = defaultdict(list)
WORKER_EVENTS: list[dict] = []
for _event in EVENTS:
    if _event["type"].startswith("task-"):
        EVENTS_BY_TASK[_event["uuid"]].append(_event)
    else:
        WORKER_EVENTS.append(_event)
TASK_UUIDS = sorted(EVENTS_BY_TASK)
TASK_EVENTS = [e for e in EVENTS if e["type"].startswith("task-")]


def _without(key):
    return lambda e: {k: v for k, v in e.items() if k != key}


def _with(key, value):
    return lambda e: {**e, key: value}


# Malformed: Celery's State raises on them, or archiver refuses them on purpose (an
# identity field that is not a string, a task type without a subject, a freq that is
# not a number), and they are skipped.
COMMON_MUTATIONS = [
    _without("type"),
    _with("type", 7),
    _with("type", None),
    _with("type", ["task-sent"]),
    _without("hostname"),
    _with("hostname", None),
    _with("hostname", ["w1@vm"]),
    _without("timestamp"),
    _without("local_received"),
    lambda e: {**e, "type": e["type"].partition("-")[0]},
    lambda e: {**e, "type": e["type"].partition("-")[0] + "-"},
]
HEARTBEAT_MUTATIONS = [  # int() of them fails in Celery's heartbeat (not for task-sent)
    _with("timestamp", "yesterday"),
    lambda e: {**e, "timestamp": str(e["timestamp"])},
    _with("timestamp", float("nan")),
    _with("local_received", "now"),
    _with("local_received", float("inf")),
]
TASK_MUTATIONS = [
    _without("uuid"),
    _with("uuid", None),
    _with("uuid", 1234),
    _with("uuid", ""),
    _without("clock"),
    lambda e: {**e, "name": [e.get("name", "x")]},
    _with("parent_id", ["p"]),
]
WORKER_MUTATIONS = [
    _with("freq", "2.0"),
    lambda e: {**e, 1: "non-string key"},
]
# Odd but accepted: Celery's State stores these values, so archiver does too.
ODD_COMMON = [_with("timestamp", None), _with("timestamp", 10**400), _with("timestamp", True)]
ODD_TASK = [
    lambda e: {**e, "clock": str(e["clock"])},
    lambda e: {**e, "clock": e["clock"] + 0.5},
    _with("clock", None),
    _with("clock", 10**400),
    _with("name", 42),
    _with("parent_id", 5),
    _with("root_id", {"id": 1}),
    _with("retries", "1"),
    _with("runtime", "fast"),
    _with("runtime", 10**400),
    _with("local_received", None),
]
ODD_WORKER = [
    _with("clock", "3"),
    _with("pid", "10041"),
    _with("active", 1.5),
    _with("processed", "7"),
    _with("loadavg", "0.1 0.2 0.3"),
    _with("loadavg", [0.1, "0.2", 0.3]),
    _with("local_received", 10**400),
]


NOT_DICTS = [None, 42, 3.5, "task-succeeded", b'{"type": "task-sent"}', [EVENTS[0]], ("type",)]


def _mutations_for(event):
    if event["type"] == "task-sent":
        return COMMON_MUTATIONS + TASK_MUTATIONS
    extra = TASK_MUTATIONS if event["type"].startswith("task-") else WORKER_MUTATIONS
    return COMMON_MUTATIONS + HEARTBEAT_MUTATIONS + extra


def _odd_for(event):
    if event["type"] == "task-sent":
        return ODD_COMMON + ODD_TASK + HEARTBEAT_MUTATIONS
    extra = ODD_TASK if event["type"].startswith("task-") else ODD_WORKER
    return ODD_COMMON + extra


odd_events = st.sampled_from(EVENTS).flatmap(
    lambda e: st.sampled_from(_odd_for(e)).map(lambda mutate: mutate(dict(e)))
)
malformed_events = st.one_of(
    st.sampled_from(NOT_DICTS),
    st.sampled_from(EVENTS).flatmap(
        lambda e: st.sampled_from(_mutations_for(e)).map(lambda mutate: mutate(dict(e)))
    ),
)


@st.composite
def event_sequences(draw, max_tasks: int = 30):
    """Real events of a few tasks, some dropped, some duplicated, shuffled, with malformed ones
    slipped in. Returns ``[(event, is_malformed), ...]``."""
    uuids = draw(st.lists(st.sampled_from(TASK_UUIDS), min_size=3, max_size=max_tasks, unique=True))
    pool = [e for u in uuids for e in EVENTS_BY_TASK[u]]
    pool += draw(st.lists(st.sampled_from(WORKER_EVENTS), max_size=6))
    dropped = draw(st.sets(st.integers(0, len(pool) - 1), max_size=len(pool) // 3))
    pool = [e for i, e in enumerate(pool) if i not in dropped]
    if pool:
        pool += draw(st.lists(st.sampled_from(pool), max_size=12))
    pool += draw(st.lists(odd_events, max_size=6))
    sequence = [(e, False) for e in draw(st.permutations(pool))]
    for bad in draw(st.lists(malformed_events, max_size=8)):
        sequence.insert(draw(st.integers(0, len(sequence))), (bad, True))
    return sequence


# -- unit tests ---------------------------------------------------------------------------------


class TestEvent:
    def test_counts(self):
        """event_count counts every accepted event, task_count only task-received."""
        state = State()
        feed(
            state,
            [
                worker_event("online"),
                task_event("sent"),
                task_event("received"),
                task_event("started"),
                {"type": "other-thing"},
                task_event("received", "t2"),
            ],
        )
        assert state.event_count == 6
        assert state.task_count == 2
        assert repr(state) == "<State: events=6 tasks=2>"

    def test_returns_object_created_and_subject(self):
        """``event`` returns ``((obj, created), subject)`` as Celery does; None for other groups."""
        state = State()
        (task, created), subject = state.event(task_event("received"))
        assert (task.uuid, created, subject) == ("t1", True, "received")
        (same, created), _ = state.event(task_event("started"))
        assert same is task
        assert created is False
        (worker, created), subject = state.event(worker_event("online", "w9"))
        assert (worker.hostname, created, subject) == ("w9", True, "online")
        assert state.event({"type": "other-thing"}) is None

    def test_tasks_and_workers(self):
        """Tasks are keyed by uuid and workers by hostname, with the event fields applied."""
        state = State()
        feed(
            state,
            [
                task_event("received", name="add", args="(1, 2)", kwargs="{}", retries=0),
                task_event("succeeded", ts=101.0, result="3", runtime=0.5),
            ],
        )
        task = state.tasks["t1"]
        assert (task.name, task.args, task.state, task.result) == ("add", "(1, 2)", "SUCCESS", "3")
        assert (task.received, task.succeeded, task.timestamp) == (100.0, 101.0, 101.0)
        assert task.runtime == 0.5
        assert task.worker is state.workers["w1@vm"]
        assert task.ready

    def test_sent_sets_client_not_worker(self):
        """task-sent records the client hostname and creates no worker."""
        state = State()
        state.event(task_event("sent", hostname="client@vm"))
        task = state.tasks["t1"]
        assert task.client == "client@vm"
        assert task.worker is None
        assert task.origin == "client@vm"
        assert len(state.workers) == 0

    def test_task_event_is_a_heartbeat(self):
        """A task event creates its worker and records the event timestamp as a heartbeat."""
        ours, theirs = both([task_event("started", ts=200.0)])
        assert ours.workers["w1@vm"].heartbeats == [200.0]
        assert theirs.workers["w1@vm"].heartbeats == [200.0]

    def test_events_are_not_mutated(self):
        """archiver leaves the event dict alone (Celery adds ``state`` to it)."""
        event = task_event("started")
        original = dict(event)
        State().event(event)
        assert event == original
        CeleryState().event(event)
        assert event != original

    def test_callback(self):
        """The callback gets ``(state, event)`` for every event, before it is applied."""
        seen = []
        state = State(callback=lambda s, e: seen.append((s.event_count, e["type"])))
        feed(state, [task_event("sent"), {"type": "other-x"}])
        assert seen == [(1, "task-sent"), (2, "other-x")]

    def test_custom_group_handler(self):
        """A handler in ``state.handlers`` takes over its group."""
        state = State()
        state.handlers["task"] = lambda subject, event: ("handled", subject)
        assert state.event(task_event("sent")) == (("handled", "sent"), "sent")
        assert len(state.tasks) == 0
        assert state.event_count == 1

    def test_node_join_and_leave(self):
        """on_node_join fires for new or online workers; with on_node_leave offline ones go away."""
        joined, left = [], []
        state = State(on_node_join=joined.append, on_node_leave=left.append)
        feed(state, [worker_event("online"), worker_event("heartbeat", ts=102.0)])
        assert [w.hostname for w in joined] == ["w1@vm"]
        state.event(worker_event("offline", ts=104.0))
        assert [w.hostname for w in left] == ["w1@vm"]
        assert "w1@vm" not in state.workers

    def test_offline_without_leave_handler(self):
        """Without on_node_leave an offline worker stays, with no heartbeats and not alive."""
        ours, theirs = both([worker_event("online"), worker_event("offline", ts=101.0)])
        for state in (ours, theirs):
            worker = state.workers["w1@vm"]
            assert worker.heartbeats == []
            assert not worker.alive

    def test_offline_unknown_worker_is_not_stored(self):
        """worker-offline for a host never seen makes a throw-away Worker, as in Celery."""
        ours, theirs = both([worker_event("offline", "ghost")])
        assert "ghost" not in ours.workers
        assert "ghost" not in theirs.workers
        assert ours.event_count == 1

    def test_worker_fields(self):
        """Worker events set the Worker fields."""
        state = State()
        state.event(worker_event("heartbeat", active=3, processed=42, pid=77, freq=5))
        worker = state.workers["w1@vm"]
        assert (worker.active, worker.processed, worker.pid, worker.freq) == (3, 42, 77, 5)
        assert worker.loadavg == [0.1, 0.2, 0.3]
        assert (worker.sw_ident, worker.sw_ver, worker.sw_sys) == ("py-celery", "5.7.0", "Linux")
        assert worker.id == "w1@vm.77"

    def test_heartbeats_keep_four_sorted(self):
        """A worker keeps its last four heartbeats in order, even when they arrive out of order."""
        beats = [5.0, 1.0, 3.0, 2.0, 6.0, 4.0]
        events = [worker_event("heartbeat", ts=100.0 + b, received=100.0 + b) for b in beats]
        ours, theirs = both(events)
        assert ours.workers["w1@vm"].heartbeats == theirs.workers["w1@vm"].heartbeats
        assert len(ours.workers["w1@vm"].heartbeats) == 4

    def test_drift_warning_once_per_host(self, caplog):
        """A clock drift over 16 s is logged once per hostname."""
        host = f"drifty-{uuidlib.uuid4()}"
        state = State()
        with caplog.at_level(logging.WARNING, logger="archiver.state"):
            for i in range(3):
                state.event(worker_event("heartbeat", host, ts=100.0 + i, received=200.0 + i))
        assert caplog.text.count(f"Substantial drift from {host}") == 1


class TestTaskStates:
    def test_out_of_order_keeps_the_stronger_state(self):
        """A task-started arriving after task-succeeded keeps SUCCESS but records the time."""
        events = [
            task_event("received", ts=100.0, name="add"),
            task_event("succeeded", ts=102.0, result="3"),
            task_event("started", ts=101.0),
        ]
        ours, theirs = both(events)
        assert ours.tasks["t1"].state == "SUCCESS"
        assert ours.tasks["t1"].started == 101.0
        assert task_view(ours.tasks["t1"]) == task_view(theirs.tasks["t1"])

    def test_late_received_merges_name_and_args(self):
        """A late task-received keeps SUCCESS but merges name, args and the other rule fields."""
        events = [
            task_event("succeeded", ts=102.0, result="3"),
            task_event("received", ts=100.0, name="add", args="(1, 2)", kwargs="{}", retries=0),
        ]
        ours, theirs = both(events)
        task = ours.tasks["t1"]
        assert (task.state, task.name, task.args, task.retries) == ("SUCCESS", "add", "(1, 2)", 0)
        assert task.received == 100.0
        assert task.timestamp == 102.0
        assert task_view(task) == task_view(theirs.tasks["t1"])
        assert ours.task_types() == theirs.task_types() == ["add"]

    def test_late_received_does_not_merge_other_fields(self):
        """Fields outside the merge rule (such as pid) are not taken from a late task-received."""
        events = [task_event("succeeded", pid=5), task_event("received", ts=99.0, pid=9)]
        ours, theirs = both(events)
        assert ours.tasks["t1"].pid == theirs.tasks["t1"].pid == 5

    @pytest.mark.parametrize(
        ("first", "second", "expected"),
        [
            ("started", "retried", "RETRY"),
            ("retried", "started", "STARTED"),
            ("retried", "received", "RECEIVED"),
            ("failed", "started", "FAILURE"),
            ("revoked", "started", "REVOKED"),
            ("rejected", "received", "RECEIVED"),
            ("succeeded", "failed", "SUCCESS"),
            ("failed", "succeeded", "SUCCESS"),
            ("sent", "received", "RECEIVED"),
            ("received", "sent", "RECEIVED"),
        ],
    )
    def test_precedence_matches_celery(self, first, second, expected):
        """Two events in either order give Celery's state; RETRY always wins or yields."""
        events = [task_event(first, ts=100.0), task_event(second, ts=101.0)]
        ours, theirs = both(events)
        assert ours.tasks["t1"].state == expected
        assert task_view(ours.tasks["t1"]) == task_view(theirs.tasks["t1"])

    def test_custom_state(self):
        """task-cancelled sets the custom state CANCELLED, which outranks REVOKED, not SUCCESS."""
        state = State()
        state.event(task_event("received"))
        state.event(task_event("cancelled", ts=101.0))
        assert state.tasks["t1"].state == "CANCELLED"
        state.event(task_event("revoked", ts=102.0))
        assert state.tasks["t1"].state == "CANCELLED"
        state.event(task_event("succeeded", ts=103.0))
        assert state.tasks["t1"].state == "SUCCESS"
        ours, theirs = both(
            [task_event("received"), task_event("cancelled", ts=101.0), task_event("revoked")]
        )
        assert task_view(ours.tasks["t1"]) == task_view(theirs.tasks["t1"])

    def test_precedence_order(self):
        """The precedence table is Celery's, custom states sitting between FAILURE and REVOKED."""
        assert PRECEDENCE[:3] == ("SUCCESS", "FAILURE", None)
        assert precedence("CANCELLED") == precedence(None) == 2
        assert precedence("SUCCESS") < precedence("REVOKED") < precedence("PENDING")

    def test_as_dict_has_celery_fields(self):
        """``as_dict`` returns Celery's 31 Task fields, with related tasks as ids."""
        state = State()
        feed(
            state,
            [
                task_event("received", "parent", name="p"),
                task_event("received", "child", name="c", parent_id="parent", root_id="parent"),
            ],
        )
        parent = state.tasks["parent"].as_dict()
        assert set(parent) == set(CeleryTask._fields)
        assert parent["children"] == ["child"]
        child = state.tasks["child"]
        assert child.as_dict()["parent"] == "parent"
        assert child.as_dict()["root"] == "parent"
        assert child.parent is state.tasks["parent"]
        assert child.root is state.tasks["parent"]

    def test_child_before_parent(self):
        """A child seen before its parent is linked once the parent arrives."""
        events = [
            task_event("received", "child", parent_id="parent"),
            task_event("received", "parent", ts=101.0),
        ]
        ours, theirs = both(events)
        assert [t.uuid for t in ours.tasks["parent"].children] == ["child"]
        assert [t.uuid for t in theirs.tasks["parent"].children] == ["child"]

    def test_info(self):
        """``info`` returns the non-None display fields."""
        state = State()
        state.event(task_event("received", args="()", kwargs="{}", retries=0))
        assert state.tasks["t1"].info() == {"args": "()", "kwargs": "{}", "retries": 0}
        assert state.tasks["t1"].info(["state"], ["clock"]) == {"state": "RECEIVED", "clock": 100}

    def test_event_fields_cannot_break_the_task(self):
        """Custom event fields named like Task methods are not merged; later events still apply."""
        state = State()
        state.event(task_event("progress", event="x", info=1, as_dict=2, merge_rules=3))
        state.event(task_event("received", ts=99.0))
        state.event(task_event("succeeded", ts=101.0))
        task = state.tasks["t1"]
        assert task.state == "SUCCESS"
        assert set(task.as_dict()) == set(Task._fields)
        assert state.rejected_events == 0


class TestLimits:
    def test_tasks_oldest_first_out(self):
        """With max_tasks_in_memory the oldest inserted task goes first, as in Celery."""
        events = [task_event("received", f"t{i}", ts=100.0 + i) for i in range(5)]
        events.append(task_event("started", "t2", ts=110.0))  # an update does not refresh
        ours, theirs = both(events, max_tasks_in_memory=3)
        assert list(ours.tasks) == list(theirs.tasks) == ["t2", "t3", "t4"]
        ours.event(task_event("received", "t5", ts=111.0))
        assert list(ours.tasks) == ["t3", "t4", "t5"]

    def test_parent_lookup_refreshes(self):
        """A child's event refreshes its parent's place in the LRU, as Celery's lookup does."""
        events = [
            task_event("received", "parent"),
            task_event("received", "a", ts=101.0),
            task_event("received", "child", ts=102.0, parent_id="parent"),
            task_event("received", "b", ts=103.0),
        ]
        ours, theirs = both(events, max_tasks_in_memory=3)
        assert list(ours.tasks) == list(theirs.tasks) == ["child", "parent", "b"]

    def test_workers_oldest_first_out(self):
        """With max_workers_in_memory the oldest worker goes first, as in Celery."""
        events = [worker_event("heartbeat", f"w{i}", ts=100.0 + i) for i in range(4)]
        events.append(task_event("started", hostname="w2", ts=110.0))  # does not refresh w2
        events.append(worker_event("heartbeat", "w4", ts=111.0))
        ours, theirs = both(events, max_workers_in_memory=2)
        assert list(ours.workers) == list(theirs.workers) == ["w3", "w4"]

    def test_sample_with_small_limits(self, sample_events):
        """The whole recording through tiny limits evicts exactly what Celery evicts."""
        ours, theirs = both(sample_events, max_tasks_in_memory=50, max_workers_in_memory=1)
        assert len(ours.tasks) == 50
        assert_same(state_view(ours, weak_sets=False), state_view(theirs, weak_sets=False))

    def test_lru_mapping(self):
        """The LRU moves a key to the end on ``[]`` reads (not peek/get) and evicts the oldest."""
        lru = LRU(2)
        lru["a"], lru["b"] = 1, 2
        assert lru.peek("a") == 1
        assert lru.get("a") == 1
        assert list(lru) == ["a", "b"]
        assert lru["a"] == 1
        assert list(lru) == ["b", "a"]
        lru["c"] = 3
        assert list(lru) == ["a", "c"]
        lru["a"] = 10
        assert dict(lru) == {"a": 10, "c": 3}
        assert lru.data is lru

    def test_get_or_create(self):
        """get_or_create_task/worker return the object and whether it was created."""
        state = State()
        task, created = state.get_or_create_task("x")
        assert created
        assert state.get_or_create_task("x") == (task, False)
        worker, created = state.get_or_create_worker("w", pid=3)
        assert created
        assert worker.pid == 3
        same, created = state.get_or_create_worker("w", pid=4)
        assert same is worker
        assert not created
        assert worker.pid == 4


class TestClear:
    def test_clear_keeps_unready_tasks(self, small_events):
        """clear() drops workers and finished tasks, keeps the rest and zeroes the counters."""
        ours, theirs = both(small_events[:500])
        ready, unready = ready_and_unready(ours)
        assert ready
        assert unready
        for state in (ours, theirs):
            state.clear()
            assert set(state.tasks) == unready
            assert len(state.workers) == 0
            assert (state.event_count, state.task_count) == (0, 0)
        assert list(ours.tasks) == list(theirs.tasks)

    def test_clear_everything(self, small_events):
        """clear(ready=False) drops every task."""
        state = State()
        feed(state, small_events[:500])
        state.clear(ready=False)
        assert len(state.tasks) == 0
        assert len(state.workers) == 0
        assert state.event_count == 0

    def test_clear_tasks(self, small_events):
        """clear_tasks() drops finished tasks only and leaves workers and counters alone."""
        state = State()
        feed(state, small_events[:500])
        _, unready = ready_and_unready(state)
        assert unready
        workers, count = len(state.workers), state.event_count
        state.clear_tasks()
        assert set(state.tasks) == unready
        assert (len(state.workers), state.event_count) == (workers, count)
        state.clear_tasks(ready=False)
        assert len(state.tasks) == 0

    def test_limit_still_holds_after_clear(self):
        """Kept tasks still count toward max_tasks_in_memory after a clear."""
        state = State(max_tasks_in_memory=2)
        feed(state, [task_event("received", "a"), task_event("received", "b", ts=101.0)])
        state.clear()
        state.event(task_event("received", "c", ts=102.0))
        assert list(state.tasks) == ["b", "c"]

    def test_types_survive_clear(self, small_events):
        """task_types() remembers every type seen, across clears, like Celery."""
        ours, theirs = both(small_events[:500])
        ours.clear()
        theirs.clear()
        assert ours.task_types() == theirs.task_types()
        assert ours.task_types()


class TestFreezeWhile:
    def test_celery_freeze_while(self):
        """After 3 worker-online, 20 task-received events, clear_after zeroes event_count."""
        events = [worker_event("online", f"w{i}") for i in range(3)]
        events += [task_event("received", f"t{i}", ts=100.0 + i) for i in range(20)]
        for clear_after, expected in ((False, 23), (True, 0)):
            state = State()
            feed(state, events)
            state.freeze_while(lambda: None, clear_after=clear_after)
            assert state.event_count == expected

    def test_runs_under_the_lock(self):
        """The function runs with the lock held and gets the arguments; its result is returned."""
        state = State()

        def fun(a, b=None):
            return (state._mutex.locked(), a, b)

        assert state.freeze_while(fun, 1, b=2) == (True, 1, 2)
        assert not state._mutex.locked()

    def test_blocks_events(self):
        """Events wait while the state is frozen."""
        state = State()
        applied = threading.Event()

        def frozen():
            thread = threading.Thread(
                target=lambda: (state.event(task_event("sent")), applied.set())
            )
            thread.start()
            time.sleep(0.05)
            seen = applied.is_set()
            return thread, seen

        thread, seen_while_frozen = state.freeze_while(frozen)
        thread.join(2)
        assert not seen_while_frozen
        assert applied.is_set()

    def test_clear_after_even_when_fun_raises(self, small_events):
        """State.freeze_while clears in ``finally`` like Celery (the camera guards against this)."""
        state = State()
        feed(state, small_events)

        def boom():
            raise RuntimeError("in freeze")

        with pytest.raises(RuntimeError, match="in freeze"):
            state.freeze_while(boom, clear_after=True)
        assert state.event_count == 0


class TestWorkers:
    def test_heartbeat_expires(self):
        """A worker expires at its last heartbeat plus twice its frequency."""
        assert heartbeat_expires(100.0, freq=2.0) == 104.0
        assert heartbeat_expires(100, 60) == 220.0
        state = State()
        state.event(worker_event("heartbeat", ts=100.0, received=100.5, freq=5.0))
        assert state.workers["w1@vm"].heartbeat_expires == 110.5

    def test_alive(self):
        """A worker is alive until its heartbeat expires; alive_workers lists only those."""
        now = time.time()
        events = [
            worker_event("heartbeat", "fresh", ts=now, received=now),
            worker_event("heartbeat", "stale", ts=now - 100, received=now - 100),
            worker_event("online", "gone", ts=now, received=now),
            worker_event("offline", "gone", ts=now, received=now),
        ]
        ours, theirs = both(events)
        assert sorted(w.hostname for w in ours.alive_workers()) == ["fresh"]
        assert sorted(w.hostname for w in theirs.alive_workers()) == ["fresh"]
        for name in ("fresh", "stale", "gone"):
            assert ours.workers[name].alive == theirs.workers[name].alive
        assert ours.workers["fresh"].status_string == "ONLINE"
        assert ours.workers["stale"].status_string == "OFFLINE"
        assert ours.workers["fresh"].alive_at(now + 3.9)
        assert not ours.workers["fresh"].alive_at(now + 4.1)

    def test_worker_equality(self):
        """Workers compare and hash by hostname."""
        assert Worker("a", pid=1) == Worker("a", pid=2)
        assert len({Worker("a"), Worker("a"), Worker("b")}) == 2

    def test_event_fields_cannot_break_the_worker(self):
        """Worker event fields named like Worker internals are ignored."""
        state = State()
        state.event(worker_event("heartbeat", heartbeat_max="x", expire_window="y", update=1))
        state.event(worker_event("heartbeat", ts=102.0))
        worker = state.workers["w1@vm"]
        assert len(worker.heartbeats) == 2
        assert worker.heartbeat_expires == pytest.approx(106.01)


class TestTaskTypes:
    def test_tasks_by_type_and_types(self, small_events):
        """tasks_by_type[name] holds that type's tasks; task_types() is sorted; same as Celery."""
        ours, theirs = both(small_events)
        assert ours.task_types() == theirs.task_types() == sorted(ours.task_types())
        for name in ours.task_types():
            mine = {t.uuid for t in ours.tasks_by_type[name]}
            assert mine == {t.uuid for t in theirs.tasks_by_type[name]}
            assert mine == {u for u, t in ours.tasks.items() if t.name == name}
            assert {u for u, _ in ours.tasks_by_type(name)} == mine

    def test_tasks_by_type_call_is_newest_first(self):
        """Calling tasks_by_type(name) yields that type's tasks, newest first, up to ``limit``."""
        state = State()
        for i in range(5):
            state.event(task_event("received", f"t{i}", ts=100.0 + i, name="add"))
        state.event(task_event("received", "other", ts=200.0, name="mul"))
        assert [u for u, _ in state.tasks_by_type("add")] == ["t4", "t3", "t2", "t1", "t0"]
        assert [u for u, _ in state.tasks_by_type("add", limit=2)] == ["t4", "t3"]
        assert next(u for u, _ in state.tasks_by_type("add", reverse=False)) == "t0"

    def test_tasks_by_worker(self):
        """tasks_by_worker groups tasks by the worker that reported them."""
        state = State()
        feed(
            state,
            [
                task_event("received", "a", hostname="w1", name="x"),
                task_event("received", "b", hostname="w2", ts=101.0, name="x"),
                task_event("sent", "c", hostname="client", ts=102.0, name="x"),
            ],
        )
        assert {t.uuid for t in state.tasks_by_worker["w1"]} == {"a"}
        assert [u for u, _ in state.tasks_by_worker("w2")] == ["b"]

    def test_itertasks(self, small_events):
        """itertasks yields (uuid, task) in insertion order, up to ``limit``."""
        ours, theirs = both(small_events)
        assert [u for u, _ in ours.itertasks(5)] == [u for u, _ in theirs.itertasks(5)]
        assert len(list(ours.itertasks())) == len(ours.tasks)


class TestChanges:
    def test_take_changes(self):
        """take_changes returns the tasks and workers changed since the last call."""
        state = State()
        feed(state, [task_event("received", "a"), worker_event("heartbeat", "w2")])
        tasks, workers = state.take_changes()
        assert [t.uuid for t in tasks] == ["a"]
        assert sorted(w.hostname for w in workers) == ["w1@vm", "w2"]
        assert state.take_changes() == ([], [])
        state.event(task_event("succeeded", "a", ts=101.0))
        tasks, workers = state.take_changes()
        assert [(t.uuid, t.state) for t in tasks] == [("a", "SUCCESS")]
        assert [w.hostname for w in workers] == ["w1@vm"]

    def test_task_sent_changes_no_worker(self):
        """A task-sent changes the task but no worker."""
        state = State()
        state.event(task_event("sent", hostname="client"))
        assert state.take_changes()[1] == []

    def test_evicted_changes_are_held(self):
        """A changed task evicted by the LRU is still returned by the next take_changes."""
        state = State(max_tasks_in_memory=2)
        feed(state, [task_event("received", f"t{i}", ts=100.0 + i) for i in range(5)])
        assert list(state.tasks) == ["t3", "t4"]
        tasks, _ = state.take_changes()
        assert [t.uuid for t in tasks] == ["t0", "t1", "t2", "t3", "t4"]

    def test_cleared_changes_are_held(self, small_events):
        """Tasks dropped by clear() before their change was taken are still returned."""
        state = State()
        feed(state, small_events)
        state.clear()
        tasks, _ = state.take_changes()
        assert {t.uuid for t in tasks} == {e["uuid"] for e in small_events if "uuid" in e}

    def test_restore_changes(self):
        """restore_changes puts taken changes back without replacing newer ones."""
        state = State()
        state.event(task_event("received", "a"))
        tasks, workers = state.take_changes()
        state.event(task_event("received", "b", ts=101.0))
        state.restore_changes(tasks, workers)
        tasks, workers = state.take_changes()
        assert sorted(t.uuid for t in tasks) == ["a", "b"]
        assert [w.hostname for w in workers] == ["w1@vm"]

    def test_held_changes_are_bounded(self, caplog):
        """A state nobody takes changes from holds at most max_changes_held tasks (no leak)."""
        state = State(max_tasks_in_memory=2)
        assert state.max_changes_held == 8
        with caplog.at_level(logging.WARNING, logger="archiver.state"):
            feed(state, [task_event("received", f"t{i}", ts=100.0 + i) for i in range(20)])
        tasks, _ = state.take_changes()
        assert [t.uuid for t in tasks] == [f"t{i}" for i in range(12, 20)]
        assert state.changes_dropped == 12
        assert caplog.text.count("changed tasks waiting for take_changes") == 1


BAD_EVENTS = [
    (None, "event is not a dict"),
    ("task-sent", "event is not a dict"),
    (["type", "task-sent"], "event is not a dict"),
    (42, "event is not a dict"),
    ({}, "event without a type"),
    ({"uuid": "t1", "hostname": "w"}, "event without a type"),
    ({"type": 5}, "event type is not a string"),
    ({"type": None}, "event type is not a string"),
    ({"type": "task"}, "task event without a subject"),
    ({"type": "worker-"}, "worker event without a subject"),
    ({**task_event("sent"), "uuid": None}, "task event without a uuid"),
    ({k: v for k, v in task_event("sent").items() if k != "uuid"}, "task event without a uuid"),
    ({**task_event("sent"), "uuid": 12}, "task event without a uuid"),
    ({**task_event("sent"), "hostname": None}, "task event without a hostname"),
    (
        {**task_event("started"), "timestamp": "1795622261.7"},
        "task event with a non-numeric timestamp or local_received",
    ),
    (
        {**task_event("started"), "local_received": "now"},
        "task event with a non-numeric timestamp or local_received",
    ),
    (
        {**task_event("started"), "timestamp": float("nan")},
        "task event with a non-numeric timestamp or local_received",
    ),
    ({k: v for k, v in task_event("sent").items() if k != "clock"}, "task event without clock"),
    (
        {**task_event("sent"), "name": ["harness.echo"]},
        "task event with an unhashable name or parent_id",
    ),
    (
        {**task_event("sent"), "parent_id": {"id": 7}},
        "task event with an unhashable name or parent_id",
    ),
    ({**worker_event("online"), "hostname": 3}, "worker event without a hostname"),
    (
        {**worker_event("online"), "timestamp": "x"},
        "worker event with a non-numeric timestamp or local_received",
    ),
    (
        {k: v for k, v in worker_event("online").items() if k != "local_received"},
        "worker event without a timestamp or local_received",
    ),
    ({**worker_event("online"), "freq": "2"}, "worker event with a non-numeric freq"),
    ({**worker_event("online"), 1: 2}, "worker event with a non-string key"),
]


# Celery's State stores these values without raising: they are accepted, as in Celery.
ODD_EVENTS = [
    {**task_event("sent"), "timestamp": "1795622261.7"},
    {**task_event("sent"), "local_received": "now"},
    {**task_event("sent"), "timestamp": float("nan")},
    {**task_event("sent"), "clock": "4"},
    {**task_event("sent"), "clock": 4.5},
    {**task_event("sent"), "name": 42},
    {**task_event("sent"), "parent_id": 7},
    {**task_event("sent"), "retries": "1"},
    {**task_event("succeeded"), "runtime": "0.1"},
    {**task_event("succeeded"), "runtime": 10**400, "timestamp": 10**400},
    {**task_event("started"), "timestamp": None},
    {**worker_event("online"), "clock": "1"},
    {**worker_event("online"), "pid": "10"},
    {**worker_event("online"), "processed": 1.5},
    {**worker_event("online"), "loadavg": "1 1 1"},
    {**worker_event("heartbeat"), "local_received": 10**400},
    {**worker_event("offline"), "timestamp": "x"},
]


class TestOddValues:
    @pytest.mark.parametrize("event", ODD_EVENTS, ids=[repr(e)[:60] for e in ODD_EVENTS])
    def test_accepted_as_celery_does(self, small_events, event):
        """A value Celery's State stores is stored too, not rejected, and nothing raises."""
        events = [*small_events[:300], event, *small_events[300:400]]
        ours, theirs = State(), celery_state()
        feed(ours, events)
        feed(theirs, events)
        assert ours.rejected_events == 0
        assert_same(state_view(ours), state_view(theirs))
        for worker in ours.workers.values():  # alive never raises (Celery's may overflow)
            assert worker.alive in (True, False)


class TestRejectedEvents:
    @pytest.mark.parametrize(("event", "kind"), BAD_EVENTS, ids=[k for _, k in BAD_EVENTS])
    def test_rejected_without_changing_the_state(self, small_events, event, kind):
        """A malformed event is counted by kind, never raises and leaves the state as it was."""
        seen = []
        state = State(callback=lambda s, e: seen.append(e))
        feed(state, small_events[:300])
        before, callbacks = state_view(state), len(seen)
        changes = len(state._changed_tasks), len(state._changed_workers)
        assert state.event(event) is None
        assert state.rejected_events == 1
        assert state.rejected_by_kind == {kind: 1}
        assert state_view(state) == before
        # The callback still sees it when it has a type, as Celery's would (before it raises).
        typed = isinstance(event, dict) and type(event.get("type")) is str
        assert len(seen) == callbacks + typed
        assert (len(state._changed_tasks), len(state._changed_workers)) == changes

    def test_logged_once_per_kind(self, caplog):
        """Each kind of malformed event is logged once, however often it comes."""
        state = State()
        with caplog.at_level(logging.WARNING, logger="archiver.state"):
            for _ in range(3):
                state.event(None)
                state.event({"type": "task-sent"})
        records = [r for r in caplog.records if "Skipping malformed event" in r.getMessage()]
        assert len(records) == 2
        assert state.rejected_events == 6
        assert state.rejected_by_kind == {
            "event is not a dict": 3,
            "task event without a uuid": 3,
        }

    def test_good_events_still_apply_afterwards(self, small_events):
        """Rejected events in the stream do not disturb the good ones around them."""
        state = State()
        for i, event in enumerate(small_events):
            state.event(dict(event))
            if i % 50 == 0:
                state.event({**event, "hostname": None})
        reference = State()
        feed(reference, small_events)
        assert state_view(state) == state_view(reference)
        assert state.rejected_events == len(range(0, len(small_events), 50))


class TestThreadSafety:
    def test_events_while_capturing(self, sample_events):
        """One thread feeds events while another freezes and takes changes: same final state."""
        events = [dict(e) for e in sample_events]
        state = State()
        errors: list[BaseException] = []
        taken: set[str] = set()
        done = threading.Event()

        def produce():
            try:
                for event in events:
                    state.event(event)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        def snapshot():
            tasks, _ = state.take_changes()
            taken.update(t.uuid for t in tasks)
            return [t.as_dict() for t in state.tasks.values()], list(state.alive_workers())

        loops = []

        def consume():
            try:
                while not done.is_set():
                    state.freeze_while(snapshot)
                    state.task_types()
                    loops.append(1)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            sys.setswitchinterval(old)
        assert errors == []
        assert loops
        state.freeze_while(snapshot)
        reference = State()
        feed(reference, sample_events)
        assert_same(state_view(state), state_view(reference))
        assert taken == set(reference.tasks)

    def test_no_event_lost_with_clear_after(self, sample_events):
        """Captures that clear the state while events arrive never lose or double-count one."""
        events = [dict(e) for e in sample_events]
        state = State()
        counted = []
        done = threading.Event()

        def produce():
            for event in events:
                state.event(event)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        while not done.is_set():
            state.freeze_while(lambda: counted.append(state.event_count), clear_after=True)
        producer.join(60)
        state.freeze_while(lambda: counted.append(state.event_count), clear_after=True)
        assert sum(counted) == len(events)
        assert len(counted) > 1


class TestFidelity:
    @pytest.mark.parametrize("fixture", ["sample_events", "small_events"])
    def test_recordings_match_celery(self, request, fixture):
        """Every recorded sample gives the same tasks, workers and counters as Celery's State."""
        events = request.getfixturevalue(fixture)
        ours, theirs = both(events)
        assert len(ours.tasks) > 50
        assert ours.rejected_events == 0
        assert_same(state_view(ours), state_view(theirs))

    def test_reversed_recording_matches_celery(self, small_events):
        """The recording fed backwards (everything out of order) still matches Celery."""
        ours, theirs = both(list(reversed(small_events)))
        assert_same(state_view(ours), state_view(theirs))

    def test_recording_twice_matches_celery(self, small_events):
        """Every event delivered twice still matches Celery."""
        ours, theirs = both([e for event in small_events for e in (event, event)])
        assert_same(state_view(ours), state_view(theirs))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sequence=event_sequences())
    def test_generated_sequences_match_celery(self, sequence):
        """Shuffled, duplicated, partly dropped real events with malformed ones mixed in: archiver
        rejects exactly the malformed ones and otherwise agrees with Celery fed the good ones."""
        ours, theirs = State(), celery_state()
        for event, bad in sequence:
            ours.event(event if bad else dict(event))
            if not bad:
                theirs.event(dict(event))
        assert ours.rejected_events == sum(bad for _, bad in sequence)
        assert ours.rejected_events == sum(ours.rejected_by_kind.values())
        assert_same(state_view(ours), state_view(theirs))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        sequence=event_sequences(max_tasks=60),
        max_tasks=st.sampled_from([5, 20, 50]),
        max_workers=st.sampled_from([1, 2, 5000]),
    )
    def test_generated_sequences_with_eviction(self, sequence, max_tasks, max_workers):
        """With small LRU limits the same tasks and workers are evicted, in the same order."""
        limits = {"max_tasks_in_memory": max_tasks, "max_workers_in_memory": max_workers}
        ours, theirs = State(**limits), celery_state(**limits)
        for event, bad in sequence:
            ours.event(event if bad else dict(event))
            if not bad:
                theirs.event(dict(event))
        assert ours.rejected_events == sum(bad for _, bad in sequence)
        assert len(ours.tasks) <= max_tasks
        assert_same(state_view(ours, weak_sets=False), state_view(theirs, weak_sets=False))


class TestNonFiniteNumbers:
    """NaN and infinite times are malformed, not a crash."""

    @pytest.mark.parametrize(
        "event",
        [
            {
                "type": "task-received",
                "uuid": "a",
                "hostname": "h",
                "timestamp": float("nan"),
                "local_received": 1.0,
                "clock": 1,
            },
            {
                "type": "task-started",
                "uuid": "a",
                "hostname": "h",
                "timestamp": 1.0,
                "local_received": float("nan"),
                "clock": 1,
            },
            {
                "type": "worker-heartbeat",
                "hostname": "h",
                "timestamp": float("inf"),
                "local_received": 1.0,
            },
            {
                "type": "worker-online",
                "hostname": "h",
                "timestamp": 1.0,
                "local_received": 1.0,
                "freq": float("nan"),
            },
        ],
    )
    def test_rejected_and_state_unchanged(self, event):
        """A non-finite timestamp, local_received or freq is counted and skipped."""
        state = State()
        state.event(event)
        assert state.rejected_events == 1
        assert len(state.tasks) == 0 and len(state.workers) == 0


# -- Celery's order of tasks_by_time / tasks_by_type / tasks_by_worker ----------------------------


def listed(state, call, *args, **kwargs) -> list[str]:
    """uuids from archiver's ``state.<call>(*args, **kwargs)``."""
    return [u for u, _ in getattr(state, call)(*args, **kwargs)]


def celery_listed(state, call, key=None, *, limit=None, reverse=True) -> list[str]:
    """The same from a Celery State: its own ``tasks_by_*`` loop over its ``_taskheap``, with
    one change: a task no longer in ``state.tasks`` counts as freed. (Celery's yields an
    evicted Task, and then never its successor of the same uuid, until the garbage collector
    frees it: a Task is in a reference cycle there. Its tasks_by_worker also raises on a task
    without a worker.)"""
    tasks = state.tasks.data
    entries = list(reversed(state._taskheap) if reverse else state._taskheap)
    if call == "tasks_by_time" and limit:
        entries = entries[:limit]
    seen, found = set(), []
    for entry in entries:
        task = entry.obj()
        if task is None or tasks.get(task.uuid) is not task or task.uuid in seen:
            continue
        seen.add(task.uuid)
        if call == "tasks_by_time" or key == (
            task.name if call == "tasks_by_type" else task.worker and task.worker.hostname
        ):
            found.append(task.uuid)
    return found[:limit] if limit else found


def assert_same_order(ours, theirs) -> None:
    for reverse in (True, False):
        for limit in (None, 1, 7, 100):
            kw = {"limit": limit, "reverse": reverse}
            assert listed(ours, "tasks_by_time", **kw) == celery_listed(
                theirs, "tasks_by_time", **kw
            ), kw
            for name in theirs._seen_types:  # task_types() sorts: raises on odd names
                assert listed(ours, "tasks_by_type", name, **kw) == celery_listed(
                    theirs, "tasks_by_type", name, **kw
                ), (name, kw)
            for hostname in list(theirs.workers):
                assert listed(ours, "tasks_by_worker", hostname, **kw) == celery_listed(
                    theirs, "tasks_by_worker", hostname, **kw
                ), (hostname, kw)


def assert_same_as_celerys_own(ours, theirs) -> None:
    """Nothing evicted: Celery's own tasks_by_time and tasks_by_type, called as they are."""
    for reverse in (True, False):
        for limit in (None, 1, 7, 100):
            kw = {"limit": limit, "reverse": reverse}
            mine, celerys = (
                listed(ours, "tasks_by_time", **kw),
                listed(theirs, "tasks_by_time", **kw),
            )
            assert mine == celerys, kw
            for name in theirs.task_types():
                mine = listed(ours, "tasks_by_type", name, **kw)
                assert mine == listed(theirs, "tasks_by_type", name, **kw), (name, kw)


def heap_keys(state) -> list[tuple]:
    """(clock, timestamp, origin) of every heap entry (kombu's timetuple names it ``id``)."""
    if isinstance(state, State):
        return [(e.clock, e.timestamp, e.origin) for e in state._taskheap]
    return [(e.clock, e.timestamp, e.id) for e in state._taskheap]


class TestCeleryOrder:
    @pytest.mark.parametrize("fixture", ["sample_events", "small_events"])
    def test_recordings_in_celerys_order(self, request, fixture):
        """Every recording in data/: tasks_by_time/type/worker in exactly Celery's order."""
        ours, theirs = both(request.getfixturevalue(fixture))
        assert len(list(ours.tasks_by_time())) == len(ours.tasks) > 50
        assert heap_keys(ours) == heap_keys(theirs)
        assert_same_order(ours, theirs)
        assert_same_as_celerys_own(ours, theirs)

    def test_sample_differs_from_ordering_by_current_clock(self, sample_events):
        """The sample is a real test: ordering by each task's current clock would differ."""
        ours, _ = both(sample_events)
        by_current = sorted(ours.tasks.values(), key=lambda t: (t.clock, t.timestamp), reverse=True)
        assert [t.uuid for t in by_current] != [u for u, _ in ours.tasks_by_time()]

    def test_reversed_and_doubled_recordings(self, small_events):
        """Out-of-order and duplicated events still give Celery's order."""
        for events in (list(reversed(small_events)), [e for x in small_events for e in (x, x)]):
            ours, theirs = both(events)
            assert heap_keys(ours) == heap_keys(theirs)
            assert_same_order(ours, theirs)
            assert_same_as_celerys_own(ours, theirs)

    @pytest.mark.parametrize("max_tasks", [1, 5, 40, 300, 3000])
    def test_heap_bound_as_celery(self, sample_events, max_tasks):
        """The heap keeps Celery's entries (max_tasks * 4) at every step, in Celery's order."""
        ours, theirs = (
            State(max_tasks_in_memory=max_tasks),
            CeleryState(max_tasks_in_memory=max_tasks),
        )
        bound = 4 * max_tasks
        for i, event in enumerate(sample_events[:4000]):
            ours.event(dict(event))
            theirs.event(dict(event))
            assert ours._heap_len == sum(map(len, ours._heap_chunks)) <= bound
            assert max(map(len, ours._heap_chunks), default=0) <= 2 * HEAP_CHUNK
            if i % 500 == 0:
                assert heap_keys(ours) == heap_keys(theirs)
        assert heap_keys(ours) == heap_keys(theirs)
        assert_same_order(ours, theirs)

    def test_clear_empties_the_heap_as_celery(self, small_events):
        """After clear() only tasks with a later event are listed, as in Celery."""
        ours, theirs = both(small_events[:500])
        ours.clear()
        theirs.clear()
        feed(ours, small_events[500:520])
        feed(theirs, small_events[500:520])
        assert heap_keys(ours) == heap_keys(theirs)
        assert_same_order(ours, theirs)

    def test_events_with_clock_0_as_celery(self, small_events):
        """Clock 0 makes Celery's heap compare timestamps (kombu's timetuple): the same here."""
        events = [
            {**e, "clock": 0} if e["type"].startswith("task-") and i % 7 == 0 else e
            for i, e in enumerate(small_events)
        ]
        ours, theirs = both(events)
        assert ours._heap_kombu
        assert heap_keys(ours) == heap_keys(theirs)
        assert_same_order(ours, theirs)
        assert_same_as_celerys_own(ours, theirs)

    def test_equal_keys_of_different_tasks_do_not_raise(self):
        """Two tasks with the same clock, timestamp and origin (Celery raises a TypeError)."""
        state = State()
        feed(state, [task_event("received", "a"), task_event("received", "b")])
        assert [u for u, _ in state.tasks_by_time()] == ["b", "a"]

    def test_rebuild_taskheap(self, small_events):
        """rebuild_taskheap: one entry per task, sorted. (Celery's sorts a copy of its list and
        keeps the unsorted one, a bug: its result is not compared.)"""
        ours, _ = both(small_events)
        ours.rebuild_taskheap()
        keys = [(e.clock, e.origin) for e in ours._taskheap]
        assert keys == sorted(keys) and len(keys) == len(ours.tasks)
        assert sorted(listed(ours, "tasks_by_time")) == sorted(ours.tasks)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sequence=event_sequences(max_tasks=40), max_tasks=st.sampled_from([2, 5, 10000]))
    def test_generated_sequences_in_celerys_order(self, sequence, max_tasks):
        """Shuffled, duplicated, partly dropped real events (malformed mixed in), small limits."""
        ours, theirs = (
            State(max_tasks_in_memory=max_tasks),
            CeleryState(max_tasks_in_memory=max_tasks),
        )
        for event, bad in sequence:
            if isinstance(event, dict) and type(event.get("clock", 0)) is not int:
                continue  # Celery's heap raises on such a clock (ours sorts it as 0)
            ours.event(event if bad else dict(event))
            if not bad:
                theirs.event(dict(event))
        assert heap_keys(ours) == heap_keys(theirs)
        assert_same_order(ours, theirs)


# -- pickling and deepcopy ------------------------------------------------------------------------


def roundtrip(obj, how: str):
    import copy
    import pickle

    return copy.deepcopy(obj) if how == "deepcopy" else pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
class TestPickle:
    def test_state_midway_then_continues_as_celery(self, sample_events, how):
        """A State copied halfway through a recording, then fed the rest, still equals Celery's
        State fed everything: tasks, workers, counters, weak sets, links and order."""
        half = len(sample_events) // 2
        ours = State()
        feed(ours, sample_events[:half])
        ours.event({"type": "task-sent"})  # a rejected event: counted, and the count survives
        copied = roundtrip(ours, how)
        assert copied is not ours and copied._mutex is not ours._mutex
        assert state_view(copied) == state_view(ours)
        assert heap_keys(copied) == heap_keys(ours)
        assert (copied.rejected_events, copied.rejected_by_kind) == (1, ours.rejected_by_kind)
        assert copied.tasks_created == ours.tasks_created
        for task in copied.tasks.values():
            assert task.cluster_state is copied
            if task.parent_id and task.parent_id in copied.tasks:
                assert task.parent is copied.tasks.peek(task.parent_id)
                assert task in task.parent.children
        assert {t.worker.hostname for t in copied.tasks.values() if t.worker} <= set(copied.workers)
        for task in copied.tasks.values():  # one Worker object per hostname, shared
            if task.worker is not None:
                assert task.worker is copied.workers.peek(task.worker.hostname)
        feed(copied, sample_events[half:])
        theirs = CeleryState()
        feed(theirs, sample_events)
        assert_same(state_view(copied), state_view(theirs))
        assert_same_order(copied, theirs)
        assert copied.freeze_while(lambda: 42) == 42  # the new lock works

    def test_change_log_survives(self, small_events, how):
        """Changes not yet taken are still there to take from the copy."""
        state = State()
        feed(state, small_events[:200])
        expected = state.take_changes()
        feed(state, small_events[:200])
        copied = roundtrip(state, how)
        tasks, workers = copied.take_changes()
        assert sorted(t.uuid for t in tasks) == sorted(t.uuid for t in expected[0])
        assert sorted(w.hostname for w in workers) == sorted(w.hostname for w in expected[1])
        assert all(t is copied.tasks.peek(t.uuid) for t in tasks)

    def test_worker_keeps_every_field(self, how):
        """A pickled or copied Worker keeps every field, custom ones included."""
        state = State()
        state.event(worker_event("online", custom="x"))
        worker = state.workers.peek("w1@vm")
        copied = roundtrip(worker, how)
        assert worker_view(copied) == worker_view(worker)
        assert copied.custom == "x" and copied.timestamp == worker.timestamp
        fun, args = copied.__reduce__()
        assert worker_view(fun(*args)) == worker_view(worker)

    def test_task_alone(self, how):
        """A Task copied alone keeps its fields; it has no state (as Celery's)."""
        state = State()
        feed(
            state,
            [task_event("received", "p", name="x"), task_event("received", "c", parent_id="p")],
        )
        task = state.tasks.peek("p")
        copied = roundtrip(task, how)
        assert task_view(copied) == task_view(task) and copied.cluster_state is None
        assert copied == task and not copied.children
