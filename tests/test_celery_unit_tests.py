"""Celery's own unit tests of its State (``t/unit/events/test_state.py``), run against archiver's.

The file is taken at test time from the source distribution of the installed Celery on
PyPI (``pip download --no-deps --no-binary :all: celery==X``), cached under the pytest
cache (``.pytest_cache/d/celery-sdist``) and never copied into this repository. Only its
import of ``celery.events.state`` is rewritten to ``archiver.state``; every test then runs
as it is. Skipped, with the reason, when the registry cannot be reached.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

celery = pytest.importorskip("celery")

MEMBER = "t/unit/events/test_state.py"
#: Celery's tests left out, and why: only those that patch or read Celery's private module.
EXCLUDED = {
    "test_Worker::test_drift_warning": (
        "patches celery.events.state.warn, a private global of Celery's module; archiver's "
        "drift warning is tested in tests/test_state.py (test_drift_warning_once_per_host)"
    ),
}
#: Signs in pip's output that PyPI could not be reached (the only reason to skip).
UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|ConnectTimeout|ProxyError|"
    r"Connection refused|No route to host|timed out",
    re.IGNORECASE,
)


def cache_dir(config: pytest.Config) -> Path:
    """The pytest cache's directory for the sdist (the same with ``-p no:cacheprovider``)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("celery-sdist"))
    path = config.rootpath / ".pytest_cache" / "d" / "celery-sdist"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_sdist(directory: Path, version: str) -> Path:
    """The cached sdist of ``celery==version``, downloaded with pip if missing."""
    name = f"celery-{version}.tar.gz"
    if not (directory / name).exists():
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *("--disable-pip-version-check", f"celery=={version}", "-d", str(directory)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            if UNREACHABLE.search(output):
                pytest.skip(f"PyPI cannot be reached to download celery=={version}'s sdist")
            pytest.fail(f"pip download celery=={version} failed:\n{output[-2000:]}")
    if not (directory / name).exists():
        pytest.fail(f"pip download did not leave {name} in {directory}")
    return directory / name


def rewrite(source: str) -> str:
    """Celery's test module with its one import of ``celery.events.state`` made archiver's."""
    new, count = re.subn(
        r"^from celery\.events\.state import", "from archiver.state import", source, flags=re.M
    )
    assert count == 1, f"expected one import of celery.events.state, found {count}"
    return new


def celery_tests(config: pytest.Config) -> ModuleType:
    """Celery's test_state.py, rewritten, imported (cached in the pytest cache)."""
    version = celery.__version__
    directory = cache_dir(config)
    target = directory / f"celery_{version.replace('.', '_')}_test_state.py"
    if not target.exists():
        sdist = fetch_sdist(directory, version)
        with tarfile.open(sdist) as tar:
            member = tar.extractfile(f"celery-{version}/{MEMBER}")
            assert member is not None, f"{MEMBER} is not in {sdist.name}"
            source = member.read().decode("utf-8")
        target.write_text(rewrite(source), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"celery_unit_test_state_{id(config)}", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collect(module: ModuleType) -> list[tuple[str, type, str]]:
    """``(id, class, method)`` of every test in Celery's module."""
    found = []
    for cls_name, cls in vars(module).items():
        if cls_name.startswith("test") and isinstance(cls, type):
            for name in vars(cls):
                if name.startswith("test_") and callable(getattr(cls, name)):
                    found.append((f"{cls_name}::{name}", cls, name))
    return found


_MODULE: list[ModuleType] = []


def _module(config: pytest.Config) -> ModuleType:
    if not _MODULE:
        _MODULE.append(celery_tests(config))
    return _MODULE[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "celery_test" not in metafunc.fixturenames:
        return
    try:
        tests = collect(_module(metafunc.config))
    except pytest.skip.Exception as exc:
        skip = pytest.mark.skip(reason=str(exc))
        metafunc.parametrize("celery_test", [pytest.param(None, id="download", marks=skip)])
        return
    except pytest.fail.Exception as exc:  # a broken download fails, never skips
        metafunc.parametrize("celery_test", [pytest.param(("fail", str(exc)), id="download")])
        return
    params = []
    for test_id, cls, name in tests:
        marks = list(getattr(getattr(cls, name), "pytestmark", []))
        if test_id in EXCLUDED:
            marks.append(pytest.mark.skip(reason=EXCLUDED[test_id]))
        params.append(pytest.param((cls, name), id=test_id, marks=marks))
    metafunc.parametrize("celery_test", params)


def test_celery_state_test(celery_test):
    """One of Celery's State tests passes against archiver.State."""
    cls, name = celery_test
    if cls == "fail":
        pytest.fail(name)
    instance = cls()
    if hasattr(instance, "setup_method"):
        instance.setup_method(getattr(instance, name))
    getattr(instance, name)()


def test_all_of_celerys_tests_are_run(request):
    """Celery's file has its 40-odd tests, and every exclusion names one of them."""
    try:
        tests = {test_id for test_id, _, _ in collect(_module(request.config))}
    except pytest.skip.Exception as exc:
        pytest.skip(str(exc))
    assert len(tests) >= 40
    assert set(EXCLUDED) <= tests
