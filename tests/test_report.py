"""archiver report: its numbers against latest() + pandas, a self-contained page, a real
browser, and the edge cases (empty window, one task, one worker, offline worker, 50 names)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from celery.events.state import State as CeleryState
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archiver
from archiver import report
from archiver.cli import cli
from archiver.record import Recorder

from . import browser
from .helpers import SAMPLE, SMALL, read_events, record_copies

pytest.importorskip("duckdb")
pytest.importorskip("matplotlib")

T0 = 1_790_000_000.0


@pytest.fixture(scope="module", params=[SAMPLE, SMALL], ids=["sample", "small"])
def recorded(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "a"
    record_copies(path, [read_events(request.param)])
    return path


@pytest.fixture(scope="module")
def sample_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "a"
    record_copies(path, [read_events(SAMPLE)])
    return path


def finished(frame: pd.DataFrame) -> pd.Series:
    return frame["succeeded"].where(frame["succeeded"].notna(), frame["failed"])


# -- numbers ------------------------------------------------------------------------------
def test_numbers_equal_latest_and_pandas(recorded):
    """Tasks per final state, failures per name and p95 runtime per name, computed again
    from ``Archive.latest()`` with pandas."""
    archive = archiver.Archive(recorded)
    data = report.gather(archive, percentiles=(0.5, 0.95))
    latest = archive.latest("tasks")
    state = latest["state"].astype(object).fillna("(none)")
    assert data.states.to_dict() == state.value_counts().to_dict()
    assert data.tasks == len(latest)

    name = latest["name"].astype(object).fillna("(none)")
    failures = name[state == "FAILURE"].value_counts()
    got = data.per_name["failed"]
    assert got[got > 0].to_dict() == failures.to_dict()
    assert data.per_name["tasks"].to_dict() == name.value_counts().to_dict()

    runtime = latest["runtime"].where(
        latest["runtime"].notna(), (finished(latest) - latest["started"]).dt.total_seconds()
    )
    p95 = runtime.groupby(name).quantile(0.95).dropna()
    np.testing.assert_allclose(
        data.per_name["runtime_p95"].dropna().sort_index(), p95.sort_index(), rtol=1e-9
    )
    assert data.failures_by_worker.sum() == failures.sum()
    assert data.throughput.to_numpy().sum() == state.isin(["SUCCESS", "FAILURE"]).sum()
    assert data.failures.to_numpy().sum() == failures.sum()
    assert data.exceptions["count"].sum() == min(failures.sum(), data.exceptions["count"].sum())
    assert (data.slowest["runtime"].diff().dropna() <= 0).all()
    assert data.slowest["runtime"].iloc[0] == pytest.approx(runtime.max())


def test_summary_counts_events_and_workers(sample_archive):
    """Events and workers seen agree with Celery's own State fed the recording."""
    events = read_events(SAMPLE)
    celery = CeleryState()
    for event in events:
        celery.event(dict(event))
    data = report.gather(sample_archive)
    assert data.events == len(events)
    assert data.workers_seen == sorted(celery.workers)
    page = report.render_html(data)
    for count in data.states:
        assert f"<b>{count:,}</b>" in page


def test_window_and_name_filter(sample_archive):
    """gather() counts only the window's snapshots and the task names matching the glob."""
    archive = archiver.Archive(sample_archive)
    snaps = archive.load("snapshots")
    start, end = snaps["captured_at"].iloc[5], snaps["captured_at"].iloc[15]
    data = report.gather(archive, start, end, name="harness.f*")
    rows = archive.load("tasks", start=start, end=end)
    last = rows.sort_values("captured_at", kind="stable").drop_duplicates("uuid", keep="last")
    last = last[last["name"].astype(str).map(lambda n: fnmatch.fnmatchcase(n, "harness.f*"))]
    assert data.per_name["tasks"].to_dict() == last["name"].astype(str).value_counts().to_dict()
    assert data.states.to_dict() == last["state"].astype(str).value_counts().to_dict()
    assert set(data.per_name.index) == {"harness.fail", "harness.flaky"}


# -- the page -----------------------------------------------------------------------------
URL_IN = re.compile(
    r"""(?:\b(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*|@import\s*(?:url\()?\s*["']?|url\(\s*["']?)(https?:)""",
    re.I,
)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained(sample_archive, tmp_path):
    """The report page loads nothing from the network and is what was written."""
    out = tmp_path / "report.html"
    page = report.report(sample_archive, output=out)
    assert out.read_text(encoding="utf-8") == page
    assert not URL_IN.search(page)
    assert "http://" not in page and "https://" not in page
    parser = _Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert tags.count("svg") == sum(len(charts) for _, charts in report.SECTIONS)
    ids = [a["id"] for _, a in parser.tags if "id" in a]
    assert len(ids) == len(set(ids)), "element ids repeat across the inline charts"


def test_charts_drawn_by_two_processes_are_those_drawn_by_one(sample_archive):
    """Charts drawn by two processes are those drawn by one."""
    data = report.gather(sample_archive)
    one = report.render_charts(data, jobs=1)
    assert report.render_charts(data, jobs=2) == one
    assert len(one) == sum(len(charts) for _, charts in report.SECTIONS)
    assert all(s.startswith('<svg role="img"') for s in one)


def test_module_is_callable_as_archiver_report(sample_archive):
    """Module is callable as archiver report."""
    code = "import archiver, sys; archiver.report; print('archiver.report' in sys.modules)"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fresh.stdout.strip() == "True", fresh.stderr  # imported on first use
    assert archiver.report is report
    assert report(sample_archive, freq="5s").startswith("<!DOCTYPE html>")


def test_cli_writes_the_report(sample_archive, tmp_path):
    """archiver report writes the page with --name and --concurrency."""
    out = tmp_path / "r.html"
    args = ["report", "--archive", str(sample_archive), "--output", str(out)]
    result = CliRunner().invoke(cli, [*args, "--name", "harness.*", "--concurrency", "4"])
    assert result.exit_code == 0, result.output
    assert "Utilisation per worker" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--since", "soon"], "invalid time 'soon'"),
        (["--since", "1h", "--until", "2h"], "empty window"),
        (["--concurrency", "w1=zero"], "pool size"),
        (["--freq", "often"], "not an interval"),
        (["--name", "[ab]*"], "no [...] classes"),
    ],
)
def test_cli_bad_input_is_one_line(sample_archive, tmp_path, extra, message):
    """Cli bad input is one line."""
    out = tmp_path / "r.html"
    args = ["report", "--archive", str(sample_archive), "--output", str(out), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_missing_archive_and_directory(tmp_path):
    """Cli missing archive and directory."""
    result = CliRunner().invoke(
        cli, ["report", "--archive", str(tmp_path / "none"), "-o", str(tmp_path / "r.html")]
    )
    assert result.output == f"Error: no archive at {tmp_path / 'none'}\n"
    assert result.exit_code == 1
    result = CliRunner().invoke(
        cli, ["report", "--archive", str(tmp_path), "-o", str(tmp_path / "no" / "r.html")]
    )
    assert result.exit_code == 1 and "no such directory" in result.output


# -- edge cases ---------------------------------------------------------------------------
def task_events(uuid: str, name: str, worker: str, t: float, *, fail: bool = False) -> list:
    base = {"uuid": uuid, "utcoffset": 0, "pid": 1, "clock": 1}
    done = (
        {"type": "task-failed", "exception": "KeyError('x')", "traceback": "Traceback: x"}
        if fail
        else {"type": "task-succeeded", "result": "1", "runtime": 0.25}
    )
    return [
        {**base, "type": "task-sent", "name": name, "hostname": "client", "timestamp": t},
        {**base, "type": "task-received", "name": name, "hostname": worker, "timestamp": t + 0.1},
        {**base, "type": "task-started", "hostname": worker, "timestamp": t + 0.2},
        {**base, **done, "hostname": worker, "timestamp": t + 0.45},
    ]


def worker_event(kind: str, host: str, t: float, pid: int = 100) -> dict:
    return {
        "type": f"worker-{kind}",
        "hostname": host,
        "timestamp": t,
        "utcoffset": 0,
        "pid": pid,
        "clock": 1,
        "freq": 2.0,
        "active": 0,
        "processed": 0,
        "loadavg": [0.5, 0.4, 0.3],
        "sw_ident": "py-celery",
        "sw_ver": "5.4.0",
        "sw_sys": "Linux",
    }


def received(events: list[dict]) -> list[dict]:
    """``events`` in time order, each received when it was sent."""
    return sorted(
        ({**e, "local_received": e["timestamp"]} for e in events), key=lambda e: e["timestamp"]
    )


def make(tmp_path: Path, events: list[dict]) -> Path:
    events = received(events)
    path = tmp_path / "archive"
    record_copies(path, [events])
    return path


def test_empty_window(sample_archive, tmp_path):
    """A window without data gives an empty report, not an error."""
    page = report.report(sample_archive, "2001-01-01", "2001-01-02", output=tmp_path / "r.html")
    data = report.gather(sample_archive, "2001-01-01", "2001-01-02")
    assert data.tasks == 0 and data.events == 0 and data.workers_seen == []
    assert "no finished tasks in this window" in page
    assert "No failed task in this window." in page


def test_one_task_one_worker(tmp_path):
    """One task on one worker reports its state and worker."""
    events = [worker_event("online", "w@h", T0), *task_events("u1", "only.task", "w@h", T0 + 1)]
    data = report.gather(make(tmp_path, events))
    assert data.states.to_dict() == {"SUCCESS": 1}
    assert data.workers_seen == ["w@h"]
    assert list(data.throughput.columns) == ["only.task"]
    assert data.slowest["uuid"].tolist() == ["u1"]
    assert data.by_name.loc["only.task", "runtime_p99"] == pytest.approx(0.25)
    assert data.by_name.loc["only.task", "broker_p50"] == pytest.approx(0.1)
    assert report.render_html(data).count("<svg") == 9


def test_a_task_time_in_the_year_9999_is_left_out_of_charts_over_time(tmp_path, caplog):
    """A worker clock in the year 9999 (accepted, archived as is): the page is still
    written, that time is left out of the charts over time with a warning, and the task
    still counts."""
    events = [
        worker_event("online", "w@h", T0),
        *task_events("u1", "fine.task", "w@h", T0 + 1),
        *task_events("u2", "odd.task", "w@h", T0 + 2),
    ]
    odd = next(e for e in events if e.get("uuid") == "u2" and e["type"] == "task-succeeded")
    odd["timestamp"] = 253_402_300_000.0
    path = tmp_path / "archive"  # recorded by the replay's clock (the test helper would
    Recorder(str(path)).replay(received(events))  # take a snapshot every second to 9999)
    data = report.gather(path)
    assert data.states.to_dict() == {"SUCCESS": 2}
    assert data.throughput.index.max() < pd.Timestamp("2100-01-01", tz="UTC")
    assert "left out of the charts over time" in caplog.text
    assert report.render_html(data).count("<svg") == 9


def test_worker_that_went_offline_and_restarted(tmp_path):
    """Online, offline, back with a new pid, offline: as Celery's State sees it."""
    events = [
        worker_event("online", "a@h", T0),
        worker_event("heartbeat", "a@h", T0 + 2),
        worker_event("online", "b@h", T0),
        worker_event("offline", "a@h", T0 + 5),
        worker_event("online", "a@h", T0 + 9, pid=200),
        worker_event("offline", "a@h", T0 + 14, pid=200),
        worker_event("heartbeat", "b@h", T0 + 16),
        *task_events("u1", "t", "b@h", T0 + 3),
    ]
    data = report.gather(make(tmp_path, events))
    celery = CeleryState()
    for event in received(events):
        celery.event(event)
    # Celery's Worker.alive reads the wall clock: ask it at the last snapshot's time.
    at = data.last.timestamp()
    expected = {
        h: bool(w.heartbeats) and at < w.heartbeat_expires for h, w in celery.workers.items()
    }
    last = data.worker_states.groupby("hostname").last()
    assert last["alive"].to_dict() == expected == {"a@h": False, "b@h": True}
    runs = data.worker_states[data.worker_states["hostname"] == "a@h"]
    assert runs["alive"].tolist() == [True, False, True, False]
    assert data.restarts[["hostname", "pid"]].values.tolist() == [["a@h", 200]]
    assert (runs["until"] >= runs["since"]).all()
    report.render_html(data)


def test_fifty_task_names_are_grouped(tmp_path):
    """Fifty task names are grouped."""
    events = [worker_event("online", "w@h", T0)]
    for i in range(50):
        for k in range(i % 3 + 1):
            events += task_events(f"u{i}-{k}", f"app.task_{i:02d}", "w@h", T0 + i * 0.3 + k,
                                  fail=k == 1)  # fmt: skip
    data = report.gather(make(tmp_path, events), top=8)
    assert len(data.throughput.columns) == 9 and data.throughput.columns[-1] == "other (42 names)"
    assert len(data.by_name) == 9
    assert data.by_name["tasks"].sum() == len(data.per_name) * 0 + data.tasks
    assert len(data.per_name) == 50
    assert len(data.failures.columns) == 9


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_hostile_task_names_are_text(tmp_path_factory, names):
    """Any task name (markup, $math$, _hidden, very long) is escaped text, never markup."""
    tmp = tmp_path_factory.mktemp("hostile")
    events = [worker_event("online", "<b>w</b>", T0)]
    for i, name in enumerate(names):
        events += task_events(f"u{i}", name, "<b>w</b>", T0 + i, fail=i % 2 == 1)
    data = report.gather(make(tmp, events))
    assert set(data.per_name.index) == set(names)
    page = report.render_html(data)
    parser = _Tags()
    parser.feed(page)
    assert "script" not in [t for t, _ in parser.tags]
    assert "<b>w</b>" not in page


# -- a real browser -----------------------------------------------------------------------
@pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed (make test)")
@pytest.mark.parametrize("case", ["sample", "empty", "fifty-names", "long-names"])
def test_report_in_headless_chromium(sample_archive, tmp_path, case):
    """Drawn, sized, and laid out: no text cut off or over other text, no legend over a
    plot (the charts size their margins from their labels, with no layout engine)."""
    window = ("2001-01-01", "2001-01-02") if case == "empty" else (None, None)
    if case in ("sample", "empty"):
        archive = sample_archive
    else:
        long = case == "long-names"
        events = [worker_event("online", "w@h", T0)]
        if long:
            events.append(worker_event("online", "worker-" + "W" * 40 + "@host", T0))
        for i in range(50):
            name = (
                ["WWW.", "任务名称", "m" * 70][i % 3] + f".{i:02d}" * 12
                if long
                else f"app.task_{i:02d}"
            )
            host = "worker-" + "W" * 40 + "@host" if long and i % 2 else "w@h"
            events += task_events(f"u{i}", name, host, T0 + i * 0.2, fail=i % 7 == 0)
        archive = make(tmp_path, events)
    out = tmp_path / "report.html"
    report.report(archive, *window, output=out)
    page = browser.open_page(out, tmp_path / "screenshot.png")
    assert page.errors == []
    assert page.requests == [out.resolve().as_uri()]
    assert len(page.charts) == sum(len(charts) for _, charts in report.SECTIONS)
    for chart in page.charts:
        assert chart["width"] > 100 and chart["height"] > 100, chart
        assert chart["drawn"] > (4 if case == "empty" else 10), chart
        assert chart["cut"] == [] and chart["crossed"] == [], chart
        assert chart["covering"] == [], chart
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000
