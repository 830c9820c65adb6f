"""Shared fixtures: the recorded Celery events, a fake timer, a replay driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = DATA / "celery-events-sample.jsonl"
SMALL = DATA / "celery-events-small.jsonl"


def read_events(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class FakeEntry:
    """A timer entry that records whether it was cancelled and can be fired by hand."""

    def __init__(self, secs: float, fun, args, kwargs) -> None:
        self.secs, self.fun, self.args, self.kwargs = secs, fun, args, kwargs
        self.cancelled = False
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.fun(*self.args, **self.kwargs)

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimer:
    """Celery-compatible timer that never runs anything by itself."""

    def __init__(self) -> None:
        self.entries: list[FakeEntry] = []

    def call_repeatedly(self, secs, fun, *args, **kwargs):
        entry = FakeEntry(secs, fun, args, kwargs)
        self.entries.append(entry)
        return entry


def drive(state, camera, events, *, freq: float = 1.0, clock: list[float] | None = None) -> int:
    """Feed ``events`` to ``state``, capturing every ``freq`` seconds of event time.

    ``clock`` is a one-element list the camera's clock reads (``lambda: clock[0]``);
    returns the number of captures taken.
    """
    captures = 0
    now = clock if clock is not None else [events[0]["timestamp"]]
    next_shot = now[0] + freq
    for event in events:
        while event["timestamp"] >= next_shot:
            now[0] = next_shot
            camera.capture()
            captures += 1
            next_shot += freq
        state.event(dict(event))
    now[0] = next_shot
    return captures


@pytest.fixture(scope="session")
def sample_events() -> list[dict]:
    """The 9,604 events recorded from a real 2-worker cluster (copies: mutate freely)."""
    return read_events(SAMPLE)


@pytest.fixture(scope="session")
def small_events() -> list[dict]:
    """The 958-event recording."""
    return read_events(SMALL)


@pytest.fixture
def fake_timer() -> FakeTimer:
    return FakeTimer()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the session; fails if it cannot start."""
    from tests.s3server import session_server

    yield from session_server(tmp_path_factory.mktemp("s3server"))


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server with a fresh prefix, and the ``AWS_*`` environment pointing at it."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server, s3_server.new_prefix()
