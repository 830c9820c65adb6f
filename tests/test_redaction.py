"""Redaction: a secret passed to a task never reaches a file or a log line; hashes are keyed."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from celery.events.state import State as CeleryState
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import Archive
from archiver.cli import cli
from archiver.convert import REDACTABLE, CeleryConverter, redact_hash, redaction_gaps
from archiver.record import Recorder
from archiver.state import describe_event

from .helpers import SMALL, read_events

SECRET = "hunter2-Zq8xVw-credit-card-4111111111111111"
ALL = ",".join(REDACTABLE)
KEY = b"the archive's redaction key"


def with_secret(events: list[dict]) -> list[dict]:
    """The recorded events with SECRET in every args, kwargs, result, exception, traceback.

    Values vary (``i % 7``) so that equal and unequal values both occur.
    """
    out = []
    for i, event in enumerate(events):
        event = dict(event)
        n = i % 7
        if "args" in event:
            event["args"] = f"('{SECRET}', {n})"
        if "kwargs" in event:
            event["kwargs"] = f"{{'password': '{SECRET}', 'n': {n}}}"
        if event["type"] == "task-succeeded":
            event["result"] = f"'{SECRET}-{n}'"
        if event["type"] in ("task-failed", "task-retried"):
            # What Celery sends: the exception repr and a traceback quoting the arguments.
            event["exception"] = f"ValueError('bad card {SECRET}')"
            event["traceback"] = (
                "Traceback (most recent call last):\n"
                f"  File \"tasks.py\", line 9, in charge\n    charge('{SECRET}')\n"
                f"ValueError: bad card {SECRET}\n"
            )
        out.append(event)
    return out


def malformed(template: dict) -> list[dict | list]:
    """Events the state rejects, each carrying SECRET in a field that is not logged (and
    one it accepts as Celery does, with SECRET as its clock, which is stored as null)."""
    return [
        {**template, "uuid": "bad-ts", "timestamp": "yesterday", "args": SECRET},
        {"args": SECRET, "kwargs": SECRET, "timestamp": template["timestamp"]},  # no type
        {**template, "uuid": "bad-clock", "clock": SECRET, "exception": SECRET},
        {"type": "worker-heartbeat", "hostname": "w1@vm", "timestamp": "x", "sw_ident": SECRET},
        [SECRET],
    ]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    """A replay file: the small recording with SECRET injected, malformed events and lines."""
    events = with_secret(read_events(SMALL))
    received = next(e for e in events if e["type"] == "task-received")
    lines = [json.dumps(e) for e in events]
    for i, bad in enumerate(malformed(received)):
        lines.insert(100 + 50 * i, json.dumps(bad))
    lines.insert(400, '{"type": "task-received", "args": "' + SECRET)  # truncated JSON
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def occurrences(root: Path, needle: str) -> list[str]:
    """Where ``needle`` occurs under ``root``: raw bytes of every file, and every decoded
    Parquet value and metadata (the files are zstd-compressed, so raw bytes alone prove
    nothing)."""
    found = []
    raw = needle.encode()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if raw in path.read_bytes():
            found.append(f"{path} (raw bytes)")
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            if needle in repr(parquet.metadata.metadata) or needle in repr(parquet.schema_arrow):
                found.append(f"{path} (metadata)")
            for column, values in parquet.read().to_pydict().items():
                if any(needle in repr(v) for v in values):
                    found.append(f"{path}:{column}")
    return found


def assert_ran(result) -> None:
    """Exit 74 for one reason only: the event whose ``clock`` is the secret is accepted (as
    Celery's State accepts it), and its clock, not an integer, is stored as null."""
    assert result.exit_code == 74, result.output
    assert "Error: 1 values did not fit their column (stored as null)" in result.stderr


def record(*args, env=None):
    return CliRunner().invoke(cli, ["record", "--quiet", *map(str, args)], env=env)


@pytest.mark.parametrize("mode", ["null", "hash"])
def test_secret_never_reaches_a_file_or_a_log(tmp_path, events_file, caplog, mode):
    """All five columns redacted: no byte of any file, decoded or not, and no log line shows it."""
    archive, logfile, key = tmp_path / "archive", tmp_path / "record.log", tmp_path / "key"
    key.write_bytes(KEY)
    hashing = ["--redact-mode", "hash", "--redact-key-file", key] if mode == "hash" else []
    caplog.set_level(logging.DEBUG)
    common = ["--replay", events_file, "--redact", ALL, *hashing, "-l", "DEBUG"]
    result = record(*common, "--archive", archive)
    assert_ran(result)
    logged = record(*common, "--archive", tmp_path / "second", "--logfile", logfile)
    assert_ran(logged)

    # The run did see, and report, the malformed input that carried the secret.
    assert "Skipping malformed event" in result.stderr
    assert "Skipping malformed line" in result.stderr
    assert "type='task-received' uuid='bad-ts' hostname=" in result.stderr
    assert "Warning" not in result.stderr  # exception and traceback are redacted
    tasks = Archive(archive).load("tasks")
    assert len(tasks) and tasks["args"].notna().any() == (mode == "hash")

    assert occurrences(archive, SECRET) == []
    assert occurrences(tmp_path / "second", SECRET) == []
    assert SECRET not in logfile.read_text() and "Skipping malformed event" in logfile.read_text()
    assert SECRET not in result.stderr and SECRET not in result.stdout
    assert SECRET not in caplog.text and "Skipping malformed event" in caplog.text
    assert not any(SECRET in repr(r.args) or SECRET in r.getMessage() for r in caplog.records)
    if mode == "hash":  # the key is not stored either
        assert occurrences(archive, KEY.decode()) == [] and KEY.decode() not in result.output


def test_redacting_args_alone_leaves_them_in_exception_and_traceback(tmp_path, events_file):
    """The documented gap: Celery copies arguments into exception/traceback; the CLI warns."""
    archive = tmp_path / "archive"
    result = record("--replay", events_file, "--archive", archive, "--redact", "args,kwargs")
    assert_ran(result)
    assert result.stderr.splitlines()[0] == (
        "Warning: argument values are still stored in exception and traceback "
        "(Celery copies them there): add exception,traceback to --redact to hide them"
    )
    leaks = occurrences(archive, SECRET)
    assert {leak.rsplit(":", 1)[1] for leak in leaks if ".parquet:" in leak} == {
        "result",
        "exception",
        "traceback",
    }
    # ... and the warning names only what is missing.
    assert redaction_gaps(["args", "traceback"]) == ("exception",)
    assert redaction_gaps(["result"]) == ()
    assert redaction_gaps(["kwargs", "exception", "traceback"]) == ()


def test_an_event_the_state_cannot_apply_is_logged_without_its_values(tmp_path, caplog):
    """Recorder._event_error names the error and the event's identifying keys only."""
    events = with_secret(read_events(SMALL))
    recorder = Recorder(str(tmp_path / "archive"), redact=REDACTABLE)

    def broken(state, event):  # State's own hook; an error quoting a value, as real bugs do
        if event.get("type") == "task-failed":
            raise ValueError(f"cannot apply {event['exception']}")

    recorder.state.event_callback = broken
    caplog.set_level(logging.DEBUG)
    summary = recorder.replay(events)
    failed = [e for e in events if e["type"] == "task-failed"]
    assert recorder.event_errors == len(failed) and summary.events == len(events)
    lines = [r.getMessage() for r in caplog.records if "could not apply" in r.getMessage()]
    first = failed[0]
    assert lines[0] == (
        "Skipping an event the state could not apply (ValueError at test_redaction.py:"
        f"{broken.__code__.co_firstlineno + 2}): type='task-failed' uuid='{first['uuid']}' "
        f"hostname='{first['hostname']}' clock={first['clock']}"
    )
    assert len(lines) == 5  # the first five, as before
    assert SECRET not in caplog.text
    assert occurrences(tmp_path / "archive", SECRET) == []


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"type": "task-sent", "uuid": "u", "args": SECRET}, "type='task-sent' uuid='u'"),
        ({"args": SECRET}, "an event without type, uuid, hostname or clock"),
        ([SECRET], "a list, not an event"),
        ({"type": "x" * 100, "clock": 10**400}, f"type='{'x' * 64}'... clock=<huge int>"),
        ({"uuid": {"nested": SECRET}, "hostname": 3.5}, "uuid=<dict> hostname=<float>"),
        ({"type": "task-sent", "clock": SECRET}, "type='task-sent' clock=<str>"),
    ],
)
def test_describe_event_shows_identifying_keys_only(event, text):
    """Describe event shows identifying keys only."""
    assert describe_event(event) == text


# -- the keyed hash ------------------------------------------------------------------------
def hmac_hex(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


@settings(max_examples=200, deadline=None)
@given(
    a=st.text(max_size=50),
    b=st.text(max_size=50),
    k1=st.binary(min_size=1, max_size=80),
    k2=st.binary(min_size=1, max_size=80),
)
def test_hash_is_hmac_sha256_equal_for_equal_values_and_keys(a, b, k1, k2):
    """Hash is hmac sha256 equal for equal values and keys."""
    assert redact_hash(a, k1) == hmac_hex(k1, a)
    assert (redact_hash(a, k1) == redact_hash(b, k1)) == (a == b)
    assert (redact_hash(a, k1) == redact_hash(a, k2)) == (k1 == k2)
    assert redact_hash(a, k1) != hashlib.sha256(a.encode()).hexdigest()[:32]  # keyed


def test_hash_mode_on_a_replay_matches_celery_state(tmp_path, events_file, monkeypatch):
    """Every archived hash is HMAC(key, Celery's value); the key file and the env agree;
    another key gives other hashes."""
    monkeypatch.delenv("ARCHIVER_REDACT_KEY", raising=False)
    keyfile, other = tmp_path / "key", tmp_path / "other"
    keyfile.write_bytes(KEY + b"\n")  # a final newline is not part of the key
    other.write_bytes(b"another key")
    runs = {
        "file": ["--redact-key-file", keyfile],
        "env": [],
        "other": ["--redact-key-file", other],
    }
    loaded = {}
    for name, args in runs.items():
        archive = tmp_path / f"archive-{name}"
        result = record(
            "--replay", events_file, "--archive", archive, "--redact", ALL,
            "--redact-mode", "hash", *args,
            env={"ARCHIVER_REDACT_KEY": KEY.decode()},
        )  # fmt: skip
        assert_ran(result)
        tasks = Archive(archive).load("tasks").sort_values(["uuid", "snapshot_id"])
        loaded[name] = tasks.drop_duplicates("uuid", keep="last").set_index("uuid")

    reference = CeleryState()  # fed the stream without what our State rejects
    for event in with_secret(read_events(SMALL)):
        reference.event(event)
    last = loaded["file"]
    checked = 0
    for uuid, task in reference.tasks.items():
        for column in ("args", "kwargs", "result", "exception", "traceback"):
            value = getattr(task, column)
            got = last.loc[uuid, column]
            got = None if pd.isna(got) else got
            assert got == (None if value is None else hmac_hex(KEY, str(value))), (uuid, column)
            checked += value is not None
    assert checked > 500
    # equal values, equal hashes: as many distinct hashes as distinct values
    args = [t.args for t in reference.tasks.values() if t.args is not None]
    assert last["args"].dropna().nunique() == len(set(args)) == 7
    columns = list(REDACTABLE)
    assert last[columns].equals(loaded["env"][columns])
    for column in REDACTABLE:
        ours, theirs = last[column].dropna(), loaded["other"][column].dropna()
        assert list(ours.index) == list(theirs.index)
        assert not (ours.to_numpy() == theirs.to_numpy()).any(), column


@pytest.mark.parametrize(
    ("args", "env", "message", "code"),
    [
        (
            ["--redact-mode", "hash"],
            {},
            "Error: --redact-mode hash needs a secret key: give --redact-key-file PATH "
            "or set ARCHIVER_REDACT_KEY",
            1,
        ),
        (
            ["--redact-mode", "hash"],
            {"ARCHIVER_REDACT_KEY": ""},
            "Error: ARCHIVER_REDACT_KEY is empty: give a secret key",
            1,
        ),
        (
            ["--redact-mode", "hash", "--redact-key-file", "{empty}"],
            {},
            "Error: --redact-key-file {empty} is empty: put a secret key in it",
            1,
        ),
        (
            ["--redact-mode", "hash", "--redact-key-file", "{missing}"],
            {},
            "Error: cannot read --redact-key-file {missing}: No such file or directory",
            1,
        ),
        (
            ["--redact-key-file", "{empty}"],
            {},
            "Error: --redact-key-file is only used with --redact-mode hash",
            2,
        ),
    ],
)
def test_key_errors_are_one_line(tmp_path, monkeypatch, args, env, message, code):
    """Key errors are one line."""
    monkeypatch.delenv("ARCHIVER_REDACT_KEY", raising=False)
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing"}
    paths["empty"].write_bytes(b"\n")
    args = [a.format(**paths) for a in args]
    archive = tmp_path / "archive"
    result = record("--replay", SMALL, "--archive", archive, "--redact", "args", *args, env=env)
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines()[-1] == message.format(**paths)
    if code == 1:
        assert result.stderr == message.format(**paths) + "\n"
    assert not archive.exists()


def test_python_api_needs_a_key_for_hash_mode():
    """Python api needs a key for hash mode."""
    with pytest.raises(ValueError, match=r"^redact_mode 'hash' needs a secret key"):
        CeleryConverter(redact=("args",), redact_mode="hash")
    conv = CeleryConverter(redact=("args",), redact_mode="hash", redact_key="k")
    assert "k'" not in repr(conv) and "redact_key" not in repr(conv)
