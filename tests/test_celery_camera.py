"""Cameras written for `celery events --camera`, run by `archiver record --camera`.

The camera under test, ``tests.cameras:SqliteCamera``, is a real subclass of Celery's
``celery.events.snapshot.Polaroid`` writing every shutter to SQLite. Its last snapshot is
compared with Celery's own State fed the same events: on replays of the recordings in
``data/`` and against a live cluster (redis-server and Celery workers).
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from celery.events.state import State as CeleryState
from click.testing import CliRunner

from archiver.cli import cli
from archiver.record import Recorder, load_camera_class
from archiver.state import State
from tests.cameras import SQLITE_ENV, TASK_COLUMNS, PlainCamera, SqliteCamera, _plain

from .helpers import SAMPLE, SMALL, read_events
from .livecluster import (
    free_port,
    needs_redis,
    record_and_tap,
    send_mix,
    start_workers,
    wait_results,
)


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch):
    path = tmp_path / "shots.sqlite"
    monkeypatch.setenv(SQLITE_ENV, str(path))
    return path


def record(*args):
    return CliRunner().invoke(cli, ["record", "--quiet", *map(str, args)], catch_exceptions=False)


def shots(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM shots ORDER BY shot").fetchall()


def snapshot(db, shot: int | None = None) -> dict:
    """One snapshot from SQLite (the last by default): counters, tasks in order, workers."""
    with sqlite3.connect(db) as conn:
        if shot is None:
            shot = conn.execute("SELECT MAX(shot) FROM shots").fetchone()[0]
        _, events, received, ntasks, _ = conn.execute(
            "SELECT * FROM shots WHERE shot = ?", (shot,)
        ).fetchone()
        tasks = conn.execute("SELECT * FROM tasks WHERE shot = ? ORDER BY rank", (shot,))
        workers = conn.execute("SELECT * FROM workers WHERE shot = ?", (shot,))
        return {
            "counts": (events, received, ntasks),
            "tasks": [row[2:] for row in tasks],
            "workers": {row[1]: row[2:] for row in workers},
        }


def celery_snapshot(state: CeleryState) -> dict:
    """What SqliteCamera would write for Celery's own State."""
    return {
        "counts": (state.event_count, state.task_count, len(state.tasks)),
        "tasks": [
            (
                uuid,
                *(_plain(getattr(task, f, None)) for f in TASK_COLUMNS),
                task.worker.hostname if task.worker is not None else None,
            )
            for uuid, task in state.tasks_by_time()
        ],
        "workers": {
            name: (w.processed, w.active, w.pid, json.dumps(w.heartbeats))
            for name, w in state.workers.items()
        },
    }


def celery_state(events) -> CeleryState:
    state = CeleryState()
    for event in events:
        state.event(dict(event))
    return state


class RaisingCamera(SqliteCamera):
    def __init__(self, *args, **kwargs) -> None:
        raise OSError("database is locked")


# -- replays ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SAMPLE, SMALL], ids=["sample", "small"])
def test_replay_last_snapshot_equals_celerys_state(tmp_path, sqlite_db, path):
    """A Celery camera on a replay: snapshots on event time, the last equal to Celery's State
    (every task field, tasks_by_time order, workers, counters)."""
    events = read_events(path)
    recorder = Recorder(str(tmp_path / "archive"), camera=SqliteCamera, freq=1.0)
    summary = recorder.replay_file(str(path))
    taken = shots(sqlite_db)
    assert summary.snapshots == len(taken) > 2 and summary.lost == 0
    assert {row[4] for row in taken} == {"archiver.state.State"}
    counts = [row[1] for row in taken]
    assert counts == sorted(counts) and counts[-1] == len(events)
    seconds = events[-1]["timestamp"] - events[0]["timestamp"]
    assert len(taken) == int(seconds) + 1  # one per second of event time, and the final one
    assert snapshot(sqlite_db) == celery_snapshot(celery_state(events))
    assert not (tmp_path / "archive").exists()  # a foreign camera writes no Parquet


@pytest.mark.parametrize("spec", ["tests.cameras:SqliteCamera", "tests.cameras.SqliteCamera"])
def test_cli_camera(tmp_path, sqlite_db, small_events, spec):
    """`-c module:Class` and `--camera module.Class`, as `celery events --camera`."""
    result = record("--replay", SMALL, "--archive", tmp_path / "a", "-c", spec, "-F", "2")
    assert result.exit_code == 0, result.output
    assert f"{len(shots(sqlite_db))} snapshots" in result.stdout
    assert len(shots(sqlite_db)) == 5  # 8 s of events every 2 s, and the final one
    assert snapshot(sqlite_db) == celery_snapshot(celery_state(small_events))


def test_maxrate_on_event_time_and_final_snapshot(tmp_path, sqlite_db, small_events):
    """`--maxrate` counts event time for a Celery camera too; the final shot is never skipped."""
    result = record(
        "--replay", SMALL, "--archive", tmp_path / "a", "-c", "tests.cameras:SqliteCamera"
    )
    assert result.exit_code == 0, result.output
    unlimited = len(shots(sqlite_db))
    sqlite_db.unlink()
    result = record(
        "--replay", SMALL, "--archive", tmp_path / "a", "-c", "tests.cameras:SqliteCamera",
        "--maxrate", "1/m",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert unlimited == 9 and len(shots(sqlite_db)) == 2  # one token in 8 s, and the final
    assert snapshot(sqlite_db) == celery_snapshot(celery_state(small_events))


def test_clear_after_counts_every_event_once(tmp_path, sqlite_db, small_events):
    """With --clear-after, Celery's camera clears archiver's State under its lock: the
    snapshots' event counts add up to every event, none lost between shot and clear."""
    result = record(
        "--replay", SMALL, "--archive", tmp_path / "a", "-c", "tests.cameras:SqliteCamera",
        "--clear-after",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    taken = shots(sqlite_db)
    assert len(taken) == 9
    assert sum(row[1] for row in taken) == len(small_events)


def test_plain_class_with_celerys_constructor(tmp_path, small_events):
    """Neither Polaroid: a class taking Celery's camera arguments, with install and cancel."""
    PlainCamera.shots.clear()
    result = record(
        "--replay", SMALL, "--archive", tmp_path / "a", "-c", "tests.cameras:PlainCamera"
    )
    assert result.exit_code == 0, result.output
    assert len(PlainCamera.shots) == 9 and PlainCamera.shots[-1] == len(small_events)


def test_foreign_camera_runs_on_either_state(small_events):
    """ForeignCamera runs the class on archiver's State and on Celery's (it was written for)."""
    from archiver.camera import ForeignCamera
    from archiver.replay_timer import ReplayTimer

    for state in (State(), CeleryState()):
        timer = ReplayTimer()
        cam = ForeignCamera(
            PlainCamera, state, freq=1.0, maxrate=None, cleanup_freq=3600.0, timer=timer, app=None
        )
        assert cam.timer is timer  # kept although an empty ReplayTimer is falsy
        for event in small_events:
            state.event(dict(event))
        cam.install()
        cam.cancel()
        assert cam.snapshots_taken == 0  # PlainCamera has no on_shutter to count


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.cameras:NotACamera", "is not a camera: it has no install() or cancel() method"),
        ("tests.cameras:NoCeleryArguments", "does not take Celery's camera arguments"),
        ("tests.test_celery_camera:RaisingCamera", "cannot create the camera: OSError: database"),
        ("tests.cameras:", "cannot import camera"),
        ("tests.no_such_module:Camera", "cannot import camera"),
    ],
)
def test_bad_camera_is_a_one_line_error(tmp_path, sqlite_db, spec, message):
    """Bad camera is a one line error."""
    result = CliRunner().invoke(
        cli, ["record", "--quiet", "--replay", str(SMALL), "--archive", str(tmp_path), "-c", spec]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_load_camera_class_kinds():
    """Cameras load by module:Class or dotted path, archiver's, Celery's or a user's."""
    from celery.events.snapshot import Polaroid as CeleryPolaroid

    from archiver import Polaroid

    assert load_camera_class("archiver:Polaroid") is Polaroid
    assert load_camera_class("celery.events.snapshot:Polaroid") is CeleryPolaroid
    assert load_camera_class("celery.events.snapshot.Polaroid") is CeleryPolaroid
    assert load_camera_class("tests.cameras:PlainCamera") is PlainCamera


# -- the broker from $CELERY_BROKER_URL ------------------------------------------------------------


def test_broker_from_celery_broker_url(tmp_path, monkeypatch):
    """No source given: $CELERY_BROKER_URL is the broker (here one nobody listens on)."""
    port = free_port()
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    for command in (["record", "--archive", str(tmp_path)], ["tap", "--out", str(tmp_path / "t")]):
        result = CliRunner().invoke(cli, [*command])
        assert result.exit_code == 69, result.output
        assert "cannot connect to the broker" in result.stderr and f":{port}/0" in result.stderr
    # -b is --broker; a given source wins over the variable
    result = CliRunner().invoke(cli, ["record", "-b", "redis://127.0.0.1:1/0", "--duration", "1s"])
    assert result.exit_code == 69 and ":1/0" in result.stderr
    assert record("--replay", SMALL, "--archive", tmp_path / "a", "--limit", 5).exit_code == 0


def test_no_source_and_no_variable(monkeypatch):
    """No source and no variable."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    result = CliRunner().invoke(cli, ["record"])
    assert result.exit_code == 2 and "give exactly one source" in result.stderr


# -- live --------------------------------------------------------------------------------------


@needs_redis
@pytest.mark.redis
@pytest.mark.timeout(240)
def test_live_celery_camera_equals_celerys_state(
    processes,
    redis_server,
    cluster_app,
    tmp_path,
    sqlite_db,
):
    """Against a live cluster: the Celery camera's last snapshot equals Celery's State fed
    the same events (tapped alongside), for every task sent and every worker."""
    start_workers(processes, redis_server, tmp_path)
    recorder, tap, tap_file = record_and_tap(
        processes, redis_server, tmp_path,
        ["-c", "tests.cameras:SqliteCamera", "--freq", "0.5", "--archive", str(tmp_path / "a")],
        duration="20s",
    )  # fmt: skip
    sent = send_mix(cluster_app, 100)
    results = wait_results(sent)
    assert recorder.wait(60) == 0, recorder.stderr
    assert tap.wait(60) == 0, tap.stderr
    assert "Traceback" not in recorder.stderr
    taken = shots(sqlite_db)
    assert len(taken) >= 10 and {row[4] for row in taken} == {"archiver.state.State"}
    assert f"{len(taken)} snapshots" in recorder.stdout
    theirs = celery_state(read_events(tap_file))
    ours = snapshot(sqlite_db)
    mine = {row[0]: row for row in ours["tasks"]}
    celerys = {row[0]: row for row in celery_snapshot(theirs)["tasks"]}
    for task_id in sent:
        # The camera and the tap are two consumers of one live stream: a client's and a
        # worker's events for one task can reach them in another order, and Celery's merge
        # rule then keeps another event's clock, time and worker. The replay tests above
        # compare every field on one stream; here the rest must agree.
        ours_row, theirs_row = mine[task_id], celerys[task_id]
        assert ours_row[:3] + ours_row[4:7] == theirs_row[:3] + theirs_row[4:7], task_id
        assert mine[task_id][1] == results[task_id]
    workers = celery_snapshot(theirs)["workers"]
    assert {"w1", "w2"} <= {name.partition("@")[0] for name in ours["workers"]}
    for name, row in ours["workers"].items():  # counters may differ by a last heartbeat
        assert row[2] == workers[name][2], name  # pid
