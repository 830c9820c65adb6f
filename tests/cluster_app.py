"""A small Celery app for the live-cluster tests: tasks that succeed, fail, retry, get revoked.

The broker comes from ``ARCHIVER_TEST_BROKER`` (results go to db 1 of the same Redis,
or ``ARCHIVER_TEST_BACKEND``); workers run ``celery -A tests.cluster_app worker -E``.
Tests create their own client app bound to their redis with :func:`create_app`.
"""

from __future__ import annotations

import os
import time

from celery import Celery

BROKER = os.environ.get("ARCHIVER_TEST_BROKER", "redis://127.0.0.1:6379/0")


def create_app(broker: str = BROKER, backend: str | None = None) -> Celery:
    backend = backend or os.environ.get("ARCHIVER_TEST_BACKEND") or broker.rsplit("/", 1)[0] + "/1"
    app = Celery("cluster_app", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        # Events: workers send task events (as `-E` does) and clients a `task-sent` per
        # task; without task_send_sent_event the archive never sees a PENDING task.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_expires=3600,
        redis_socket_connect_timeout=2,
    )

    @app.task(name="cluster.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="cluster.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="cluster.flaky", bind=True, max_retries=5)
    def flaky(self, times: int) -> str:
        """Retry ``times`` times (a ``task-retried`` event each), then succeed."""
        if self.request.retries < times:
            raise self.retry(countdown=0.1, exc=RuntimeError(f"attempt {self.request.retries}"))
        return f"ok after {times} retries"

    @app.task(name="cluster.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


app = create_app()
