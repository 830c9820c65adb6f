"""CeleryConverter: frozen state -> Arrow record batches (tasks, workers, snapshots)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pyarrow as pa
import pytest
from celery.events.state import State as CeleryState
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import State
from archiver import schema as S
from archiver.convert import (
    CeleryConverter,
    _float_list,
    _floats,
    _ints,
    _strings,
    epoch_to_timestamps,
    redact_hash,
)

T0 = 1_795_622_260.0


def task_event(type_: str, uuid: str, ts: float, **fields) -> dict:
    host = "client@vm" if type_ == "sent" else "w1@vm"
    event = {
        "type": f"task-{type_}",
        "uuid": uuid,
        "hostname": host,
        "timestamp": ts,
        "local_received": ts + 0.001,
        "clock": int(ts * 10) % 100000,
        "utcoffset": 0,
        "pid": 1,
    }
    event.update(fields)
    return event


def heartbeat(host: str, ts: float, type_: str = "heartbeat") -> dict:
    return {
        "type": f"worker-{type_}",
        "hostname": host,
        "timestamp": ts,
        "local_received": ts,
        "freq": 2.0,
        "active": 0,
        "processed": 3,
        "pid": 10,
        "clock": 1,
        "loadavg": [0.5, 0.25, 0.125],
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "utcoffset": 0,
    }


def feed(state, events) -> None:
    for event in events:
        state.event(dict(event))


def convert(converter, state, at: float = T0 + 100, sid: str = "s-1"):
    return converter.convert(state, captured_at=at, snapshot_id=sid)


def uuids(batch: pa.RecordBatch) -> list[str]:
    return sorted(batch.column("uuid").to_pylist())


# -- value conversion -------------------------------------------------------------------
def test_epoch_to_timestamps_rounds_to_microseconds_and_nulls_the_rest():
    """Seconds become UTC microseconds; None, NaN, inf, bools, text and overflow become null."""
    values = [1.5, 1_795_622_260.068105, None, math.nan, math.inf, "x", True, 1e300, 0]
    arr = epoch_to_timestamps(values)
    assert arr.type == pa.timestamp("us", tz="UTC")
    got = arr.cast(pa.int64()).to_pylist()
    assert got == [1_500_000, 1_795_622_260_068_105, None, None, None, None, None, None, 0]


def test_epoch_to_timestamps_fast_path_matches_slow_path():
    """A clean list of floats and Nones takes the numpy path with the same result."""
    clean = [T0 + i / 7 for i in range(50)] + [None]
    dirty = [*clean, "junk"]
    assert epoch_to_timestamps(clean).to_pylist() == epoch_to_timestamps(dirty).to_pylist()[:-1]


def test_bad_values_become_null_or_text_instead_of_raising():
    """Out-of-range ints, non-numbers, lone surrogates and odd objects never raise."""
    assert _ints([1, 2**40, "3", True, None], pa.int32()).to_pylist() == [1, None, None, None, None]
    assert _ints([2**70], pa.int64()).to_pylist() == [None]
    assert _strings(["ok", "\udc80bad", 5, None]).to_pylist() == ["ok", "\\udc80bad", "5", None]
    assert _float_list([1, "2.5"]) == [1.0, 2.5]
    assert _float_list(["x"]) is None
    assert _float_list(3) is None


# -- tasks --------------------------------------------------------------------------------
def test_task_batch_has_the_explicit_schema_and_dictionary_columns():
    """The batch carries the versioned schema; low-cardinality strings are dictionaries."""
    state = State()
    feed(state, [task_event("sent", "a", T0, name="t.add", args="(1,)", retries=0)])
    batch = convert(CeleryConverter(), state)["tasks"]
    assert batch.schema.equals(S.TASKS)
    meta = batch.schema.metadata
    assert meta[b"archiver.schema_version"] == str(S.SCHEMA_VERSION).encode()
    assert meta[b"archiver.version"]
    for name in S.TASK_CATEGORY_FIELDS:
        assert pa.types.is_dictionary(batch.schema.field(name).type), name
    row = batch.to_pylist()[0]
    assert row["uuid"] == "a"
    assert row["name"] == "t.add"
    assert row["state"] == "PENDING"
    assert row["client"] == "client@vm"
    assert row["snapshot_id"] == "s-1"


def test_changes_mode_writes_only_tasks_touched_since_the_last_snapshot():
    """With archiver.State the changed tasks come from take_changes()."""
    state = State()
    conv = CeleryConverter()
    feed(state, [task_event("sent", u, T0) for u in "abc"])
    assert uuids(convert(conv, state)["tasks"]) == ["a", "b", "c"]
    assert convert(conv, state)["tasks"].num_rows == 0
    feed(state, [task_event("received", "b", T0 + 1)])
    batches = convert(conv, state)
    assert uuids(batches["tasks"]) == ["b"]
    assert batches["snapshots"].column("tasks_written").to_pylist() == [1]


@pytest.mark.parametrize("state_cls", [State, CeleryState])
def test_full_mode_writes_every_task_each_time(state_cls):
    """mode='full' writes the whole state at every snapshot."""
    state = state_cls()
    conv = CeleryConverter(mode="full")
    feed(state, [task_event("sent", u, T0) for u in "abc"])
    assert convert(conv, state)["tasks"].num_rows == 3
    assert convert(conv, state)["tasks"].num_rows == 3


def test_full_mode_drains_the_change_log_and_keeps_evicted_changes():
    """In full mode the state's change log does not grow forever, and a changed task
    that the LRU evicted before the snapshot is still written once."""
    state = State(max_tasks_in_memory=2)
    conv = CeleryConverter(mode="full")
    feed(state, [task_event("sent", u, T0 + i) for i, u in enumerate("abc")])
    assert "a" not in state.tasks
    assert uuids(convert(conv, state)["tasks"]) == ["a", "b", "c"]
    assert state.take_changes() == ([], [])
    assert uuids(convert(conv, state)["tasks"]) == ["b", "c"]


def test_celery_state_changes_are_found_by_signature():
    """Celery's State does not track changes: the converter compares task fields."""
    state = CeleryState()
    conv = CeleryConverter()
    feed(state, [task_event("sent", u, T0) for u in "abc"])
    assert uuids(convert(conv, state)["tasks"]) == ["a", "b", "c"]
    assert convert(conv, state)["tasks"].num_rows == 0
    feed(state, [task_event("started", "c", T0 + 2), task_event("received", "a", T0 + 1)])
    assert uuids(convert(conv, state)["tasks"]) == ["a", "c"]
    # A late task-received merges only a few fields but still sets its time.
    feed(state, [task_event("received", "c", T0 + 1.5)])
    rows = convert(conv, state)["tasks"].to_pylist()
    assert [(r["uuid"], r["state"]) for r in rows] == [("c", "STARTED")]
    assert rows[0]["received"] is not None
    # A custom event after success merges its fields only, clock included.
    feed(state, [task_event("succeeded", "a", T0 + 3), task_event("progress", "a", T0 + 4)])
    assert uuids(convert(conv, state)["tasks"]) == ["a"]
    feed(state, [task_event("progress", "a", T0 + 5, clock=123)])
    rows = convert(conv, state)["tasks"].to_pylist()
    assert [(r["uuid"], r["state"], r["clock"]) for r in rows] == [("a", "SUCCESS", 123)]


@pytest.mark.parametrize("state_cls", [State, CeleryState])
def test_a_failed_conversion_forgets_nothing(state_cls, monkeypatch):
    """If building the batches raises, the next snapshot writes the same changes."""
    state = state_cls()
    conv = CeleryConverter()
    feed(state, [task_event("sent", u, T0) for u in "ab"])

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(conv, "worker_batch", boom)
        with pytest.raises(RuntimeError):
            convert(conv, state)
    assert uuids(convert(conv, state)["tasks"]) == ["a", "b"]


def test_malformed_task_attributes_do_not_break_the_snapshot():
    """Values with the wrong type (set by odd events) are stored as null or text."""
    state = State()
    feed(state, [task_event("sent", "a", T0)])
    task = state.tasks["a"]
    task.retries = "many"
    task.runtime = "slow"
    task.succeeded = "yesterday"
    task.result = {"not": "a string"}
    task.clock = 2**80
    row = convert(CeleryConverter(), state)["tasks"].to_pylist()[0]
    assert row["retries"] is None
    assert row["runtime"] is None
    assert row["succeeded"] is None
    assert row["result"] == "{'not': 'a string'}"
    assert row["clock"] is None


@pytest.mark.parametrize("mode", ["null", "hash"])
def test_redaction(mode):
    """Redacted columns are null, or a keyed hash equal for equal values."""
    state = State()
    feed(
        state,
        [
            task_event("sent", "a", T0, args="('alice@example.com',)", kwargs="{}", name="n"),
            task_event("sent", "b", T0, args="('alice@example.com',)", kwargs=None, name="n"),
        ],
    )
    key = b"k" if mode == "hash" else None
    conv = CeleryConverter(redact=("args", "kwargs", "result"), redact_mode=mode, redact_key=key)
    rows = sorted(convert(conv, state)["tasks"].to_pylist(), key=lambda r: r["uuid"])
    if mode == "null":
        assert [r["args"] for r in rows] == [None, None]
        assert [r["kwargs"] for r in rows] == [None, None]
    else:
        digest = redact_hash("('alice@example.com',)", key)
        assert len(digest) == 32
        assert [r["args"] for r in rows] == [digest, digest]
        assert [r["kwargs"] for r in rows] == [redact_hash("{}", key), None]
        assert "alice" not in repr(rows)
    assert [r["name"] for r in rows] == ["n", "n"]


def test_invalid_options_are_rejected():
    """Unknown mode or redact_mode, and hashing without a key, raise ValueError naming them."""
    with pytest.raises(ValueError, match="mode"):
        CeleryConverter(mode="some")
    with pytest.raises(ValueError, match="redact_mode"):
        CeleryConverter(redact_mode="encrypt")
    with pytest.raises(ValueError, match="redact_mode 'hash' needs a secret key"):
        CeleryConverter(redact=("args",), redact_mode="hash")
    with pytest.raises(ValueError, match="redact_key is empty"):
        CeleryConverter(redact=("args",), redact_mode="hash", redact_key="")
    with pytest.raises(ValueError, match="only used with redact_mode 'hash'"):
        CeleryConverter(redact=("args",), redact_key="k")
    with pytest.raises(ValueError, match="cannot redact name"):
        CeleryConverter(redact=("name",))


# -- workers and snapshots ----------------------------------------------------------------
@pytest.mark.parametrize("state_cls", [State, CeleryState])
def test_workers_are_written_when_they_change_or_expire(state_cls):
    """A worker row is written on a heartbeat and when it stops counting as alive."""
    state = state_cls()
    conv = CeleryConverter()
    feed(state, [heartbeat("w1@vm", T0, "online")])
    rows = convert(conv, state, at=T0 + 1)["workers"].to_pylist()
    assert [(r["hostname"], r["alive"]) for r in rows] == [("w1@vm", True)]
    assert rows[0]["loadavg"] == [0.5, 0.25, 0.125]
    assert rows[0]["last_heartbeat"] is not None
    assert convert(conv, state, at=T0 + 2)["workers"].num_rows == 0
    # freq=2 s, expire window 200%: no heartbeat for > 6 s means offline.
    rows = convert(conv, state, at=T0 + 60)["workers"].to_pylist()
    assert [(r["hostname"], r["alive"]) for r in rows] == [("w1@vm", False)]


def test_a_worker_removed_from_the_state_gets_a_last_row():
    """With on_node_leave, Celery-style states drop offline workers: the offline row
    is still written (archiver.State reports it as changed)."""
    state = State(on_node_leave=lambda worker: None)
    conv = CeleryConverter()
    feed(state, [heartbeat("w1@vm", T0, "online")])
    convert(conv, state, at=T0 + 1)
    feed(state, [heartbeat("w1@vm", T0 + 2, "offline")])
    assert "w1@vm" not in state.workers
    rows = convert(conv, state, at=T0 + 3)["workers"].to_pylist()
    assert [(r["hostname"], r["alive"]) for r in rows] == [("w1@vm", False)]


def test_snapshot_row_counts_tasks_per_state():
    """Snapshot row counts tasks per state."""
    state = State()
    feed(
        state,
        [
            heartbeat("w1@vm", T0, "online"),
            task_event("sent", "a", T0),
            task_event("sent", "b", T0),
            task_event("received", "b", T0 + 1),
            task_event("succeeded", "b", T0 + 2, result="3", runtime=0.5),
            task_event("custom", "c", T0),
        ],
    )
    row = convert(CeleryConverter(), state, at=T0 + 3)["snapshots"].to_pylist()[0]
    assert row["tasks_in_state"] == 3
    assert row["tasks_pending"] == 1
    assert row["tasks_success"] == 1
    assert row["tasks_other"] == 1
    assert row["worker_count"] == 1
    assert row["alive_workers"] == 1
    assert row["event_count"] == 6
    assert row["task_count"] == 1
    assert row["tasks_written"] == 3


@pytest.mark.parametrize("api_tasks", [False, True])
def test_tasks_per_state_are_kept_right_without_scanning_the_state(api_tasks):
    """archiver.State: the per-state counts follow events, LRU evictions and clear(),
    as a full count of the state says. A task added without an event while another
    is evicted is only caught by the periodic recount."""
    rng = random.Random(7)
    state = State(max_tasks_in_memory=20)
    conv = CeleryConverter()
    conv.counts.recount_every = 10
    kinds = ["sent", "received", "started", "succeeded", "failed", "retried", "custom"]
    ts = T0
    for step in range(300):
        for _ in range(rng.randrange(0, 12)):
            ts += 0.01
            uuid = f"t{rng.randrange(60)}"
            state.event(task_event(rng.choice(kinds), uuid, ts, clock=step))
        if step % 37 == 36:
            state.clear()
        if api_tasks and step % 5 == 4:
            state.get_or_create_task(f"api{step}")
        row = convert(conv, state, sid=f"s{step}")["snapshots"].to_pylist()[0]
        if api_tasks and conv.counts.since_recount:
            continue  # may be off until the next recount
        full = Counter(t.state for t in state.tasks.data.values())
        got = {s: row[f"tasks_{s.lower()}"] for s in S.TASK_STATES}
        assert got == {s: full.get(s, 0) for s in S.TASK_STATES}, step
        assert row["tasks_other"] == sum(n for s, n in full.items() if s not in got), step
        assert row["tasks_in_state"] == len(state.tasks)


def test_staged_rows_equal_the_rows_of_one_batch_per_snapshot(sample_events):
    """Staging task rows across snapshots gives the same rows, captured_at and ids as no staging."""
    plain, staged = CeleryConverter(), CeleryConverter(stage_rows=10_000)
    states = State(), State()
    out_plain, out_staged = [], []
    chunks = [sample_events[i : i + 700] for i in range(0, 4200, 700)]
    for k, chunk in enumerate(chunks):
        for state in states:
            feed(state, chunk)
        at, sid = T0 + k, f"s-{k}"
        out_plain.append(convert(plain, states[0], at, sid)["tasks"])
        batch = convert(staged, states[1], at, sid)["tasks"]
        assert batch.num_rows == 0  # still staged
        out_staged.append(batch)
    assert staged.staged_rows == sum(b.num_rows for b in out_plain)
    drained = staged.drain()["tasks"]
    assert staged.staged_rows == 0 and staged.drain() == {}
    expected = pa.Table.from_batches(out_plain).to_pylist()
    assert pa.Table.from_batches([drained]).to_pylist() == expected
    assert drained.schema.equals(S.TASKS)


def test_staging_returns_a_batch_once_enough_rows_are_staged(sample_events):
    """convert() hands back everything staged as soon as stage_rows is reached."""
    converter, plain = CeleryConverter(stage_rows=2000), CeleryConverter()
    states = State(), State()
    sizes, expected = [], 0
    for k in range(20):
        for state in states:
            feed(state, sample_events[k * 300 : (k + 1) * 300])
        sizes.append(convert(converter, states[0], T0 + k, f"s-{k}")["tasks"].num_rows)
        expected += convert(plain, states[1], T0 + k, f"s-{k}")["tasks"].num_rows
    assert sizes.count(0) >= 5 and max(sizes) >= 2000
    assert sum(sizes) + converter.staged_rows == expected
    with pytest.raises(ValueError, match="stage_rows must be >= 1"):
        CeleryConverter(stage_rows=0)


def test_a_big_snapshot_is_built_at_once_with_what_was_staged(sample_events):
    """A snapshot too big to stage comes back at once, after the rows staged before it."""
    converter, state = CeleryConverter(stage_rows=1000), State()
    feed(state, sample_events[:300])
    assert convert(converter, state, T0, "s-0")["tasks"].num_rows == 0
    staged = converter.staged_rows
    feed(state, sample_events[300:3000])
    batch = convert(converter, state, T0 + 1, "s-1")["tasks"]
    ids = batch.column("snapshot_id").to_pylist()
    assert ids[:staged] == ["s-0"] * staged and set(ids[staged:]) == {"s-1"}
    assert converter.staged_rows == 0


# -- values that do not fit their column ----------------------------------------------------
HUGE = 10**400  # what JSON decodes "1e400"-style integer literals to: no float holds it
YEAR_9999 = 253_402_300_000.0
YEAR_702 = -40_000_000_000.0


def test_every_number_column_builder_nulls_what_does_not_fit():
    """Bools, huge ints, text and times beyond timestamp[us] are null; NaN/inf fit float64."""
    odd = [True, False, HUGE, -HUGE, math.nan, math.inf, -math.inf, "1", None, [1]]
    assert epoch_to_timestamps(odd).null_count == len(odd)
    assert _ints(odd, pa.int64()).null_count == len(odd)
    floats = _floats(odd).to_pylist()
    assert floats[:4] == [None] * 4 and floats[7:] == [None] * 3
    assert math.isnan(floats[4]) and floats[5:7] == [math.inf, -math.inf]
    assert _float_list([1, HUGE]) is None and _float_list([True, 1.0]) is None
    far = epoch_to_timestamps([YEAR_9999, YEAR_702, -1.0, 1e13 * 1e3, 2**62]).to_pylist()
    assert [t.year if t else None for t in far] == [9999, 702, 1969, None, None]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()), max_size=20
    )
)
def test_column_builders_never_raise_and_keep_every_row(values):
    """Whatever the values, every builder returns one entry per value."""
    for array in (epoch_to_timestamps(values), _ints(values, pa.int32()), _floats(values)):
        assert len(array) == len(values)
    fits = [v for v in values if type(v) is int and -(2**31) <= v < 2**31]
    assert _ints(values, pa.int32()).null_count == len(values) - len(fits)


@pytest.mark.parametrize("state_cls", [State, CeleryState])
def test_oversized_numbers_are_stored_as_null_counted_and_lose_no_staged_row(state_cls):
    """10**400 as a task time or runtime, or a worker heartbeat, never makes convert() raise
    or drop staged rows: the value is null, counted in values_nulled, the rest is kept."""
    converter, state = CeleryConverter(stage_rows=10_000), state_cls()
    feed(state, [task_event("received", u, T0) for u in "abc"])
    assert convert(converter, state, T0 + 1, "s-1")["tasks"].num_rows == 0  # staged
    feed(
        state,
        [
            task_event("succeeded", "a", T0 + 2, runtime=HUGE),
            # no local_received: no heartbeat (Celery's drift warning cannot format 10**400)
            {**task_event("started", "b", T0 + 2), "timestamp": HUGE, "local_received": None},
            heartbeat("w2@vm", T0 + 2) | {"local_received": HUGE, "timestamp": HUGE},
            task_event("succeeded", "c", T0 + 2, runtime=0.5),
        ],
    )
    out = convert(converter, state, T0 + 2, "s-2")
    rows = converter.drain()["tasks"].to_pylist()
    assert [(r["uuid"], r["snapshot_id"]) for r in rows][:3] == [
        ("a", "s-1"),
        ("b", "s-1"),
        ("c", "s-1"),
    ]
    last = {r["uuid"]: r for r in rows}
    assert last["a"]["runtime"] is None and last["a"]["state"] == "SUCCESS"
    assert last["b"]["timestamp"] is None and last["b"]["state"] == "STARTED"
    assert last["c"]["runtime"] == 0.5
    workers = {r["hostname"]: r for r in out["workers"].to_pylist()}
    assert workers["w2@vm"]["last_heartbeat"] is None
    assert workers["w2@vm"]["alive"] is True  # a heartbeat at +10**400 s has not expired
    assert last["b"]["started"] is None
    assert converter.values_nulled == {
        "tasks.runtime": 1,
        "tasks.timestamp": 1,
        "tasks.started": 1,
        "workers.last_heartbeat": 1,
    }
    assert out["snapshots"].column("alive_workers").to_pylist() == [2]
