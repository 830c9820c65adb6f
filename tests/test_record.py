"""`archiver record --replay`: end to end through the CLI (in process and as a subprocess)."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver import Archive
from archiver.cli import cli
from archiver.pidfile import Pidfile
from tests.cameras import CountingCamera

from .helpers import SAMPLE, SMALL, normalise_row, read_events, reference

ROOT = Path(__file__).resolve().parent.parent


def record(*args, input=None):
    """`archiver record ARGS` in process; returns click's Result."""
    return CliRunner().invoke(
        cli, ["record", "--quiet", *map(str, args)], input=input, catch_exceptions=False
    )


def archived(path) -> dict[str, tuple]:
    latest = Archive(path).latest("tasks")
    return {r["uuid"]: normalise_row(r) for r in latest.to_dict("records")}


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want), (len(got), len(want))
    diffs = [(u, got[u], want[u]) for u in want if got[u] != want[u]]
    assert not diffs, f"{len(diffs)} tasks differ, e.g. {diffs[:3]}"


def write_jsonl(path: Path, events, *, compress: bool = False) -> Path:
    data = "".join(json.dumps(e) + "\n" for e in events).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def spaced(events, gap: float, start: float = 1_700_000_000.0) -> list[dict]:
    """Copies of ``events`` re-timed ``gap`` seconds apart."""
    out = []
    for i, event in enumerate(events):
        e = dict(event)
        e["timestamp"] = e["local_received"] = start + i * gap
        out.append(e)
    return out


# -- the archive matches Celery's State ------------------------------------------------------
@pytest.mark.parametrize("path", [SAMPLE, SMALL], ids=["sample", "small"])
def test_replay_archive_matches_celery_state(tmp_path, path):
    """Replay archive matches celery state."""
    archive = tmp_path / "archive"
    result = record("--replay", path, "--archive", archive)
    assert result.exit_code == 0, result.output
    events = read_events(path)
    assert result.stdout.startswith(f"Recorded {len(events):,} events into ")
    assert_same(archived(archive), reference(events))
    workers = Archive(archive).latest("workers")
    assert set(workers["hostname"]) == {"w1@vm", "w2@vm"}


def test_snapshots_follow_event_time_at_speed_0(tmp_path, sample_events):
    """Snapshots follow event time at speed 0."""
    archive = tmp_path / "archive"
    started = time.monotonic()
    result = record("--replay", SAMPLE, "--archive", archive, "--freq", "0.5")
    assert time.monotonic() - started < 20  # 26 s of events, replayed as fast as possible
    assert result.exit_code == 0, result.output
    stamps = [e["timestamp"] for e in sample_events]
    first, span = sample_events[0]["timestamp"], max(stamps) - sample_events[0]["timestamp"]
    snaps = Archive(archive).load("snapshots").sort_values("captured_at")
    # one per 0.5 s of event time, plus the final one
    assert len(snaps) == math.floor(span / 0.5) + 1
    captured = snaps["captured_at"].map(lambda t: t.value / 1e9).tolist()
    assert min(stamps) <= captured[0] and captured[-1] <= max(stamps) + 1e-6
    steps = [round(b - a, 6) for a, b in itertools.pairwise(captured[:-1])]
    assert set(steps) == {0.5}
    assert captured[0] == pytest.approx(first + 0.5, abs=1e-6)
    # the event counter grows with the replayed clock, and ends with every event
    assert snaps["event_count"].is_monotonic_increasing
    assert snaps["event_count"].iloc[-1] == len(sample_events)


def test_speed_keeps_the_gaps(tmp_path, small_events):
    """--speed 50 replays the gaps between events 50 times faster."""
    events = spaced(small_events[:30], gap=1.0)  # 29 s of event time
    path = write_jsonl(tmp_path / "slow.jsonl", events)
    started = time.monotonic()
    result = record("--replay", path, "--archive", tmp_path / "a50", "--speed", "50")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert 29 / 50 - 0.05 <= elapsed < 10
    fast_started = time.monotonic()
    assert record("--replay", path, "--archive", tmp_path / "a0").exit_code == 0
    assert time.monotonic() - fast_started < elapsed
    # the same snapshots whatever the speed: they follow event time
    s50 = Archive(tmp_path / "a50").load("snapshots")["captured_at"].tolist()
    s0 = Archive(tmp_path / "a0").load("snapshots")["captured_at"].tolist()
    assert s50 == s0 and len(s0) == 30
    assert_same(archived(tmp_path / "a50"), reference(events))


def test_stdin_and_gzip(tmp_path, small_events):
    """A replay from stdin and from a .gz file archive the same rows as the plain file."""
    want = reference(small_events)
    result = record("--replay", "-", "--archive", tmp_path / "stdin", input=SMALL.read_bytes())
    assert result.exit_code == 0, result.output
    assert_same(archived(tmp_path / "stdin"), want)

    gz = write_jsonl(tmp_path / "events.jsonl.gz", small_events, compress=True)
    assert record("--replay", gz, "--archive", tmp_path / "gz").exit_code == 0
    assert_same(archived(tmp_path / "gz"), want)
    # gzip is recognised by its content, whatever the name
    plain_name = write_jsonl(tmp_path / "events.jsonl", small_events, compress=True)
    assert record("--replay", plain_name, "--archive", tmp_path / "gz2").exit_code == 0
    assert_same(archived(tmp_path / "gz2"), want)
    # and stdin can carry gzip too? no: documented as plain JSON lines
    result = record("--replay", "-", "--archive", tmp_path / "x", input=gz.read_bytes()[:50])
    assert "malformed" in result.stderr


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path, small_events):
    """Malformed lines are reported with line numbers and skipped."""
    lines = [json.dumps(e) for e in small_events[:200]]
    lines.insert(1, "{not json")  # line 2
    lines.insert(4, "")  # line 5: blank lines are not malformed
    lines.insert(6, "[1, 2]")  # line 7
    lines.insert(9, json.dumps(small_events[3])[:40])  # line 10: truncated
    lines.insert(11, "\xff\xfe garbage")  # line 12
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1" if False else "utf-8")
    result = record("--replay", path, "--archive", tmp_path / "archive")
    assert result.exit_code == 0, result.output
    assert "Skipped 4 malformed lines (line 2, 7, 10, 12)" in result.stderr
    assert "Skipping malformed line 2: not JSON" in result.stderr
    assert "Skipping malformed line 7: not an event object (list)" in result.stderr
    assert result.stdout.startswith("Recorded 200 events")
    assert "4 malformed lines" in result.stdout
    assert_same(archived(tmp_path / "archive"), reference(small_events[:200]))


def test_invalid_utf8_is_replaced_not_dropped(tmp_path, small_events):
    """Invalid utf8 is replaced not dropped."""
    event = dict(small_events[4])
    assert event["type"] == "task-sent"
    raw = json.dumps(event).encode().replace(b'"args": "', b'"args": "\xff', 1)
    path = tmp_path / "latin.jsonl"
    path.write_bytes(raw + b"\n")
    result = record("--replay", path, "--archive", tmp_path / "archive")
    assert result.exit_code == 0 and "malformed" not in result.stderr, result.output
    (row,) = Archive(tmp_path / "archive").latest("tasks").to_dict("records")
    assert row["args"].startswith("\ufffd")


def test_limit(tmp_path, sample_events):
    """--limit 1000 records exactly the first 1,000 events."""
    result = record("--replay", SAMPLE, "--archive", tmp_path / "archive", "--limit", 1000)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Recorded 1,000 events")
    assert_same(archived(tmp_path / "archive"), reference(sample_events[:1000]))
    snaps = Archive(tmp_path / "archive").load("snapshots")
    assert snaps["event_count"].max() == 1000


def test_duration_stops_a_real_time_replay(tmp_path, small_events):
    """Duration stops a real time replay."""
    path = write_jsonl(tmp_path / "slow.jsonl", spaced(small_events, gap=0.05))  # 48 s
    started = time.monotonic()
    result = record(
        "--replay", path, "--archive", tmp_path / "archive", "--speed", 1, "--duration", "1.5s"
    )
    assert result.exit_code == 0, result.output
    assert 1.4 < time.monotonic() - started < 6
    events = int(result.stdout.split()[1].replace(",", ""))
    assert 10 < events < 100  # ~30 events in 1.5 s of real time
    assert_same(archived(tmp_path / "archive"), reference(spaced(small_events, 0.05)[:events]))


def test_duration_accepts_units_and_refuses_nonsense(tmp_path):
    """Duration accepts units and refuses nonsense."""
    ok = record("--replay", SMALL, "--archive", tmp_path / "a", "--duration", "55m")
    assert ok.exit_code == 0
    bad = record("--replay", SMALL, "--archive", tmp_path / "b", "--duration", "soon")
    assert bad.exit_code == 2 and "invalid duration 'soon'" in bad.stderr


@pytest.mark.parametrize("command", ["record", "tap"])
def test_a_bare_number_is_no_duration(tmp_path, command):
    """`--duration 30` is refused as `--older-than 30` is: one line naming the units."""
    source = ["--replay", str(SMALL)] if command == "record" else ["--broker", "redis://x"]
    out = ["--archive" if command == "record" else "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(cli, [command, *source, *out, "--duration", "30"])
    assert result.exit_code == 2, result.output
    assert "invalid duration '30' for --duration: use a number and a unit" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "a").exists()


def test_max_tasks_bounds_the_state_not_the_archive(tmp_path, sample_events):
    """Max tasks bounds the state not the archive."""
    result = record("--replay", SAMPLE, "--archive", tmp_path / "archive", "--max-tasks", 100)
    assert result.exit_code == 0, result.output
    seen = int(result.stdout.split(": ", 1)[1].split(" tasks,")[0].replace(",", ""))
    assert seen >= len(reference(sample_events))  # an evicted task seen again counts again
    latest = Archive(tmp_path / "archive").latest("tasks")
    # every task was written while it was in the state
    assert set(latest["uuid"]) == set(reference(sample_events))
    assert Archive(tmp_path / "archive").load("snapshots")["tasks_in_state"].max() <= 100


def test_mode_full_writes_every_task_at_every_snapshot(tmp_path, small_events):
    """Mode full writes every task at every snapshot."""
    assert (
        record("--replay", SMALL, "--archive", tmp_path / "full", "--mode", "full").exit_code == 0
    )
    assert record("--replay", SMALL, "--archive", tmp_path / "changes").exit_code == 0
    full = Archive(tmp_path / "full")
    tasks, snaps = full.load("tasks"), full.load("snapshots")
    per_snapshot = tasks.groupby("snapshot_id").size()
    for row in snaps.to_dict("records"):
        assert per_snapshot.get(row["snapshot_id"], 0) == row["tasks_in_state"]
    assert len(tasks) > len(Archive(tmp_path / "changes").load("tasks"))
    assert_same(archived(tmp_path / "full"), reference(small_events))


def test_redact(tmp_path, small_events):
    """--redact hides args, kwargs and result in every row."""
    archive = tmp_path / "archive"
    result = record("--replay", SMALL, "--archive", archive, "--redact", "args,kwargs,result")
    assert result.exit_code == 0, result.output
    tasks = Archive(archive).load("tasks")
    for column in ("args", "kwargs", "result"):
        assert tasks[column].isna().all(), column
    assert tasks["name"].notna().any() and tasks["exception"].notna().any()

    hashed, key = tmp_path / "hashed", tmp_path / "key"
    key.write_bytes(b"secret key\n")
    assert (
        record(
            "--replay",
            SMALL,
            "--archive",
            hashed,
            "--redact",
            "args",
            "--redact-mode",
            "hash",
            "--redact-key-file",
            key,
        ).exit_code
        == 0
    )
    args = Archive(hashed).load("tasks")["args"].dropna()
    assert len(args) and args.str.fullmatch("[0-9a-f]{32}").all()

    bad = record("--replay", SMALL, "--archive", tmp_path / "bad", "--redact", "args,password")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # one line
    assert "cannot redact password" in bad.stderr


def test_clear_after(tmp_path, small_events):
    """--clear-after empties the state after each snapshot."""
    archive = tmp_path / "archive"
    result = record("--replay", SMALL, "--archive", archive, "--clear-after")
    assert result.exit_code == 0, result.output
    snaps = Archive(archive).load("snapshots").sort_values("captured_at")
    # the counters restart after each snapshot: no snapshot saw every event
    assert snaps["event_count"].max() < len(small_events)
    assert snaps["event_count"].sum() == len(small_events)
    # nothing was lost: every task that an event touched is in the archive
    assert set(Archive(archive).latest("tasks")["uuid"]) == set(reference(small_events))


def test_maxrate_applies_to_the_replayed_clock(tmp_path, sample_events):
    """Maxrate applies to the replayed clock."""
    archive = tmp_path / "archive"
    result = record("--replay", SAMPLE, "--archive", archive, "--maxrate", "6/m")
    assert result.exit_code == 0, result.output
    snaps = Archive(archive).load("snapshots")
    # 26 s of events at 6 per minute of event time: 3 shots, and the final one
    assert 3 <= len(snaps) <= 5
    assert_same(archived(archive), reference(sample_events))


def test_custom_camera(tmp_path, small_events):
    """--camera runs a user's Polaroid (module:Class or dotted), which writes no Parquet."""
    CountingCamera.shots.clear()
    result = record(
        "--replay",
        SMALL,
        "--archive",
        tmp_path / "archive",
        "--camera",
        "tests.cameras:CountingCamera",
    )
    assert result.exit_code == 0, result.output
    assert len(CountingCamera.shots) == 9  # 8 s of events, freq 1, and the final shot
    assert CountingCamera.shots[-1][0] == len(small_events)
    assert "9 snapshots" in result.stdout
    assert not (tmp_path / "archive").exists()  # a plain Polaroid writes nothing
    dotted = record("--replay", SMALL, "--camera", "tests.cameras.CountingCamera", "--limit", 5)
    assert dotted.exit_code == 0, dotted.output


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tests.cameras:NotACamera", "is not a camera: it has no install() or cancel() method"),
        ("tests.cameras:Missing", "cannot import camera"),
        ("no_such_module_xyz:Camera", "cannot import camera"),
        ("nodots", "cannot import camera"),
    ],
)
def test_bad_camera_is_a_one_line_error(tmp_path, spec, message):
    """Bad camera is a one line error."""
    result = record("--replay", SMALL, "--archive", tmp_path / "archive", "--camera", spec)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replay", "missing.jsonl"], "replay file not found: missing.jsonl"),
        (["--replay", "."], "is a directory"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    """User errors are one line."""
    result = record(*args, "--archive", tmp_path / "archive")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_exactly_one_source(tmp_path):
    """Neither or both of --replay and --broker is a usage error (exit 2)."""
    none = record("--archive", tmp_path)
    both = record("--replay", SMALL, "--broker", "redis://x", "--archive", tmp_path)
    for result in (none, both):
        assert result.exit_code == 2 and "give exactly one source" in result.stderr


def test_unreachable_broker_exits_69_without_traceback(tmp_path):
    """Unreachable broker exits 69 without traceback."""
    from tests.livecluster import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (
        ["record", "--broker", url, "--archive", str(tmp_path)],
        ["tap", "--broker", url, "--out", str(tmp_path / "t.jsonl")],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 69, result.output
        assert "cannot connect to the broker" in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


NO_EVENTS = (
    "Note: no events arrived: are the workers sending events? Start them with -E, or run: "
    "celery -A proj control enable_events"
)


def test_a_live_run_without_events_says_why(tmp_path, redis_server):
    """A live run on a real broker with no worker sending events ends with the -E hint."""
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "record", "--broker", redis_server.url(0),
         "--archive", str(tmp_path / "archive"), "--duration", "2s", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Recorded 0 events into "), result.stdout
    assert result.stderr.strip().splitlines()[-1] == NO_EVENTS


def test_a_replay_without_events_gives_no_hint(tmp_path):
    """An empty replay file is no cluster question: no -E hint."""
    (tmp_path / "empty.jsonl").write_text("")
    result = record("--replay", tmp_path / "empty.jsonl", "--archive", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "Recorded 0 events" in result.stdout and "Note:" not in result.stderr


# -- pidfile ------------------------------------------------------------------------------
HOLD = """
import sys, time
from archiver.pidfile import Pidfile
p = Pidfile(sys.argv[1]); p.acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run.pid; killed (by pid) at the end."""
    path = tmp_path / "run.pid"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc, path
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_pidfile_refuses_while_a_live_process_holds_it(tmp_path, holder):
    """Pidfile refuses while a live process holds it."""
    proc, path = holder
    result = record("--replay", SMALL, "--archive", tmp_path / "archive", "--pidfile", path)
    assert result.exit_code == 1
    assert f"another archiver is running (pid {proc.pid}, pidfile {path})" in result.stderr
    assert not (tmp_path / "archive").exists()
    assert path.read_text().strip() == str(proc.pid)  # untouched
    proc.kill()
    proc.wait(10)
    # killed without cleaning up: its pidfile is stale, and taken over
    assert path.exists()
    result = record("--replay", SMALL, "--archive", tmp_path / "archive", "--pidfile", path)
    assert result.exit_code == 0, result.output
    assert not path.exists()


def test_pidfile_stale_file_is_taken_over_and_removed_on_exit(tmp_path):
    """Pidfile stale file is taken over and removed on exit."""
    path = tmp_path / "run.pid"
    path.write_text("999999\n")  # a crashed run: the file, no lock
    result = record("--replay", SMALL, "--archive", tmp_path / "archive", "--pidfile", path)
    assert result.exit_code == 0, result.output
    assert not path.exists()
    # removed on an error exit too
    result = record("--replay", tmp_path / "nope", "--archive", tmp_path / "a", "--pidfile", path)
    assert result.exit_code == 1 and not path.exists()


def test_pidfile_in_a_missing_directory_is_a_one_line_error(tmp_path):
    """Pidfile in a missing directory is a one line error."""
    path = tmp_path / "no" / "such" / "dir" / "run.pid"
    result = record("--replay", SMALL, "--archive", tmp_path / "archive", "--pidfile", path)
    assert result.exit_code == 1 and "cannot create pidfile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_pidfile_holds_our_pid_while_running(tmp_path):
    """Pidfile holds our pid while running."""
    path = tmp_path / "run.pid"
    seen = []

    class Spy(CountingCamera):
        def on_shutter(self, state):
            seen.append(path.read_text())

    import tests.cameras as cameras

    cameras.Spy = Spy
    try:
        result = record(
            "--replay",
            SMALL,
            "--archive",
            tmp_path / "a",
            "--pidfile",
            path,
            "--camera",
            "tests.cameras:Spy",
        )
    finally:
        del cameras.Spy
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {f"{os.getpid()}\n"}
    assert Pidfile(path).read_pid() is None


# -- signals (subprocess) -----------------------------------------------------------------
def archiver_proc(args, tmp_path, **kwargs):
    out = open(tmp_path / "stdout", "wb")  # noqa: SIM115
    err = open(tmp_path / "stderr", "wb")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "archiver", *map(str, args)],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            start_new_session=True,
            **kwargs,
        )
    finally:
        out.close()
        err.close()


def stop_proc(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_a_stdin_replay_keeps_every_event_sent(tmp_path, small_events, sig):
    # 400 events, 0.05 s apart: 20 s of event time, so a --speed 1 replay lags behind.
    """Signal on a stdin replay keeps every event sent."""
    events = spaced(small_events[:400], gap=0.05, start=time.time())
    archive = tmp_path / "archive"
    proc = archiver_proc(
        ["record", "--replay", "-", "--speed", 1, "--archive", archive, "--freq", 1],
        tmp_path,
        stdin=subprocess.PIPE,
    )
    try:
        sent = 0
        for _ in range(10):  # slowly: 20 events every 0.1 s
            chunk = events[sent : sent + 20]
            proc.stdin.write("".join(json.dumps(e) + "\n" for e in chunk).encode())
            proc.stdin.flush()
            sent += len(chunk)
            time.sleep(0.1)
        time.sleep(0.3)
        assert proc.poll() is None  # still replaying, stdin still open
        signalled = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(20)
        assert time.monotonic() - signalled < 5
    finally:
        stop_proc(proc)
        proc.stdin.close()
    stdout = (tmp_path / "stdout").read_text()
    stderr = (tmp_path / "stderr").read_text()
    assert rc == 0, stderr
    assert f"Received {sig.name}: taking a final snapshot and flushing" in stderr
    assert stdout.startswith(f"Recorded {sent} events into "), stdout
    assert "Traceback" not in stderr
    assert_same(archived(archive), reference(events[:sent]))


def wait_until_open(proc: subprocess.Popen, path, timeout: float = 60) -> None:
    """Wait until ``proc`` has ``path`` open (read from /proc: no sleep that a slow
    start, such as importing under load, can outlast)."""
    target = os.path.realpath(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process ended before opening the file"
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == target for fd in fds):
                return
        time.sleep(0.05)
    raise AssertionError(f"the process did not open {path} in {timeout} s")


def test_sigterm_on_a_file_replay_stops_at_once(tmp_path, small_events):
    """Sigterm on a file replay stops at once."""
    path = write_jsonl(tmp_path / "slow.jsonl", spaced(small_events, gap=0.05))  # 48 s
    archive = tmp_path / "archive"
    proc = archiver_proc(["record", "--replay", path, "--speed", 1, "--archive", archive], tmp_path)
    try:
        wait_until_open(proc, path)  # the handlers are in place before the replay opens it
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    finally:
        stop_proc(proc)
    stdout = (tmp_path / "stdout").read_text()
    assert rc == 0, (tmp_path / "stderr").read_text()
    events = int(stdout.split()[1].replace(",", ""))
    assert 0 < events < 200, stdout
    assert_same(archived(archive), reference(spaced(small_events, 0.05)[:events]))


def test_python_dash_m_archiver(tmp_path):
    """python -m archiver runs the CLI."""
    archive = tmp_path / "archive"
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "record", "--replay", SMALL, "--archive", archive],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Recorded 958 events into ")
    assert Archive(archive).tables() == ["snapshots", "tasks", "workers"]
    version = subprocess.run(
        [sys.executable, "-m", "archiver", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and "archiver" in version.stdout


def test_flushes_follow_event_time_too(tmp_path, sample_events):
    # 26 s of events: with --flush-interval 5 (of event time), 4 to 6 files per table,
    # however fast the replay; the default (60 s) writes one file per table.
    """Flushes follow event time too."""
    many = record("--replay", SAMPLE, "--archive", tmp_path / "many", "--flush-interval", 5)
    assert many.exit_code == 0, many.output
    one = record("--replay", SAMPLE, "--archive", tmp_path / "one")
    assert " rows in 3 files " in one.stdout
    for table in ("tasks", "workers", "snapshots"):
        files = Archive(tmp_path / "many").files(table)
        assert 4 <= len(files) <= 7, (table, len(files))
    assert_same(archived(tmp_path / "many"), reference(sample_events))


def test_rows_that_cannot_be_written_fail_the_run(tmp_path):
    """An archive that cannot be written to ends with an Error line and exit code 74, not 0."""
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "tasks").write_text("")  # a file where the tasks table goes
    result = CliRunner().invoke(
        cli, ["record", "--replay", str(SMALL), "--archive", str(tmp_path / "arch"), "-q"]
    )
    assert result.exit_code == 74
    assert "211 tasks" in result.stdout and "rows never written" in result.stdout
    unwritten = re.search(r"([0-9,]+) rows never written", result.stdout).group(1)
    assert f"\nError: {unwritten} rows could not be written to " in result.stderr


class FailingCamera(CountingCamera):
    """A user camera whose every third snapshot fails."""

    def on_shutter(self, state):
        super().on_shutter(state)
        if len(type(self).shots) % 3 == 0:
            raise OSError("the camera's disk is full")


def test_failed_snapshots_fail_the_run(tmp_path):
    """A snapshot that raised may have lost data: counted, an Error line, exit 74."""
    CountingCamera.shots.clear()
    result = record("--replay", SMALL, "--camera", "tests.test_record:FailingCamera")
    assert result.exit_code == 74, result.output
    assert "3 snapshots failed" in result.stdout
    assert "\nError: 3 snapshots failed (see the log)" in result.stderr


def test_bad_input_is_counted_and_exits_0(tmp_path, small_events):
    """Malformed lines and rejected events are reported, not lost data: exit 0."""
    events = [json.dumps(e) for e in small_events]
    events.insert(10, "{not json")
    events.insert(20, json.dumps({"uuid": "x", "timestamp": 4_102_444_800.0}))  # no type
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(events) + "\n")
    result = record("--replay", path, "--archive", tmp_path / "archive")
    assert result.exit_code == 0, result.output
    assert "1 malformed lines and 1 bad events skipped" in result.stdout
    assert {p.name for p in (tmp_path / "archive" / "snapshots").iterdir()} == {
        f"date={datetime.fromtimestamp(small_events[0]['timestamp'], tz=timezone.utc):%Y-%m-%d}"
    }


def test_retention_file_expires_while_recording(tmp_path):
    """--retention makes the camera's cleanup expire by state every --cleanup-freq seconds."""
    policy = tmp_path / "retention.json"
    policy.write_text('{"per_state": {"SUCCESS": "1s"}}')
    result = record(
        "--replay", SAMPLE, "--archive", tmp_path / "a", "--retention", policy,
        "--cleanup-freq", 5, "--flush-interval", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    states = Archive(tmp_path / "a").latest("tasks")["state"].value_counts()
    assert states["SUCCESS"] < 1680  # the recording's successes, now partly expired
    assert states["FAILURE"] == 280 and states["REVOKED"] == 150  # other states are kept
    bad = record("--replay", SMALL, "--archive", tmp_path / "b", "--retention", tmp_path / "x")
    assert bad.exit_code == 1 and "cannot read retention file" in bad.stderr


def test_record_events_is_the_whole_record_command(tmp_path):
    """The library call behind `archiver record --replay` writes the same archive and summary."""
    from archiver.record import record_events

    lines = SMALL.read_bytes().rstrip(b"\n").split(b"\n")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([lines[0], b"{nope", *lines[1:]]) + b"\n")
    summary = record_events(str(tmp_path / "lib"), replay=str(path), retention=None)
    cli_run = record("--replay", path, "--archive", tmp_path / "cli")
    assert cli_run.exit_code == 0, cli_run.output
    assert summary.events == len(lines) and summary.malformed == 1
    assert summary.malformed_report == "Skipped 1 malformed line (line 2)"
    assert summary.malformed_report in cli_run.stderr
    assert_same(archived(tmp_path / "lib"), archived(tmp_path / "cli"))


def test_record_events_needs_exactly_one_source(tmp_path):
    """Neither or both sources: one ArchiverError naming no option."""
    from archiver.errors import ArchiverError
    from archiver.record import record_events

    for sources in ({}, {"replay": str(SMALL), "broker": "redis://x"}):
        with pytest.raises(ArchiverError, match=r"^give exactly one source: a replay file"):
            record_events(str(tmp_path), **sources)
    assert not (tmp_path / "tasks").exists()


def test_tap_events_checks_the_broker_before_creating_the_file(tmp_path):
    """An unreachable broker raises BrokerUnavailable and leaves no output file."""
    from archiver.record import tap_events
    from archiver.sources import BrokerUnavailable

    out = tmp_path / "events.jsonl"
    with pytest.raises(BrokerUnavailable, match="cannot connect to the broker"):
        tap_events(str(out), broker="redis://127.0.0.1:1/0", limit=5)
    assert not out.exists()
