"""Real components for the live tests: a redis-server and Celery workers, started and stopped
by process id.

Every process is started in its own session (so its process group id is its pid) and
registered with a :class:`Processes` registry whose ``stop_all()`` (a fixture finalizer)
terminates each group, then kills what is left. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not on PATH (install it: `make redis` or apt-get install redis-server)",
)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Processes:
    """The processes a test started; ``stop_all`` ends each one's process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("cwd", ROOT)
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    @staticmethod
    def signal_group(proc: subprocess.Popen, sig: int) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # the group id is the pid (start_new_session)

    def stop(self, proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 10.0):
        """Signal ``proc``'s process group, wait, then SIGKILL the group if needed."""
        self.signal_group(proc, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(proc, signal.SIGKILL)
            proc.wait(10)
        # Children (prefork pool processes) may outlive their parent: kill the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=5.0)
        self.procs.clear()


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, processes: Processes, workdir: Path, port: int | None = None) -> None:
        self.processes = processes
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.starts += 1
        log = open(self.workdir / f"redis-{self.port}-{self.starts}.log", "wb")  # noqa: SIM115
        args = [REDIS_SERVER or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = self.processes.start(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ping() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}")
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        wait_for(ping, 10, f"redis-server on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc, sig=sig)
            self.proc = None

    def pattern_subscribers(self) -> set[int]:
        """Ids of the clients holding a pattern subscription (kombu's fanout for events)."""
        return {c["id"] for c in self.client().client_list() if int(c.get("psub", 0)) > 0}


class Worker:
    """A ``celery -A tests.cluster_app worker -E`` process."""

    def __init__(
        self, processes: Processes, broker: str, name: str, logdir: Path, concurrency: int = 2
    ) -> None:
        self.processes, self.broker, self.name = processes, broker, name
        self.logfile = logdir / f"worker-{name}.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def start(self) -> Worker:
        env = dict(os.environ, ARCHIVER_TEST_BROKER=self.broker, PYTHONPATH=str(ROOT))
        args = [sys.executable, "-m", "celery", "-A", "tests.cluster_app", "worker", "-E"]
        args += ["-c", str(self.concurrency), "-P", "prefork", "--without-mingle"]
        args += ["--without-gossip", "--heartbeat-interval", "2", "-n", f"{self.name}@%h"]
        args += ["-l", "INFO", "-f", str(self.logfile)]
        self.proc = self.processes.start(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready", interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc, sig=signal.SIGTERM, timeout=15)
            self.proc = None


class ArchiverProcess:
    """``python -m archiver ...`` with stderr in a file, to wait for log lines."""

    def __init__(self, processes: Processes, args: list[str], logdir: Path, name: str) -> None:
        self.stderr_path = logdir / f"{name}.stderr"
        self.stdout_path = logdir / f"{name}.stdout"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = processes.start(
                [sys.executable, "-m", "archiver", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.processes = processes

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if text in self.stderr:
                return True
            if self.proc.poll() is not None:
                pytest.fail(f"archiver exited ({self.proc.returncode}):\n{self.stderr}")
            return False

        wait_for(seen, timeout, f"{text!r} from archiver", interval=0.1)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"archiver still running after {timeout} s:\n{self.stderr}")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)


def start_workers(
    processes: Processes, redis_server: RedisServer, tmp_path: Path, names=("w1", "w2")
) -> list[Worker]:
    """Start a Celery worker per name on ``redis_server`` and wait until each is ready."""
    workers = [Worker(processes, redis_server.url(0), n, tmp_path).start() for n in names]
    for w in workers:
        w.wait_ready()
    return workers


def start_archiver(
    processes: Processes, redis_server: RedisServer, tmp_path: Path, name: str, *args: str
) -> ArchiverProcess:
    """An archiver subprocess; returns once its event receiver has subscribed."""
    before = redis_server.pattern_subscribers()
    proc = ArchiverProcess(processes, list(args), tmp_path, name)

    def subscribed() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"archiver {name} exited ({proc.proc.returncode}):\n{proc.stderr}")
        return bool(redis_server.pattern_subscribers() - before)

    wait_for(subscribed, 30, f"archiver {name} to subscribe to the events")
    time.sleep(0.3)  # the wakeup broadcast, workers' first heartbeats
    return proc


def send_mix(app, n: int = 300, prefix: str = "") -> dict[str, tuple[str, object]]:
    """Send ``n`` tasks: ~60% succeed, 15% fail, 15% retry then succeed, 10% revoked.

    Returns ``{task_id: (expected_state, AsyncResult)}``.
    """
    sent: dict[str, tuple[str, object]] = {}
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    revoke_now = []
    for i in range(n):
        kind = i % 20
        if kind < 12:
            r = app.send_task("cluster.add", (i, 1))
            sent[r.id] = ("SUCCESS", r)
        elif kind < 15:
            r = app.send_task("cluster.fail", (f"{prefix}boom {i}",))
            sent[r.id] = ("FAILURE", r)
        elif kind < 18:
            r = app.send_task("cluster.flaky", (1 + i % 2,))
            sent[r.id] = ("SUCCESS", r)
        elif kind == 18:  # expired before a worker gets it: revoked on receipt
            r = app.send_task("cluster.add", (i, 2), expires=past)
            sent[r.id] = ("REVOKED", r)
        else:  # revoked by id before it is sent
            task_id = f"{prefix}revoked-{uuid.uuid4()}"
            revoke_now.append(task_id)
            sent[task_id] = ("REVOKED", None)
    if revoke_now:
        app.control.revoke(revoke_now)
        time.sleep(0.5)  # the broadcast reaches the workers before the tasks do
        for task_id in revoke_now:
            r = app.send_task("cluster.add", (0, 0), task_id=task_id)
            sent[task_id] = ("REVOKED", r)
    return sent


def wait_results(sent, timeout: float = 90) -> dict[str, str]:
    """Wait until every result is ready; returns ``{task_id: state}``."""
    states: dict[str, str] = {}

    def all_ready() -> bool:
        for task_id, (_, result) in sent.items():
            if task_id not in states:
                state = result.state
                if state in ("SUCCESS", "FAILURE", "REVOKED"):
                    states[task_id] = state
        return len(states) == len(sent)

    wait_for(all_ready, timeout, f"{len(sent)} task results", interval=0.25)
    return states


def record_and_tap(
    processes: Processes,
    redis_server: RedisServer,
    tmp_path: Path,
    record_args: list[str],
    duration: str | None = None,
) -> tuple[ArchiverProcess, ArchiverProcess, Path]:
    """``archiver record`` and ``archiver tap`` on this test's broker, both subscribed.

    Returns the recorder, the tap and the file the tap writes every event it sees to
    (the oracle's input); ``duration`` (e.g. "20s") bounds both runs.
    """
    url = redis_server.url(0)
    tap_file = tmp_path / "tap.jsonl"
    limit = [] if duration is None else ["--duration", duration]
    recorder = start_archiver(
        processes, redis_server, tmp_path, "record", "record", "--broker", url, *record_args, *limit
    )
    tap = start_archiver(
        processes, redis_server, tmp_path, "tap", "tap", "--broker", url, "--out", str(tap_file),
        *limit,
    )  # fmt: skip
    return recorder, tap, tap_file
