"""Shared fixtures: the recorded Celery events, a fake timer, Celery's State as an oracle,
and the live cluster's processes (plain helpers live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.events import state as celery_state_module

from .helpers import SAMPLE, SMALL, FakeTimer, read_events
from .livecluster import REDIS_SERVER, Processes, RedisServer


@pytest.fixture(scope="session")
def sample_events() -> list[dict]:
    """The 9,604 events recorded from a real 2-worker cluster (shared: feed copies, dict(e))."""
    return read_events(SAMPLE)


@pytest.fixture(scope="session")
def small_events() -> list[dict]:
    """The 958-event recording (shared: feed copies, as Celery's State mutates its events)."""
    return read_events(SMALL)


@pytest.fixture
def fake_timer() -> FakeTimer:
    """A Celery-compatible timer that fires only by hand."""
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


@pytest.fixture(scope="module")
def celery_drift_warning_off() -> Iterator[None]:
    """Celery formats its clock-drift warning with ``datetime.fromtimestamp``, which raises
    for times beyond year 9999: a log line, not state semantics. Off for the oracle."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(celery_state_module, "_warn_drift", lambda *args: None)
        yield


@pytest.fixture
def processes() -> Iterator[Processes]:
    """The processes this test starts, each stopped by its process group id at the end."""
    registry = Processes()
    yield registry
    registry.stop_all()


@pytest.fixture
def redis_server(processes: Processes, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free loopback port."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (install it: `make redis`)")
    server = RedisServer(processes, tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster_app(redis_server: RedisServer) -> Iterator[Any]:
    """A client app of tests.cluster_app bound to this test's redis (results in db 1)."""
    from .cluster_app import create_app

    app = create_app(redis_server.url(0), redis_server.url(1))
    yield app
    app.close()
