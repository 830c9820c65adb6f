"""`archiver record` against real components: redis-server, Celery workers, a Celery client.

Each test starts its own redis-server on a free loopback port and its own workers
(`celery -A tests.cluster_app worker -E`), and stops them by process id (see
tests/livecluster.py). Skipped, with the reason, when redis-server is not installed.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time

import pytest

from archiver import Archive
from archiver.state import precedence

from .livecluster import (
    needs_redis,
    record_and_tap,
    send_mix,
    start_archiver,
    start_workers,
    wait_for,
    wait_results,
)

celery = pytest.importorskip("celery")
pytest.importorskip("redis")

from celery.events.state import State as CeleryState  # noqa: E402

pytestmark = [needs_redis, pytest.mark.redis, pytest.mark.timeout(240)]


def archived_tasks(path) -> dict[str, dict]:
    latest = Archive(path).latest("tasks")
    return {row["uuid"]: row for row in latest.to_dict("records")}


def celery_state_from(tap_file) -> CeleryState:
    state = CeleryState(max_tasks_in_memory=100_000)
    with open(tap_file, encoding="utf-8") as f:
        for line in f:
            state.event(json.loads(line))
    return state


def check_recorded(path, sent, results, tap_file=None) -> dict[str, dict]:
    """The archive's latest row of every task sent matches its result (and Celery's State)."""
    rows = archived_tasks(path)
    missing = sorted(set(sent) - set(rows))
    assert not missing, f"{len(missing)} tasks sent but not archived, e.g. {missing[:3]}"
    wrong = {t: (rows[t]["state"], results[t]) for t in sent if rows[t]["state"] != results[t]}
    assert not wrong, f"archived state != result for {len(wrong)} tasks: {list(wrong.items())[:5]}"
    for task_id, (expected, _) in sent.items():
        assert results[task_id] == expected, (task_id, results[task_id], expected)
    for task_id, (_, result) in sent.items():
        row = rows[task_id]
        if results[task_id] == "SUCCESS":
            assert row["result"] == repr(result.result), (task_id, row["result"], result.result)
            assert row["name"] in ("cluster.add", "cluster.flaky")
            assert row["succeeded"] is not None and row["worker"]
        elif results[task_id] == "FAILURE":
            assert "ValueError" in (row["exception"] or ""), row
    if tap_file is not None:
        state = celery_state_from(tap_file)
        for task_id in sent:
            task = state.tasks.get(task_id)
            assert task is not None, f"{task_id} missing from the tapped events"
            row = rows[task_id]
            assert row["state"] == task.state, (task_id, row["state"], task.state)
            assert row["name"] == task.name, (task_id, row["name"], task.name)
            assert (row["retries"] or 0) == (task.retries or 0)
            hostname = task.worker.hostname if task.worker else None
            assert row["worker"] == hostname, (task_id, row["worker"], hostname)
    return rows


def test_live_record_matches_results_and_celery_state(
    processes,
    redis_server,
    cluster_app,
    tmp_path,
):
    """Live record matches results and celery state."""
    archive = tmp_path / "archive"
    workers = start_workers(processes, redis_server, tmp_path)
    recorder, tap, tap_file = record_and_tap(
        processes, redis_server, tmp_path,
        ["--archive", str(archive), "--freq", "0.5", "-l", "INFO"],
        duration="25s",
    )  # fmt: skip
    sent = send_mix(cluster_app, 300)
    results = wait_results(sent)

    assert recorder.wait(60) == 0, recorder.stderr
    assert tap.wait(60) == 0, tap.stderr
    assert "Recorded " in recorder.stdout and "Traceback" not in recorder.stderr
    assert "Wrote " in tap.stderr
    check_recorded(archive, sent, results, tap_file)
    workers_seen = set(Archive(archive).latest("workers")["hostname"])
    assert {w.hostname for w in workers} <= workers_seen
    snaps = Archive(archive).load("snapshots")
    assert len(snaps) >= 20  # --freq 0.5 for ~25 s: snapshots on the wall clock


def test_broker_restart_recorder_carries_on(
    processes,
    redis_server,
    cluster_app,
    tmp_path,
):
    """Broker restart recorder carries on."""
    archive = tmp_path / "archive"
    (worker,) = start_workers(processes, redis_server, tmp_path, names=("w1",))
    recorder = start_archiver(
        processes, redis_server, tmp_path, "record",
        "record", "--broker", redis_server.url(0), "--archive", str(archive), "--freq", "0.5",
        "-l", "INFO",
    )  # fmt: skip
    before = send_mix(cluster_app, 60, prefix="a-")
    results = wait_results(before)
    time.sleep(1.0)  # the last events of batch A reach the recorder

    redis_server.stop(signal.SIGKILL)  # the broker dies: nothing persisted
    recorder.wait_log("Lost the broker", timeout=30)
    recorder.wait_log("Broker still unreachable", timeout=30)  # a failed reconnection
    redis_server.start()  # same port
    recorder.wait_log("Reconnected to the broker", timeout=60)

    def worker_back() -> bool:
        try:
            return bool(cluster_app.control.ping([worker.hostname], timeout=1.0))
        except Exception:
            return False

    wait_for(worker_back, 60, "the worker to reconnect", interval=0.5)
    after = send_mix(cluster_app, 60, prefix="b-")
    results.update(wait_results(after))
    time.sleep(1.5)

    assert recorder.terminate(signal.SIGTERM) == 0, recorder.stderr
    assert "broker lost 1 times" in recorder.stdout, recorder.stdout
    assert "Traceback" not in recorder.stderr, recorder.stderr
    check_recorded(archive, {**before, **after}, results)


def test_sigterm_during_live_run_keeps_every_task_seen(
    processes,
    redis_server,
    cluster_app,
    tmp_path,
):
    """Sigterm during live run keeps every task seen."""
    archive = tmp_path / "archive"
    start_workers(processes, redis_server, tmp_path, names=("w1",))
    # A long --flush-interval: nothing is written before the signal but the final flush.
    recorder, tap, tap_file = record_and_tap(
        processes, redis_server, tmp_path,
        ["--archive", str(archive), "--freq", "0.5", "--flush-interval", "3600"],
    )  # fmt: skip
    first = send_mix(cluster_app, 100, prefix="a-")
    results = wait_results(first)
    time.sleep(1.0)

    # A steady stream of tasks while the signal arrives.
    stop_sending = threading.Event()
    stream: list = []

    def sender() -> None:
        while not stop_sending.is_set():
            stream.append(cluster_app.send_task("cluster.add", (1, 2)))
            time.sleep(0.02)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        time.sleep(2.0)
        signalled_at = time.time()
        assert recorder.terminate(signal.SIGTERM) == 0, recorder.stderr
    finally:
        stop_sending.set()
        thread.join(10)
    time.sleep(1.0)
    assert tap.terminate(signal.SIGINT) == 0, tap.stderr

    assert "Received SIGTERM" in recorder.stderr
    summary = recorder.stdout
    assert summary.startswith("Recorded "), summary
    check_recorded(archive, first, results, tap_file)

    rows = archived_tasks(archive)
    # Every task whose events reached the tap well before the signal is archived, in
    # the state those events left it in.
    seen: dict[str, list[dict]] = {}
    with open(tap_file, encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            if event["type"].startswith("task-") and event["local_received"] < signalled_at - 0.5:
                seen.setdefault(event["uuid"], []).append(event)
    streamed = {r.id for r in stream}
    assert len(seen.keys() & streamed) > 10, "no task of the stream was seen before the signal"
    missing = sorted(seen.keys() - rows.keys())
    assert not missing, f"{len(missing)} tasks seen before SIGTERM not archived: {missing[:3]}"
    for task_id, events in seen.items():
        state = CeleryState()
        for event in events:
            state.event(dict(event))
        expected = state.tasks[task_id].state
        archived = rows[task_id]["state"]
        # Later events may have reached the recorder too: never an earlier state.
        assert precedence(archived) <= precedence(expected), (task_id, archived, expected)
    # The summary counts what the archive holds: every task the recorder saw.
    tasks_in_summary = int(summary.split(": ", 1)[1].split(" tasks")[0].replace(",", ""))
    assert tasks_in_summary == len(rows)


def test_sigterm_while_the_broker_is_down(processes, redis_server, tmp_path):
    """Sigterm while the broker is down."""
    archive = tmp_path / "archive"
    recorder = start_archiver(
        processes, redis_server, tmp_path, "record",
        "record", "--broker", redis_server.url(0), "--archive", str(archive),
    )  # fmt: skip
    redis_server.stop(signal.SIGKILL)
    recorder.wait_log("Lost the broker", timeout=30)
    started = time.monotonic()
    assert recorder.terminate(signal.SIGTERM, timeout=20) == 0, recorder.stderr
    assert time.monotonic() - started < 10
    assert recorder.stdout.startswith("Recorded "), recorder.stdout
    assert "broker lost 1 times" in recorder.stdout
    assert "Traceback" not in recorder.stderr, recorder.stderr


def test_bad_messages_are_skipped_on_the_same_connection(
    processes,
    redis_server,
    cluster_app,
    tmp_path,
):
    """A client publishes malformed events every 0.1 s while real tasks run: every task
    is archived, each bad message is counted, and the connection is never dropped."""
    from celery.events.event import get_exchange
    from kombu import Producer

    from archiver.record import Recorder
    from archiver.sources import celery_app

    start_workers(processes, redis_server, tmp_path, names=("w1",))
    archive = tmp_path / "archive"
    recorder = Recorder(str(archive), freq=0.5, duration=60)
    before = redis_server.pattern_subscribers()
    runner = threading.Thread(target=recorder.live, args=(celery_app(redis_server.url(0)),))
    runner.start()
    wait_for(lambda: redis_server.pattern_subscribers() - before, 30, "the recorder to subscribe")
    time.sleep(0.3)

    now = time.time()
    bad_bodies = [
        {"type": "task-succeeded", "uuid": "bad-1", "hostname": "x", "timestamp": "yesterday",
         "utcoffset": 0},
        {"type": "task-succeeded", "uuid": "bad-2", "hostname": "x", "timestamp": 10**400,
         "utcoffset": 0.0},
        {"type": "worker-heartbeat", "hostname": "x", "timestamp": now, "utcoffset": "UTC"},
        {"uuid": "bad-3", "timestamp": now},  # no type
        "not a dict",
        [1, 2, 3],
        {"type": "task-received", "uuid": "bad-4", "hostname": "x", "timestamp": now,
         "clock": 10**30},  # a clock that must not poison the receiver's
        {"type": "task-started", "uuid": 5, "hostname": "x", "timestamp": now},  # State rejects
    ]  # fmt: skip
    stop_sending = threading.Event()
    published = []

    def send_bad() -> None:
        with cluster_app.connection_for_write() as conn:
            producer = Producer(conn.default_channel, exchange=get_exchange(conn, "celeryev"))
            for i in itertools.count():
                if stop_sending.wait(0.1):
                    return
                if i % 9 == 8:  # not JSON at all
                    body = b"{not json"
                    options = {"content_type": "application/json", "content_encoding": "utf-8"}
                    producer.publish(body, routing_key="task.bad", **options)
                else:
                    producer.publish(bad_bodies[i % 9], routing_key="task.bad", serializer="json")
                published.append(i)

    sender = threading.Thread(target=send_bad)
    sender.start()
    try:
        sent = send_mix(cluster_app, 150)
        results = wait_results(sent)
        time.sleep(1.5)  # the last events reach the recorder
    finally:
        stop_sending.set()
        sender.join()
        recorder.stop()
        runner.join(60)
    assert not runner.is_alive()
    summary = recorder.summary()
    assert len(published) >= 20
    assert recorder.live_stats.losses == 0 and recorder.live_stats.connects == 1
    assert summary.broker_losses == 0
    # Nothing lost but the values of accepted bad events that do not fit their column
    # (a clock that is not an integer is stored as null, counted, as Celery accepts it).
    assert summary.lost == sum(summary.values_nulled.values())
    assert summary.bad_messages >= len(published) // 2  # decoding failures
    assert summary.rejected > 0  # the rest decode but the State rejects them
    check_recorded(archive, sent, results)
    assert "bad-4" in archived_tasks(archive)  # the event with a huge clock is kept
    clocks = Archive(archive).latest("tasks")["clock"]
    assert clocks.max() < 2**63  # and later events' clocks were not made huge
