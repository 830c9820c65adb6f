"""archiver.sources: replay files parsed line by line (hostile lines counted and skipped), and
live events decoded from real broker messages (redis-server and a Celery app)."""

from __future__ import annotations

import gzip
import os
import threading
import time
import uuid

import pytest

from archiver.errors import ArchiverError
from archiver.sources import (
    BrokerUnavailable,
    LineStats,
    LiveStats,
    celery_app,
    check_broker,
    consume_live,
    is_pipe,
    open_events_file,
    read_events,
)

from . import helpers
from .livecluster import free_port, needs_redis, wait_for


# -- replay files ------------------------------------------------------------------------------
def test_a_real_recording_parses_to_its_events():
    """Every line of the small recording is one event, none malformed, in file order."""
    stats = LineStats()
    with open_events_file(str(helpers.SMALL)) as f:
        got = list(read_events(f, stats))
    assert got == helpers.read_events(helpers.SMALL)
    assert stats.events == stats.lines == len(got) and stats.malformed == 0 and stats.report() == ""


def test_a_gzipped_recording_is_detected_by_its_content(tmp_path):
    """A gzip file is decompressed whatever its name says."""
    path = tmp_path / "events.jsonl"  # no .gz suffix
    path.write_bytes(gzip.compress(helpers.SMALL.read_bytes()))
    stats = LineStats()
    with open_events_file(str(path)) as f:
        assert len(list(read_events(f, stats))) == stats.events > 900


def test_a_file_that_cannot_be_opened_is_one_line(tmp_path):
    """A missing file or a directory raises ArchiverError naming the path."""
    with pytest.raises(ArchiverError, match=r"replay file not found: .*nope\.jsonl"):
        open_events_file(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ArchiverError, match=f"replay file {tmp_path} is a directory"):
        open_events_file(str(tmp_path))


def test_read_events_from_a_pipe_sees_a_stop_without_a_new_line():
    """On a pipe, a stop is seen while a line is still incomplete; whole lines come first."""
    r, w = os.pipe()
    stop = threading.Event()
    stats = LineStats()
    with os.fdopen(r, "rb") as stream, os.fdopen(w, "wb") as writer:
        assert is_pipe(stream)
        writer.write(b'{"type": "a"}\n{"type": "b"}\n{"type": "inco')
        writer.flush()
        got = []
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        for event in read_events(stream, stats, should_stop=stop.is_set):
            got.append(event["type"])
        assert time.monotonic() - started < 2  # did not wait for the rest of the line
    assert got == ["a", "b"] and stats.events == 2 and stats.malformed == 0


def test_read_events_from_a_pipe_reads_what_was_sent_before_the_stop():
    """On a pipe, the lines already sent when the stop comes are all read."""
    r, w = os.pipe()
    stats = LineStats()
    stop = threading.Event()
    with os.fdopen(r, "rb") as stream, os.fdopen(w, "wb") as writer:
        got = []
        writer.write(b'{"n": 0}\n')
        writer.flush()
        for event in read_events(stream, stats, should_stop=stop.is_set):
            got.append(event["n"])
            if event["n"] == 0:  # the stop comes while 1000 more lines wait in the pipe
                writer.write(b"".join(b'{"n": %d}\n' % i for i in range(1, 1001)))
                writer.flush()
                stop.set()
    assert got == list(range(1001))


def test_read_events_regular_file_ignores_should_stop(tmp_path):
    """A regular file is read to its end whatever should_stop says; blank lines are skipped."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"n": 1}\n\n  \n{"n": 2}')  # blank lines, no final newline
    stats = LineStats()
    with open(path, "rb") as f:
        assert not is_pipe(f)
        got = [e["n"] for e in read_events(f, stats, should_stop=lambda: True)]
    assert got == [1, 2] and stats.lines == 4 and stats.malformed == 0


def test_line_stats_report():
    """The report names the count and the first five malformed line numbers."""
    stats = LineStats()
    assert stats.report() == ""
    for n in (3, 5, 8, 13, 21, 34, 55):
        stats.bad(n, "why")
    assert stats.report() == "Skipped 7 malformed lines (line 3, 5, 8, 13, 21, ...)"


def test_read_events_edge_cases(tmp_path):
    """BOM, CRLF and bad UTF-8 are kept; two objects, a non-object and deep nesting are skipped."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"n": 1}\n'  # a UTF-8 BOM on the first line
        b'   {"n": 2}  \r\n'  # spaces around, CRLF
        b'{"n": 3}{"n": 4}\n'  # two objects on one line: malformed
        b'{"n": "\xff"}\n'  # invalid UTF-8: replaced, kept
        b"NaN\n"  # JSON-ish, not an object
        b'{"n": 6, "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"  # too deep
        b'{"n": 7}'
    )
    stats = LineStats()
    with open(path, "rb") as f:
        got = [e["n"] for e in read_events(f, stats)]
    assert got == [1, 2, "\ufffd", 7]
    assert stats.malformed_lines == [3, 5, 6] and stats.events == 4 and stats.lines == 7


def test_malformed_lines_name_why_with_or_without_leading_space(tmp_path, caplog):
    """A bad line's warning says why, the same whether or not spaces precede it."""
    deep = b"[" * 100_000 + b"]" * 100_000
    lines = [b"nope", b"  nope", b'{"n": }', b'  {"n": }', deep, b"  " + deep, b"   ", b"[1]"]
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = LineStats()
    stats.MAX_REPORTED = len(lines)
    with caplog.at_level("WARNING", logger="archiver.sources"), open(path, "rb") as f:
        assert list(read_events(f, stats)) == []
    why = {r.args[0]: r.args[1] for r in caplog.records}  # line number -> reason
    assert why[1] == why[2] == "not JSON (Expecting value)"
    assert why[3] == why[4] == "not JSON (Expecting value)"
    assert why[5] == why[6] == "not JSON (nested too deeply)"
    assert why[8] == "not an event object (list)"
    assert 7 not in why and stats.malformed == 7 and stats.lines == 8


def test_read_events_truncated_gzip(tmp_path):
    """A truncated .gz yields the lines before the cut and counts the cut as one bad line."""
    data = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(10_000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    stats = LineStats()
    with open_events_file(str(path)) as f:
        got = list(read_events(f, stats))
    assert 0 < len(got) < 10_000 and stats.malformed == 1
    assert stats.malformed_lines == [stats.lines + 1]


# -- the live broker ---------------------------------------------------------------------------
def test_an_unreachable_broker_is_one_line():
    """Nothing listening on the broker's port raises BrokerUnavailable naming the URL."""
    port = free_port()
    with pytest.raises(
        BrokerUnavailable, match=f"cannot connect to the broker at redis://.*:{port}"
    ):
        check_broker(celery_app(f"redis://127.0.0.1:{port}/0"), timeout=1)


def test_a_bad_app_is_named():
    """``-A`` naming something that is not a Celery app is refused by name."""
    with pytest.raises(ArchiverError, match="cannot import Celery app 'no_such_module'"):
        celery_app(app="no_such_module")
    with pytest.raises(ArchiverError, match="'archiver:State' is not a Celery app"):
        celery_app(app="archiver:State")


@needs_redis
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_live_events_are_decoded_and_bad_messages_counted(redis_server, cluster_app):
    """Events a Celery client sends reach the handler as sent; undecodable ones are counted
    and skipped on the same connection."""
    from celery.events.event import get_exchange
    from kombu import Producer

    app = celery_app(redis_server.url(0))
    check_broker(app)
    got: list[dict] = []
    stop = threading.Event()
    stats = LiveStats()
    before = redis_server.pattern_subscribers()
    consumer = threading.Thread(
        target=consume_live,
        args=(app, got.append),
        kwargs={"should_stop": stop.is_set, "stats": stats},
    )
    consumer.start()
    try:
        wait_for(
            lambda: redis_server.pattern_subscribers() - before, 30, "the receiver to subscribe"
        )
        ids = [str(uuid.uuid4()) for _ in range(20)]
        with cluster_app.connection_for_write() as conn:
            dispatcher = cluster_app.events.Dispatcher(conn, hostname="client@test")
            producer = Producer(conn.default_channel, exchange=get_exchange(conn, "celeryev"))
            for i, task_id in enumerate(ids):
                dispatcher.send("task-sent", uuid=task_id, name="cluster.add", args=f"({i}, 1)")
                if i % 5 == 0:
                    options = {"content_type": "application/json", "content_encoding": "utf-8"}
                    producer.publish(b"{not json", routing_key="task.bad", **options)
                    producer.publish("not a dict", routing_key="task.bad", serializer="json")
            dispatcher.close()
        sent = set(ids)
        wait_for(lambda: sent <= {e.get("uuid") for e in got}, 30, "the events sent")
    finally:
        stop.set()
        consumer.join(30)
    assert not consumer.is_alive()
    events = [e for e in got if e.get("uuid") in sent]
    assert [e["uuid"] for e in events] == ids  # one connection: in the order sent
    assert all(e["type"] == "task-sent" and e["hostname"] == "client@test" for e in events)
    assert [e["args"] for e in events] == [f"({i}, 1)" for i in range(20)]
    assert all(isinstance(e["timestamp"], float) and "local_received" in e for e in events)
    assert stats.connects == 1 and stats.losses == 0
    assert stats.bad_kinds == {
        "undecodable message (DecodeError)": 4,
        "not an event object (str)": 4,
    }
    assert stats.bad_messages == 8
