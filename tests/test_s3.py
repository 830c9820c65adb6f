"""Object storage against a real S3 server (SeaweedFS on 127.0.0.1): every command, no
directory markers, storage options, masked credentials, the lock key, interrupted expiry."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import archiver
from archiver import analysis, maintenance
from archiver.cli import cli
from archiver.errors import LockedError
from archiver.maintenance.lock import MaintenanceLock, lock_path
from archiver.storage import redact_uri, resolve

from .helpers import (
    SAMPLE,
    SMALL,
    build_archive,
    copy_archive,
    fingerprints,
    frame,
    reference,
    run_child,
)
from .helpers import record_small_files as record

TABLES = ("tasks", "workers", "snapshots")
#: The query columns compared (not snapshot_id: it holds a random recorder id).
COLS = ("--columns", "captured_at,uuid,name,state,worker,result,exception")


def run(*args: object):
    """`archiver ARGS` in process; returns click's Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def frames(arch: archiver.Archive) -> dict[str, pd.DataFrame]:
    """Every table's rows in a canonical order, without the recorder's random id."""
    out = {}
    for table in TABLES:
        df = frame(arch, table)
        out[table] = df.drop(columns=["snapshot_id"]).reset_index(drop=True)
    return out


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table], obj=table)


def assert_no_markers(server, prefix: str) -> None:
    keys = server.keys(prefix)
    assert keys, "nothing written"
    assert [k for k in keys if k.endswith("/")] == []


def _info_counts(text: str) -> list[list[str]]:
    """`archiver info`'s table without its byte sizes (random ids compress differently)."""
    rows = [re.split(r"\s{2,}", line) for line in text.splitlines()[1:]]
    return [[r[0], r[1], r[2], r[3], *r[6:]] for r in rows if len(r) >= 8]


def chunks(tmp_path: Path, n: int = 3) -> list[Path]:
    """The sample recording cut into ``n`` files (so an hour holds several files per table)."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    size = -(-len(lines) // n)
    paths = []
    for i in range(n):
        path = tmp_path / f"part{i}.jsonl"
        path.write_text("".join(lines[i * size : (i + 1) * size]))
        paths.append(path)
    return paths


def test_every_command_on_s3_equals_local_disk(s3, tmp_path):
    """record, info, query, check, compact and expire on S3 give what they give on disk."""
    server, prefix = s3
    uri, local = server.uri(prefix), tmp_path / "local"
    outputs: dict[str, dict[str, str]] = {}
    loaded = {}
    for name, target in (("local", local), ("s3", uri)):
        out = outputs.setdefault(name, {})
        for part in chunks(tmp_path):
            result = run("record", "--quiet", "--replay", part, "--archive", target)
            assert result.exit_code == 0, result.output
        info = run("info", "--archive", target)
        assert info.exit_code == 0, info.output
        out["info"] = _info_counts(info.output)
        query = run("query", "tasks", "--archive", target, "--format", "csv", "--latest", *COLS)
        assert query.exit_code == 0, query.output
        out["query"] = query.output
        check = run("check", "--archive", target)
        assert check.exit_code == 0, check.output
        out["check"] = check.output
        before = frames(archiver.Archive(target))
        compact = run("compact", "--archive", target)
        assert compact.exit_code == 0, compact.output
        assert "Nothing to compact" not in compact.output
        assert_same(frames(archiver.Archive(target)), before)
        expire = run("expire", "--archive", target, "--state", "SUCCESS=1s", "--yes")
        assert expire.exit_code == 0, expire.output
        loaded[name] = frames(archiver.Archive(target))
        assert len(loaded[name]["tasks"]) < len(before["tasks"])
        expire = run("expire", "--archive", target, "--older-than", "1h", "--table", "workers")
        out["expire"] = expire.output
        expire = run(
            "expire", "--archive", target, "--older-than", "1h", "--table", "workers", "--yes"
        )
        assert expire.exit_code == 0, expire.output
        # (SeaweedFS lists the emptied folders, as a filesystem would; AWS S3 does not.)
        assert archiver.Archive(target).load("workers").empty
    assert outputs["s3"] == outputs["local"]
    assert_same(loaded["s3"], loaded["local"])
    assert_no_markers(server, prefix)


def _two_recordings(path: str, events: list[dict], **options: object) -> None:
    """Record ``events`` in two runs: the AWS_* environment, then ``options``."""
    record(path, events[:5000])  # ParquetCamera through the AWS_* environment
    clock = [events[5000]["timestamp"]]
    state = archiver.State()
    camera = archiver.ParquetCamera(
        state, path, clock=lambda: clock[0], timer=_NoTimer(), **options
    )
    for event in events[5000:]:
        state.event(dict(event))
    clock[0] = events[-1]["timestamp"]
    camera.capture()
    camera.cancel()


def test_python_api_and_other_readers_on_s3(s3, sample_events, tmp_path):
    """ParquetCamera, Archive, archiver.load (pandas, dask) and pandas+s3fs with storage_options."""
    server, prefix = s3
    opts = server.storage_options
    path = f"s3://{server.bucket}/{prefix}"
    _two_recordings(path, sample_events, storage_options=opts)
    _two_recordings(str(tmp_path / "a"), sample_events)
    arch = archiver.Archive(path, storage_options=opts)
    assert arch.location.object_store
    assert_same(frames(arch), frames(archiver.Archive(tmp_path / "a")))
    tasks = arch.load("tasks")
    direct = archiver.load(path, "tasks", storage_options=opts)
    pd.testing.assert_frame_equal(direct, tasks)
    dask_rows = archiver.load(path, "tasks", engine="dask", storage_options=opts).compute()
    assert len(dask_rows) == len(tasks)
    latest = arch.latest("tasks")
    assert latest["uuid"].is_unique and set(latest["uuid"]) == set(tasks["uuid"])
    uuid = latest["uuid"].iloc[0]
    assert len(arch.history(uuid)) == (tasks["uuid"] == uuid).sum()
    # Other readers: pandas through s3fs reads the folder (no marker object to trip on).
    raw = pd.read_parquet(f"{path}/tasks", storage_options=opts)
    assert len(raw) == len(tasks)
    assert_no_markers(server, prefix)


class _NoTimer:
    """A timer that never fires (the test captures by hand)."""

    def call_repeatedly(self, secs, fun, *args, **kwargs):
        return self

    def cancel(self) -> None:
        return None


def test_credentials_are_masked_everywhere(s3, tmp_path, monkeypatch, caplog):
    """A URI with credentials works, and no output, error or log line shows the secret."""
    server, prefix = s3
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # only the URI carries them
    uri = f"s3://{server.key}:{server.secret}@{server.bucket}/{prefix}" + (
        f"?endpoint_override={server.host_port}&scheme=http"
    )
    texts = []
    for args in (
        ("record", "--replay", SMALL, "--archive", uri),
        ("info", "--archive", uri),
        ("compact", "--archive", uri),
        ("expire", "--archive", uri, "--older-than", "1h"),
        ("check", "--archive", uri),
        ("report", "--archive", uri, "-o", tmp_path / "r.html"),
        ("query", "nosuchtable", "--archive", uri),
    ):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        texts.append(result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
    assert "Recorded " in texts[0] and "***@" in texts[0]
    assert texts[-1].startswith("Error: ") and "nosuchtable" in texts[-1]
    html = (tmp_path / "r.html").read_text()
    arch = archiver.Archive(uri)
    assert len(arch.load("tasks")) > 0
    for text in [*texts, html, caplog.text, repr(arch), arch.uri, str(arch.check())]:
        assert server.secret not in text and server.key not in text


@pytest.mark.parametrize(
    "uri, shown",
    [
        (
            "s3://K:S@b/x?endpoint_override=h:1&scheme=http",
            "s3://***@b/x?endpoint_override=h:1&scheme=http",
        ),
        (
            "s3://b/x?access_key=K&secret_key=S&session_token=T",
            "s3://b/x?access_key=***&secret_key=***&session_token=***",
        ),
        ("/data/archive", "/data/archive"),
        ("Error: cannot open gs://u:p@b/x now", "Error: cannot open gs://***@b/x now"),
    ],
)
def test_redact_uri(uri, shown):
    """redact_uri masks user info and secret query parameters, nothing else."""
    assert redact_uri(uri) == shown


def test_two_spellings_of_one_archive_share_the_lock(s3):
    """The local lock key is canonical: credentials, query and slashes do not change it."""
    server, prefix = s3
    a = resolve(server.uri(prefix))
    b = resolve(
        f"s3://{server.key}:{server.secret}@{server.bucket}//{prefix}/"
        f"?scheme=http&endpoint_override={server.host_port}"
    )
    c = resolve(f"s3://{server.bucket}/{prefix}", storage_options=server.storage_options)
    assert lock_path(a) == lock_path(b) == lock_path(c)
    assert lock_path(a) != lock_path(resolve(server.uri(prefix + "x")))
    with MaintenanceLock(a, purpose="test"), pytest.raises(LockedError) as err:
        MaintenanceLock(b).acquire()
    assert server.secret not in str(err.value)


def test_s3_server_honours_conditional_writes(s3):
    """SeaweedFS refuses a second create-if-absent (If-None-Match: *) of one key."""
    server, prefix = s3
    fs = server.s3fs()
    key = f"{prefix}/_lock"
    fs.call_s3("put_object", Bucket=server.bucket, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(OSError, match="pre-conditions"):
        fs.call_s3("put_object", Bucket=server.bucket, Key=key, Body=b"2", IfNoneMatch="*")
    assert fs.cat(f"{server.bucket}/{key}") == b"1"


# -- expiry interrupted at each delete -----------------------------------------------------
@pytest.fixture(scope="module")
def two_hours(tmp_path_factory, sample_events) -> Path:
    """Two closed hours of the sample, 15 small files per table and hour."""
    return build_archive(tmp_path_factory.mktemp("s3exp") / "a", sample_events, hours=2)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_expiry_killed_at_each_delete_shows_no_half_hour(s3, two_hours, tmp_path, where):
    """SIGKILL an expiry at chosen deletes: readers see the hour whole or not at all."""
    server, prefix = s3
    # A credentialed URI: the forked child needs no environment.
    s3_uri = (
        f"s3://{server.key}:{server.secret}@{server.bucket}/{{}}"
        f"?endpoint_override={server.host_port}&scheme=http"
    )
    first = archiver.Archive(two_hours).partitions("tasks")[0]
    now = pd.Timestamp(first.end_us * 1000, tz="UTC") + pd.Timedelta("61m")
    kwargs = {"older_than": "1h", "now": now.isoformat(), "dry_run": False, "lock_timeout": 30}

    def target(n: int) -> str:
        return s3_uri.format(f"{prefix}-{n}") if where == "s3" else str(tmp_path / f"a{n}")

    original = fingerprints(two_hours)
    clean = copy_archive(two_hours, target(0), server)
    steps: list[str] = []
    from archiver.maintenance import recovery

    recovery._STEP_HOOK = steps.append
    try:
        maintenance.expire(clean, **kwargs)
    finally:
        recovery._STEP_HOOK = None
    final = fingerprints(clean)
    assert all(len(final[t]) < len(original[t]) for t in TABLES)
    total = len(steps)
    chosen = sorted({1, 2, total // 3, total // 2, total - 1, total})
    for n, step in enumerate(chosen, start=1):
        path = copy_archive(two_hours, target(n), server)
        code, _ = run_child(path, "expire", kwargs, kill_at=step)
        assert code == -signal.SIGKILL, (step, code)
        got = fingerprints(path)
        for table in TABLES:
            seen = [got[table].tolist() == x[table].tolist() for x in (original, final)]
            assert any(seen), f"{where}: {table} half expired after step {step}/{total}"
        maintenance.expire(path, **kwargs)  # the next run finishes it
        after = fingerprints(path)
        assert all(after[t].tolist() == final[t].tolist() for t in TABLES)
        if where == "s3":
            assert_no_markers(server, f"{prefix}-{n}")
            assert not [k for k in server.keys(f"{prefix}-{n}") if "_expiring" in k]


def test_live_record_into_s3(s3, tmp_path):
    """A live recorder (redis + a Celery worker) writes to s3:// what it writes to disk."""
    pytest.importorskip("celery")
    from .livecluster import (
        Processes,
        RedisServer,
        send_mix,
        start_archiver,
        start_workers,
        wait_results,
    )

    server, prefix = s3
    uri = server.uri(prefix)
    processes = Processes()
    try:
        redis = RedisServer(processes, tmp_path).start()
        from tests.cluster_app import create_app

        app = create_app(redis.url(0), redis.url(1))
        start_workers(processes, redis, tmp_path, names=("w1",))
        url = redis.url(0)
        disk = tmp_path / "disk"
        recorders = [
            start_archiver(
                processes,
                redis,
                tmp_path,
                name,
                "record",
                "--broker",
                url,
                "--archive",
                target,
                "--freq",
                "0.5",
                "--duration",
                "15s",
            )
            for name, target in (("s3", uri), ("disk", str(disk)))
        ]
        sent = send_mix(app, 60)
        results = wait_results(sent)
        for recorder in recorders:
            assert recorder.wait(60) == 0, recorder.stderr
        app.close()
    finally:
        processes.stop_all()
    on_s3 = archiver.Archive(uri).latest("tasks").set_index("uuid")["state"].sort_index()
    on_disk = archiver.Archive(disk).latest("tasks").set_index("uuid")["state"].sort_index()
    assert set(results) <= set(on_s3.index)
    pd.testing.assert_series_equal(on_s3.astype(str), on_disk.astype(str))
    assert_no_markers(server, prefix)


def test_object_store_lock_excludes_another_host(s3, tmp_path, monkeypatch, caplog):
    """Two hosts (no shared local lock) exclude each other through the lock object on S3."""
    server, prefix = s3
    here = resolve(server.uri(prefix))
    with MaintenanceLock(here, purpose="compact") as first:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # "another host"
        other = MaintenanceLock(resolve(server.uri(prefix)), purpose="expire")
        assert other.path != first.path
        with pytest.raises(LockedError, match="lock object") as err:
            other.acquire()
        assert f"pid {os.getpid()}" in str(err.value)
    other.acquire()  # released: free again
    other.release()
    # A dead process of this host: taken over at once (this host's local lock is free).
    dead = {"pid": 2**22 + 7, "host": socket.gethostname(), "expires": time.time() + 3600}
    server.s3fs().pipe(f"{server.bucket}/{prefix}/_archiver.lock", json.dumps(dead).encode())
    with MaintenanceLock(here, purpose="compact"):
        assert f"pid {2**22 + 7} on host" in caplog.text
    # A dead host's lock: its lease has ended, so it is taken over (and logged).
    stale = {"pid": 1, "host": "gone", "expires": time.time() - 1}
    server.s3fs().pipe(f"{server.bucket}/{prefix}/_archiver.lock", json.dumps(stale).encode())
    with MaintenanceLock(here, purpose="compact"):
        assert "expired object-store lock of pid 1 on host gone" in caplog.text
    assert not server.s3fs().exists(f"{server.bucket}/{prefix}/_archiver.lock")


# -- two recorders into one archive (a high-availability pair) ------------------------------
def _no_id(df: pd.DataFrame) -> pd.DataFrame:
    """Rows without the recorder's id, as plain objects, in a canonical order."""
    df = df.drop(columns=[c for c in ("snapshot_id", "date", "hour") if c in df.columns])
    df = df.astype({c: object for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})
    return df.sort_values(["captured_at", "uuid"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_recorders_of_one_recording(s3, sample_events, tmp_path, where):
    """Two recorders of one recording: each row once per recorder; latest as one recorder."""
    server, prefix = s3
    pair = str(tmp_path / "pair") if where == "local" else f"s3://{server.bucket}/{prefix}"
    single = tmp_path / "single"
    record(single, sample_events)
    record(pair, sample_events)
    record(pair, sample_events)
    one, two = archiver.Archive(single), archiver.Archive(pair)
    loaded = two.load("tasks")
    assert loaded["snapshot_id"].str.split("-").str[0].nunique() == 2  # the recorders' ids
    alone = _no_id(one.load("tasks"))
    doubled = _no_id(pd.concat([alone, alone]))
    pd.testing.assert_frame_equal(_no_id(loaded), doubled)
    pd.testing.assert_frame_equal(_no_id(two.latest("tasks")), _no_id(one.latest("tasks")))
    uuid = one.latest("tasks")["uuid"].iloc[-1]
    history = _no_id(two.history(uuid))
    pd.testing.assert_frame_equal(history, _no_id(pd.concat([one.history(uuid)] * 2)))
    for fn in (analysis.failure_rates, analysis.latency):
        pd.testing.assert_frame_equal(fn(loaded), fn(one.load("tasks")))
        pd.testing.assert_frame_equal(fn(two.latest("tasks")), fn(one.latest("tasks")))


def test_two_recorders_of_overlapping_halves(tmp_path, sample_events):
    """Recorders of overlapping halves: latest has each task once, in Celery's final state."""
    n = len(sample_events)
    path = tmp_path / "pair"
    record(path, sample_events[: 2 * n // 3])
    record(path, sample_events[n // 3 :])
    latest = archiver.Archive(path).latest("tasks")
    assert latest["uuid"].is_unique
    want = reference(sample_events)
    assert set(latest["uuid"]) == set(want)
    got = dict(zip(latest["uuid"], latest["state"].astype(str)))
    assert got == {u: row[0] for u, row in want.items()}
