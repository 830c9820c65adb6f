"""``archiver report``: a window of the cluster's history as one self-contained HTML page.

:func:`gather` reads only the columns the report needs (time window and name filter
pushed down to the files through :meth:`archiver.Archive.load`) and aggregates them in
DuckDB into a :class:`ReportData` of small frames. The ``chart_*`` functions draw one
matplotlib figure each from it, :func:`render_charts` turns them into SVG (in two
processes), :func:`render_html` inlines them in the page (no JavaScript, no request to
any host), and :func:`report` does it all. The notebook calls the same
functions, so the two never disagree.

``import archiver.report`` needs only pandas and pyarrow; gathering needs ``duckdb`` and
drawing ``matplotlib`` (the ``report`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import html
import io
import logging
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .analysis import auto_freq
from .api import Archive
from .errors import ArchiverError, missing_extra
from .rows import latest_rows as latest_arrow
from .timeparse import parse_time

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import duckdb
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch

TASK_COLUMNS = [
    "captured_at",
    "uuid",
    "name",
    "state",
    "worker",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "runtime",
]
FAILURE_COLUMNS = ["captured_at", "uuid", "exception", "traceback"]
WORKER_COLUMNS = ["captured_at", "hostname", "alive", "pid", "loadavg", "last_heartbeat"]
SNAPSHOT_COLUMNS = [
    "captured_at",
    "snapshot_id",
    "event_count",
    "tasks_pending",
    "tasks_received",
    "tasks_started",
    "tasks_retry",
]
SECONDS = {"broker": "broker wait (s)", "wait": "queue wait (s)", "runtime": "runtime (s)"}
IN_FLIGHT = ("pending", "received", "started", "retry")
LATENCIES = {
    "broker": "broker wait (sent → received)",
    "wait": "queue wait (received → started)",
    "runtime": "runtime",
}
#: Above this many heartbeats per worker, the timeline shows no tick per heartbeat.
MAX_HEARTBEAT_TICKS = 400
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MISSING_EXTRA = missing_extra("the report's matplotlib or duckdb", "report", "matplotlib duckdb")


# -- data ---------------------------------------------------------------------------------
@dataclass
class ReportData:
    """Everything the report shows, as small frames (times UTC, durations in seconds)."""

    archive: str
    start: pd.Timestamp | None  #: the window asked for (None: open)
    end: pd.Timestamp | None
    first: pd.Timestamp | None  #: first and last capture seen in the window
    last: pd.Timestamp | None
    name: str | None
    freq: str
    percentiles: tuple[float, ...]
    top: int
    states: pd.Series[int]  #: tasks per final state
    events: int
    workers_seen: list[str]
    by_name: pd.DataFrame  #: per name group (top N + other): counts and latency percentiles
    per_name: pd.DataFrame  #: per task name (every name): tasks, succeeded, failed, p-runtimes
    throughput: pd.DataFrame  #: interval x name group: tasks finished
    outcomes: pd.DataFrame  #: interval x succeeded/failed/retried/revoked
    latency_trend: pd.DataFrame  #: interval x <metric>_p50...
    failures: pd.DataFrame  #: interval x name group: failures
    failures_by_worker: pd.Series
    exceptions: pd.DataFrame
    worker_states: pd.DataFrame  #: hostname, since, until, alive (one row per run of a state)
    heartbeats: pd.DataFrame  #: hostname, at
    restarts: pd.DataFrame  #: hostname, at, pid
    worker_tasks: pd.DataFrame  #: per worker: processed, failed
    busy: pd.DataFrame  #: interval x worker: average tasks running (or utilisation)
    utilisation: bool  #: busy is a 0-1 utilisation (concurrency known)
    loadavg: pd.DataFrame  #: interval x worker: mean 1-minute load average
    in_flight: pd.DataFrame  #: interval x pending/received/started/retry (mean of snapshots)
    slowest: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return int(self.states.sum())

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.freq)


def _require(module: str) -> types.ModuleType:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ArchiverError(MISSING_EXTRA) from exc


def glob_to_like(pattern: str) -> str:
    """A shell glob (``tasks.*``, ``harness.?ail``) as a SQL LIKE pattern for Arrow."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def name_filter(pattern: str | None) -> ds.Expression | None:
    """Tasks whose name matches the glob ``pattern`` (``*`` and ``?``), pushed to the scan."""
    if pattern is None:
        return None
    if "[" in pattern:
        raise ArchiverError(f"task name pattern {pattern!r}: use * and ? (no [...] classes)")
    return pc.match_like(ds.field("name").cast(pa.string()), glob_to_like(pattern))


def _micros(table: pa.Table) -> pa.Table:
    """Timestamps as int64 microseconds (DuckDB then never needs a time zone)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return table


def _load(
    archive: Archive,
    table: str,
    columns: list[str],
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    filters: pc.Expression | None = None,
) -> pa.Table:
    if table not in archive.tables():
        schema = archive.schema(table)
        return _micros(pa.table({c: pa.array([], schema.field(c).type) for c in columns}))
    return _micros(
        archive.load(table, start=start, end=end, columns=columns, filters=filters, engine="arrow")
    )


def _ts(values: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(pd.Series(values, dtype="float64"), unit="us", utc=True))


def _pct(q: float) -> str:
    return f"p{q * 100:g}"


def gather(
    archive: Archive | str | os.PathLike[str],
    start: Any = None,
    end: Any = None,
    *,
    name: str | None = None,
    top: int = 8,
    percentiles: Sequence[float] = (0.5, 0.9, 0.99),
    freq: str | None = None,
    slowest: int = 10,
    concurrency: int | dict[str, int] | None = None,
) -> ReportData:
    """Read and aggregate the window ``[start, end)`` of ``archive`` for the report.

    Args:
        start, end: anything :meth:`archiver.Archive.load` takes (``"1d"``, ISO, datetimes).
        name: a glob on the task name (``tasks.*``); workers and snapshots are not filtered.
        top: task names (and workers) shown one by one; the rest are grouped as "other".
        percentiles: latency percentiles, fractions in [0, 1].
        freq: the interval of the charts over time (default: about 40 over the window).
        slowest: how many of the slowest tasks to list.
        concurrency: pool size of every worker (int) or per hostname: busy becomes a 0-1
            utilisation.

    A task's figures are those of its last version captured in the window (its final
    state, as :meth:`archiver.Archive.latest` gives it).
    """
    duckdb = _require("duckdb")
    archive = archive if isinstance(archive, Archive) else Archive(archive)
    t_start, t_end = parse_time(start), parse_time(end)
    percentiles = _check_arguments(archive, t_start, t_end, percentiles, top)
    # Read the failures' text first: its scan decodes every traceback, and its peak
    # memory then does not add to that of the main read.
    failure_text = _failure_text(archive, t_start, t_end, name)
    pa.default_memory_pool().release_unused()
    versions = _load(archive, "tasks", TASK_COLUMNS, t_start, t_end, name_filter(name))
    snaps = _load(archive, "snapshots", SNAPSHOT_COLUMNS, t_start, t_end)
    workers = _load(archive, "workers", WORKER_COLUMNS, t_start, t_end)
    window = _captured_window(t_start, t_end, (versions, snaps, workers), freq)
    last_rows, retries = _final_versions(versions)
    del versions  # only the final versions and the retries are needed from here on
    pa.default_memory_pool().release_unused()
    with contextlib.closing(duckdb.connect()) as con:
        con.execute("SET threads TO 2")
        for label, table in (
            ("last_rows", last_rows),
            ("retries", retries),
            ("fails", failure_text),
            ("snaps", snaps),
            ("workers", workers),
        ):
            con.register(label, table)
        agg = _Aggregation(con, window, percentiles)
        data = _aggregate(agg, archive.uri, name, top, slowest, concurrency)
    agg.warn_outside()
    return data


def _check_arguments(
    archive: Archive,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    percentiles: Sequence[float],
    top: int,
) -> tuple[float, ...]:
    """Refuse an empty window, an archive without tasks or snapshots, and bad figures;
    the percentiles as floats."""
    if start is not None and end is not None and end <= start:
        raise ArchiverError(f"empty window: the end {end} is not after the start {start}")
    if "tasks" not in archive.tables() and "snapshots" not in archive.tables():
        archive.partitions("tasks")  # the one-line "no table" error
    fractions = tuple(float(q) for q in percentiles)
    if not fractions or any(not 0 <= q <= 1 for q in fractions):
        raise ArchiverError(f"percentiles must be fractions in [0, 1], got {fractions}")
    if top < 1:
        raise ArchiverError(f"top must be at least 1, got {top}")
    return fractions


@dataclass(frozen=True)
class _Window:
    """The window asked for (``start``, ``end``: None when open), the first and last
    capture read in it, and the interval of the charts over time (``step`` in µs)."""

    start: pd.Timestamp | None
    end: pd.Timestamp | None
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    freq: str
    step: int

    @property
    def lo(self) -> pd.Timestamp | None:
        return self.start if self.start is not None else self.first

    @property
    def hi(self) -> pd.Timestamp | None:
        return self.end if self.end is not None else self.last

    # Charts over time cover the window (of captured_at), give or take a step: a task
    # time far outside it (a worker clock in the year 9999) is left out of them.
    @property
    def chart_lo(self) -> int | None:
        """The first time (µs) the charts over time show, None when unbounded."""
        return None if self.lo is None else self.lo.value // 1000 - self.step

    @property
    def chart_hi(self) -> int | None:
        """The last time (µs) the charts over time show, None when unbounded."""
        return None if self.hi is None else self.hi.value // 1000 + self.step


def _captured_window(
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    tables: Sequence[pa.Table],
    freq: str | None,
) -> _Window:
    """The window, with the first and last ``captured_at`` of ``tables`` and the charts'
    interval (``freq``, by default about 40 intervals over the window)."""
    captured = [
        v for t in tables for v in pc.min_max(t.column("captured_at")).values() if v.is_valid
    ]
    first = _ts([min(v.as_py() for v in captured)])[0] if captured else None
    last = _ts([max(v.as_py() for v in captured)])[0] if captured else None
    lo = start if start is not None else first
    hi = end if end is not None else last
    if freq is None:
        freq = auto_freq([lo, hi] if lo is not None else [])
    step = int(pd.Timedelta(freq).total_seconds() * 1e6)
    if step <= 0:
        raise ArchiverError(f"freq must be a positive interval, got {freq!r}")
    return _Window(start, end, first, last, freq, step)


def _final_versions(versions: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The final version of each task (as Archive.latest picks it) with ``was_retried``
    (was any of its versions a retry), and each distinct retry (uuid, retried)."""
    last_rows = latest_arrow(versions, "uuid")
    retry = pc.or_kleene(
        pc.equal(versions["state"].cast(pa.string()), "RETRY"), pc.is_valid(versions["retried"])
    )
    retried_uuids = pc.unique(versions["uuid"].filter(pc.fill_null(retry, False)))
    last_rows = last_rows.append_column(
        "was_retried", pc.is_in(last_rows["uuid"], value_set=retried_uuids)
    )
    retries = (
        versions.select(["uuid", "retried"])
        .filter(pc.is_valid(versions["retried"]))
        .group_by(["uuid", "retried"], use_threads=False)
        .aggregate([])
    )
    return last_rows, retries


class _Aggregation:
    """The report's tables in DuckDB (``last_rows``, ``retries``, ``fails``, ``snaps``,
    ``workers``), queried into frames over the report's window."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, window: _Window, percentiles: tuple[float, ...]
    ) -> None:
        self.con = con
        self.window = window
        self.percentiles = percentiles
        #: Task times per interval left out of the charts over time (outside the window).
        self.outside = 0

    def q(self, sql: str, params: dict[str, int] | None = None) -> pd.DataFrame:
        """The result of ``sql`` (with ``$name`` parameters) as a DataFrame."""
        frame: pd.DataFrame = self.con.execute(sql, params).df()
        return frame

    def quantiles(self, sql: str, metrics: Sequence[str]) -> str:
        """``sql`` (``{q}``: where the aggregates go) plus the ``percentiles`` of ``metrics``
        as columns ``<metric>_p50``...: one list quantile (one sort) per metric."""
        percentiles = self.percentiles
        qs = "[" + ", ".join(map(repr, percentiles)) + "]"
        inner = ", ".join(f"quantile_cont({m}, {qs}) AS {m}_q" for m in metrics)
        outer = ", ".join(
            f"{m}_q[{i}] AS {m}_{_pct(p)}" for m in metrics for i, p in enumerate(percentiles, 1)
        )
        hidden = ", ".join(f"{m}_q" for m in metrics)
        return f"SELECT * EXCLUDE ({hidden}), {outer} FROM ({sql.format(q=inner)})"

    def in_window(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` whose ``bucket`` the charts show (the others are counted)."""
        lo, hi = self.window.chart_lo, self.window.chart_hi
        if frame.empty or lo is None or hi is None:
            return frame
        keep = frame["bucket"].between(lo, hi)
        self.outside += int((~keep).sum())
        return frame[keep]

    def over_time(self, sql: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """``sql``'s sums ``n`` per ``bucket`` (``$step``) and ``key``: interval x key,
        every interval of the window, the keys ``columns`` (default: those found)."""
        window = self.window
        frame = self.in_window(self.q(sql, {"step": window.step}))
        if frame.empty:
            out = pd.DataFrame(columns=list(columns or []), dtype="float64")
        else:
            frame["interval"] = _ts(frame["bucket"])
            out = frame.pivot_table(
                index="interval", columns="key", values="n", aggfunc="sum", fill_value=0
            )
            out = out.reindex(columns=[c for c in (columns or out.columns) if c in out.columns])
            if columns is not None:
                out = out.reindex(columns=list(columns), fill_value=0)
        full = _intervals(window.lo, window.hi, window.freq)
        out = out.reindex(full.union(cast(pd.DatetimeIndex, out.index)), fill_value=0)
        out.index.name = "interval"
        out.columns.name = None
        return out

    def mean_over_time(self, sql: str, columns: Sequence[str]) -> pd.DataFrame:
        """The mean of ``sql``'s ``v`` per interval of its times ``t``: interval x ``key``."""
        frame = self.q(
            f"SELECT (t // $step) * $step AS bucket, key, avg(v) AS v FROM ({sql}) GROUP BY ALL",
            {"step": self.window.step},
        )
        if frame.empty:
            return pd.DataFrame(columns=list(columns), dtype="float64")
        frame["interval"] = _ts(frame["bucket"])
        out = frame.pivot_table(index="interval", columns="key", values="v", aggfunc="mean")
        out = out.reindex(columns=[c for c in columns if c in out.columns])
        out.columns.name = None
        return out

    def warn_outside(self) -> None:
        """Log how many task times were left out of the charts over time, if any."""
        if self.outside:
            logger.warning(
                "%d task times per interval lie outside the window (%s to %s) and are left "
                "out of the charts over time (a worker's clock off?)",
                self.outside,
                self.window.lo,
                self.window.hi,
            )


def _aggregate(
    agg: _Aggregation,
    archive: str,
    name: str | None,
    top: int,
    slowest: int,
    concurrency: int | dict[str, int] | None,
) -> ReportData:
    """Every section of the report, from the tables registered in ``agg``."""
    order = _name_groups(agg, top)
    states, by_name, per_name = _task_counts(agg, order)
    throughput, outcomes, failures = _tasks_over_time(agg, order)
    worker_tasks = _worker_tasks(agg)
    worker_states, heartbeats, restarts = _worker_history(agg)
    workers_seen, top_workers = _workers_shown(worker_tasks, worker_states, top)
    window = agg.window
    return ReportData(
        archive=archive,
        start=window.start,
        end=window.end,
        first=window.first,
        last=window.last,
        name=name,
        freq=window.freq,
        percentiles=agg.percentiles,
        top=top,
        states=states,
        events=_events(agg),
        workers_seen=workers_seen,
        by_name=by_name,
        per_name=per_name,
        throughput=throughput,
        outcomes=outcomes,
        latency_trend=_latency_trend(agg),
        failures=failures,
        failures_by_worker=_failures_by_worker(agg),
        exceptions=_exceptions(agg.con),
        worker_states=worker_states,
        heartbeats=heartbeats,
        restarts=restarts,
        worker_tasks=worker_tasks,
        busy=_busy(agg, top_workers, concurrency),
        utilisation=concurrency is not None,
        loadavg=_loadavg(agg, top_workers),
        in_flight=_in_flight(agg),
        slowest=_slowest(agg, slowest),
    )


def _name_groups(agg: _Aggregation, top: int) -> list[str]:
    """Make the table ``g``: the final version of each task (view ``final``) and its name
    group ``grp`` (one of the ``top`` busiest names, or "other (N names)"); the groups
    in order."""
    agg.con.execute(
        """
        CREATE VIEW final AS
        SELECT uuid, name::VARCHAR AS name, state::VARCHAR AS state, worker::VARCHAR AS worker,
               sent, received, started, succeeded, failed, revoked,
               coalesce(succeeded, failed) AS finished,
               (received - sent) / 1e6 AS broker,
               (started - received) / 1e6 AS wait,
               coalesce(runtime, (coalesce(succeeded, failed) - started) / 1e6) AS runtime,
               was_retried
        FROM last_rows
        """
    )
    names = agg.q(
        "SELECT coalesce(name, '(none)') AS name, count(*) AS tasks FROM final "
        "GROUP BY 1 ORDER BY tasks DESC, name"
    )
    top_names = names["name"].head(top).tolist()
    rest = len(names) - len(top_names)
    other = f"other ({rest} name{'s' if rest > 1 else ''})"
    agg.con.register("top_names", pa.table({"name": pa.array(top_names, pa.string())}))
    agg.con.execute(
        f"""CREATE TEMP TABLE g AS SELECT *, CASE WHEN coalesce(name, '(none)') IN
        (SELECT name FROM top_names) THEN coalesce(name, '(none)') ELSE '{other}' END AS grp
        FROM final"""
    )
    return [*top_names, *([other] if rest else [])]


#: Task counts of a group (of ``g``) as SQL aggregates.
_COUNTS = """count(*) AS tasks,
        count(*) FILTER (WHERE state = 'SUCCESS') AS succeeded,
        count(*) FILTER (WHERE state = 'FAILURE') AS failed,
        count(*) FILTER (WHERE was_retried) AS retried,
        count(*) FILTER (WHERE state = 'REVOKED') AS revoked"""


def _task_counts(
    agg: _Aggregation, order: list[str]
) -> tuple[pd.Series[int], pd.DataFrame, pd.DataFrame]:
    """Tasks per final state; counts and latency percentiles per name group (in
    ``order``); counts and runtime percentiles per name."""
    by_state = agg.q("SELECT coalesce(state, '(none)') AS state, count(*) AS n FROM g GROUP BY 1")
    states = by_state.set_index("state")["n"].sort_values(ascending=False, kind="stable")
    by_name = agg.q(
        agg.quantiles(f"SELECT grp AS name, {_COUNTS}, {{q}} FROM g GROUP BY grp", list(LATENCIES))
    ).set_index("name")
    by_name = by_name.reindex(order)
    per_name = agg.q(
        agg.quantiles(
            f"SELECT coalesce(name, '(none)') AS name, {_COUNTS}, {{q}} FROM g GROUP BY 1",
            ["runtime"],
        )
        + " ORDER BY tasks DESC, name"
    ).set_index("name")
    return states, by_name, per_name


#: The interval (a multiple of ``$step``) holding the time ``{t}``, in SQL.
_BUCKET = "(({t}) // $step) * $step"


def _tasks_over_time(
    agg: _Aggregation, order: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per interval: tasks finished per name group, the outcomes, failures per name group."""
    bucket = _BUCKET
    throughput = agg.over_time(
        f"SELECT {bucket.format(t='finished')} AS bucket, grp AS key, count(*) AS n "
        "FROM g WHERE finished IS NOT NULL AND state IN ('SUCCESS', 'FAILURE') GROUP BY ALL",
        order,
    )
    outcomes = agg.over_time(
        f"""
        SELECT {bucket.format(t="succeeded")} AS bucket, 'succeeded' AS key, count(*) AS n
          FROM g WHERE state = 'SUCCESS' AND succeeded IS NOT NULL GROUP BY ALL
        UNION ALL SELECT {bucket.format(t="failed")}, 'failed', count(*)
          FROM g WHERE state = 'FAILURE' AND failed IS NOT NULL GROUP BY ALL
        UNION ALL SELECT {bucket.format(t="retried")}, 'retried', count(*)
          FROM retries GROUP BY ALL
        UNION ALL SELECT {bucket.format(t="revoked")}, 'revoked', count(*)
          FROM g WHERE revoked IS NOT NULL GROUP BY ALL
        """,
        ["succeeded", "failed", "retried", "revoked"],
    )
    failures = agg.over_time(
        f"SELECT {bucket.format(t='failed')} AS bucket, grp AS key, count(*) AS n "
        "FROM g WHERE state = 'FAILURE' AND failed IS NOT NULL GROUP BY ALL",
        order,
    )
    return throughput, outcomes, failures


def _latency_trend(agg: _Aggregation) -> pd.DataFrame:
    """Per interval (of the task's last time), the percentiles of each latency."""
    trend_cols = [f"{m}_{_pct(p)}" for m in LATENCIES for p in agg.percentiles]
    trend = agg.q(
        agg.quantiles(
            f"""SELECT {_BUCKET.format(t="coalesce(finished, started, received)")} AS bucket,
            {{q}} FROM g WHERE coalesce(finished, started, received) IS NOT NULL GROUP BY 1""",
            list(LATENCIES),
        )
        + " ORDER BY bucket",
        {"step": agg.window.step},
    )
    trend = agg.in_window(trend)
    trend.index = _ts(trend.pop("bucket"))
    latency_trend = trend.reindex(columns=trend_cols)
    latency_trend.index.name = "interval"
    return latency_trend


def _failures_by_worker(agg: _Aggregation) -> pd.Series[int]:
    """Tasks that ended in FAILURE, per worker."""
    by_worker: pd.Series[int] = agg.q(
        "SELECT coalesce(worker, '(none)') AS worker, count(*) AS n FROM g "
        "WHERE state = 'FAILURE' GROUP BY 1 ORDER BY n DESC, worker"
    ).set_index("worker")["n"]
    return by_worker


def _worker_tasks(agg: _Aggregation) -> pd.DataFrame:
    """Per worker: tasks processed (succeeded or failed) and failed."""
    return agg.q(
        """SELECT coalesce(worker, '(none)') AS worker,
        count(*) FILTER (WHERE state IN ('SUCCESS', 'FAILURE')) AS processed,
        count(*) FILTER (WHERE state = 'FAILURE') AS failed
        FROM g WHERE worker IS NOT NULL GROUP BY 1 ORDER BY processed DESC, worker"""
    ).set_index("worker")


def _worker_history(agg: _Aggregation) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """From the workers table: each run of an alive (or dead) state, the heartbeats, the
    restarts (a new pid)."""
    hi = agg.window.hi
    worker_states = agg.q(
        """
        WITH w AS (
            SELECT hostname::VARCHAR AS hostname, captured_at, coalesce(alive, false) AS alive,
                   lag(coalesce(alive, false)) OVER h AS before,
                   max(captured_at) OVER (PARTITION BY hostname) AS seen
            FROM workers WINDOW h AS (PARTITION BY hostname ORDER BY captured_at)
        ), changes AS (
            SELECT hostname, captured_at AS since, alive, seen FROM w
            WHERE before IS NULL OR before <> alive
        )
        SELECT hostname, since, coalesce(lead(since) OVER (PARTITION BY hostname
               ORDER BY since), greatest(seen, $hi)) AS until, alive
        FROM changes ORDER BY hostname, since
        """,
        {"hi": int(hi.value // 1000) if hi is not None else 0},
    )
    for column in ("since", "until"):
        worker_states[column] = _ts(worker_states[column])
    heartbeats = agg.q(
        """SELECT hostname::VARCHAR AS hostname, last_heartbeat AS at FROM workers
        WHERE last_heartbeat IS NOT NULL GROUP BY ALL ORDER BY 1, 2"""
    )
    heartbeats["at"] = _ts(heartbeats["at"])
    restarts = agg.q(
        """SELECT hostname, captured_at AS at, pid FROM (
            SELECT hostname::VARCHAR AS hostname, captured_at, pid,
                   lag(pid) OVER (PARTITION BY hostname ORDER BY captured_at) AS before
            FROM workers) WHERE before IS NOT NULL AND pid IS NOT NULL AND pid <> before"""
    )
    restarts["at"] = _ts(restarts["at"])
    return worker_states, heartbeats, restarts


def _workers_shown(
    worker_tasks: pd.DataFrame, worker_states: pd.DataFrame, top: int
) -> tuple[list[str], list[str]]:
    """Every worker seen, and the ``top`` shown one by one (busiest first, then the idle)."""
    seen = set(worker_tasks.index) | set(worker_states["hostname"])
    workers_seen = sorted(seen - {"(none)"})
    top_workers = [
        *worker_tasks.index[:top],
        *sorted(set(workers_seen) - set(worker_tasks.index)),
    ][:top]
    return workers_seen, top_workers


def _busy(
    agg: _Aggregation, top_workers: list[str], concurrency: int | dict[str, int] | None
) -> pd.DataFrame:
    """Per interval and worker, the mean number of tasks running (with ``concurrency``:
    the fraction of the pool busy)."""
    lo, hi = agg.window.chart_lo, agg.window.chart_hi
    clip_lo = -(2**62) if lo is None else lo
    clip_hi = 2**62 if hi is None else hi
    busy = agg.over_time(
        f"""
        WITH r AS (SELECT key, s, e FROM (
                     SELECT worker AS key, greatest(started, {clip_lo}) AS s,
                            least(finished, {clip_hi}) AS e FROM g
                     WHERE worker IS NOT NULL AND started IS NOT NULL)
                   WHERE e > s),
        b AS (SELECT key, s, e, unnest(generate_series(s // $step, (e - 1) // $step)) AS k
              FROM r)
        SELECT k * $step AS bucket, key,
               sum(least(e, (k + 1) * $step) - greatest(s, k * $step)) / $step AS n
        FROM b GROUP BY ALL
        """,
        top_workers,
    ).astype("float64")
    if concurrency is None:
        return busy
    sizes = {
        w: (concurrency.get(w) if isinstance(concurrency, dict) else concurrency)
        for w in busy.columns
    }
    return cast(
        pd.DataFrame,
        busy.apply(lambda col: col / sizes[col.name] if sizes[col.name] else np.nan),
    )


def _loadavg(agg: _Aggregation, top_workers: list[str]) -> pd.DataFrame:
    """Per interval and worker, the mean 1-minute load average."""
    return agg.mean_over_time(
        "SELECT hostname::VARCHAR AS key, captured_at AS t, loadavg[1] AS v FROM workers "
        "WHERE loadavg IS NOT NULL AND len(loadavg) > 0",
        top_workers,
    )


def _in_flight(agg: _Aggregation) -> pd.DataFrame:
    """Per interval, the mean of the snapshots' pending/received/started/retry counts."""
    return agg.mean_over_time(
        " UNION ALL ".join(
            f"SELECT '{s}' AS key, captured_at AS t, tasks_{s} AS v FROM snaps" for s in IN_FLIGHT
        ),
        IN_FLIGHT,
    )


def _events(agg: _Aggregation) -> int:
    """Events the recorders received, from the growth of each one's ``event_count``."""
    row = agg.con.execute(
        """
        SELECT coalesce(sum(CASE WHEN d >= 0 THEN d
                                 WHEN d < 0 OR seq = 1 THEN event_count ELSE 0 END), 0)
        FROM (SELECT event_count, try_cast(split_part(snapshot_id, '-', 2) AS BIGINT) AS seq,
                     event_count - lag(event_count) OVER (
                         PARTITION BY split_part(snapshot_id, '-', 1)
                         ORDER BY captured_at) AS d
              FROM snaps WHERE event_count IS NOT NULL)
        """
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _slowest(agg: _Aggregation, n: int) -> pd.DataFrame:
    """The ``n`` tasks of the longest runtime."""
    slow = agg.q(
        f"""SELECT uuid, name, worker, state, sent, received, started, finished,
        broker, wait, runtime FROM g WHERE runtime IS NOT NULL
        ORDER BY runtime DESC, uuid LIMIT {int(n)}"""
    )
    for column in ("sent", "received", "started", "finished"):
        slow[column] = _ts(slow[column])
    return slow


def _intervals(lo: pd.Timestamp | None, hi: pd.Timestamp | None, freq: str) -> pd.DatetimeIndex:
    if lo is None or hi is None:
        return pd.DatetimeIndex([], tz="UTC", name="interval")
    return pd.date_range(lo.floor(freq), hi.floor(freq), freq=freq, name="interval")


def _failure_text(
    archive: Archive, start: pd.Timestamp | None, end: pd.Timestamp | None, name: str | None
) -> pa.Table:
    """Exception and traceback of the last FAILURE version of each task."""
    state = ds.field("state").cast(pa.string()) == "FAILURE"
    names = name_filter(name)
    text = _load(
        archive, "tasks", FAILURE_COLUMNS, start, end, state if names is None else state & names
    )
    return latest_arrow(text, "uuid").select(["uuid", "exception", "traceback"])


def _exceptions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Exceptions of the tasks whose final state is FAILURE, by name and exception type."""
    return (
        con.execute(
            r"""
        WITH x AS (SELECT uuid, exception, traceback FROM fails), f AS (
            SELECT coalesce(g.name, '(none)') AS name, g.failed,
                   x.exception AS message, x.traceback AS traceback,
                   coalesce(nullif(trim(regexp_extract(x.exception, '^([^(:]*)', 1)), ''),
                            '(unknown)') AS exception
            FROM g LEFT JOIN x USING (uuid) WHERE g.state = 'FAILURE'
        )
        SELECT exception, name, count(*) AS count, min(failed) AS first_seen,
               max(failed) AS last_seen,
               arg_min(struct_pack(m := message, t := traceback), failed) AS example
        FROM f GROUP BY exception, name ORDER BY count DESC, exception, name LIMIT 10
        """
        )
        .df()
        .pipe(_split_example)
    )


def _split_example(frame: pd.DataFrame) -> pd.DataFrame:
    examples = frame.pop("example")
    frame["message"] = [e["m"] if isinstance(e, dict) else None for e in examples]
    frame["traceback"] = [e["t"] if isinstance(e, dict) else None for e in examples]
    for column in ("first_seen", "last_seen"):
        frame[column] = _ts(frame[column])
    return frame


# -- charts -------------------------------------------------------------------------------
def _plt() -> types.ModuleType:
    matplotlib = _require("matplotlib")
    if "matplotlib.pyplot" not in sys.modules:  # no GUI backend for a command-line run
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STYLE = {
    "text.parse_math": False,  # a task name with $ signs is text, not TeX
    "svg.fonttype": "none",  # text stays text: small, sharp, searchable
    "svg.hashsalt": "archiver",  # the same data gives the same page
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titley": 1.0,  # a fixed place: placing it around the ticks measures all of them
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 8,
}


def _label(text: Any, width: int = 40) -> str:
    """A legend/tick label: shortened, and never hidden by matplotlib's leading ``_`` rule."""
    label = CONTROL.sub("?", str(text))
    if len(label) > width:
        label = label[: width - 1] + "…"
    return " " + label if label.startswith("_") else label


#: Height of one legend row at 8 pt, in inches.
LEGEND_ROW = 0.19


def _text_width(labels: Sequence[Any], size: float = 9) -> float:
    """Width (inches) of the longest of ``labels`` at ``size`` points, in the charts' font.

    Each chart sizes its margins from its labels with this: a layout engine measures
    every artist, and draws every figure twice, which cost half of the drawing time.
    """
    return max((_text_points(str(label), size) for label in labels), default=0) * 1.05 / 72


@functools.lru_cache(maxsize=4096)
def _text_points(text: str, size: float) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font")  # drawn as a box
        return text_to_path.get_text_width_height_descent(text, FontProperties(size=size), False)[0]


def _legend_cols(n: int, height: float) -> int:
    """Columns a legend of ``n`` entries needs beside axes ``height`` inches tall."""
    return max(1, -(-n // max(1, int(height / LEGEND_ROW))))


def _legend_width(labels: Sequence[Any], height: float) -> float:
    """Room (inches) right of axes ``height`` tall for the legend :func:`_legend` puts there."""
    if not len(labels):
        return 0.3
    return 0.2 + _legend_cols(len(labels), height) * (0.45 + _text_width(labels, 8))


def _figure(
    height: float = 3.2,
    width: float = 10.0,
    *,
    left: float = 0.9,
    right: float = 0.3,
    top: float = 0.45,
    bottom: float = 0.6,
    gaps: Sequence[float] = (),
    ratios: Sequence[float] = (1,),
) -> tuple[Figure, Any]:  # Any: one Axes, or a list of them (one per ratio)
    """A figure of ``len(ratios)`` axes side by side; margins and ``gaps`` in inches.

    No layout engine: each chart sizes its margins from its labels (:func:`_text_width`).
    """
    fig: Figure = _plt().figure(figsize=(width, height))
    free = width - left - right - sum(gaps)
    x, axes = left, []
    for i, ratio in enumerate(ratios):
        w = free * ratio / sum(ratios)
        axes.append(_axes(fig, x, bottom, w, height - top - bottom))
        x += w + (gaps[i] if i < len(gaps) else 0)
    return fig, (axes[0] if len(axes) == 1 else axes)


def _axes(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """New axes in ``fig`` at this place, in inches from its lower left corner."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, width / w, height / h))


def _plot_height(height: float, top: float = 0.45, bottom: float = 0.6) -> float:
    return height - top - bottom


def _styled(chart: Callable[[ReportData], Figure]) -> Callable[[ReportData], Figure]:
    """Draw ``chart`` with the report's :data:`STYLE` (the caller's rcParams stay as they were)."""

    @functools.wraps(chart)
    def draw(data: ReportData) -> Figure:
        with _plt().rc_context(STYLE):
            return chart(data)

    return draw


def _unit(seconds: float) -> tuple[str, float]:
    """The unit to show durations up to ``seconds`` in, and the factor from seconds."""
    if np.isnan(seconds) or seconds < 1:
        return "ms", 1e3
    if seconds >= 180:
        return "min", 1 / 60
    return "s", 1.0


def _time_axis(ax: Axes, data: ReportData) -> None:
    import matplotlib.dates as mdates

    inches = ax.get_position().width * cast("Figure", ax.figure).get_figwidth()
    locator = mdates.AutoDateLocator(minticks=3, maxticks=max(4, min(10, int(inches / 0.7))))
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator, show_offset=False)
    ax.xaxis.set_major_formatter(formatter)
    lo = data.start if data.start is not None else data.first
    hi = data.end if data.end is not None else data.last
    label = "time (UTC)"
    if lo is not None and hi is not None:
        hi = max(hi, lo + data.step)
        ax.set_xlim(_naive(lo), _naive(hi))
        days = sorted({f"{lo:%Y-%m-%d}", f"{hi:%Y-%m-%d}"})
        label = f"time (UTC), {' to '.join(days)}"
    ax.set_xlabel(label)


def _naive(values: Any) -> Any:
    """UTC times as naive datetimes for matplotlib (its axis is labelled UTC)."""
    if isinstance(values, pd.Timestamp):
        return values.tz_convert("UTC").tz_localize(None).to_pydatetime()
    return pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)


def _legend(
    ax: Axes, handles: Sequence[Artist] | None = None, labels: Sequence[str] | None = None
) -> None:
    """The legend right of ``ax`` (in the room :func:`_legend_width` made), never over data."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        height = ax.get_position().height * cast("Figure", ax.figure).get_figheight()
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            ncols=_legend_cols(len(handles), height),
        )


def _shared_legend(axes: Sequence[Any]) -> None:
    """One legend for ``axes`` (their entries, once each), right of the last one."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    _legend(axes[-1], list(entries.values()), list(entries))


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this window", ha="center", va="center", transform=ax.transAxes)
    ax.set_yticks([])


def _nonzero(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its all-zero columns."""
    return frame.loc[:, frame.fillna(0).sum() > 0] if len(frame.columns) else frame


def _stacked(ax: Axes, frame: pd.DataFrame, data: ReportData, what: str, ylabel: str) -> None:
    """``frame``'s columns stacked per interval: one filled step outline per column."""
    import matplotlib.dates as mdates

    if frame.empty or not len(frame.columns):
        _empty(ax, what)
    else:
        grid = pd.date_range(frame.index[0], frame.index[-1], freq=data.step)
        frame = frame.reindex(grid.union(cast(pd.DatetimeIndex, frame.index)), fill_value=0)
        x = mdates.date2num(_naive(frame.index))
        edges = np.append(x, x[-1] + data.step / pd.Timedelta(days=1))
        ax.xaxis_date()
        bottom = np.zeros(len(frame))
        for column, color in zip(frame.columns, _colors(len(frame.columns))):
            top = bottom + frame[column].fillna(0).to_numpy(dtype="float64")
            ax.stairs(
                top, edges, baseline=bottom, fill=True, color=color, lw=0, label=_label(column)
            )
            bottom = top
        ax.set_ylim(0, max(1.0, float(bottom.max())) * 1.05)
        _legend(ax)
    ax.set_ylabel(ylabel)
    _time_axis(ax, data)


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _lines(
    ax: Axes,
    frame: pd.DataFrame,
    data: ReportData,
    what: str,
    ylabel: str,
    *,
    legend: bool = True,
    **kw: Any,
) -> None:
    frame = frame.dropna(axis=1, how="all")
    if frame.empty or not len(frame.columns):
        _empty(ax, what)
    else:
        x = _naive(frame.index)
        colors = kw.pop("colors", None) or _colors(len(frame.columns))
        for column, color in zip(frame.columns, colors):
            ax.plot(
                x,
                frame[column].to_numpy(dtype="float64"),
                label=_label(column),
                color=color,
                marker="." if len(frame) < 3 else None,
                **kw,
            )
        if legend:
            _legend(ax)
        ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    _time_axis(ax, data)


@_styled
def chart_throughput(data: ReportData) -> Figure:
    """Tasks finished per interval, per task name (top N, the rest as "other")."""
    frame = _nonzero(data.throughput)
    fig, ax = _figure(right=_legend_width([_label(c) for c in frame.columns], _plot_height(3.2)))
    ax.set_title(f"Tasks finished per {data.freq}, by task name")
    _stacked(ax, frame, data, "finished tasks", f"tasks / {data.freq}")
    return fig


OUTCOME_COLORS = {
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "retried": "#ff7f0e",
    "revoked": "#7f7f7f",
}


@_styled
def chart_outcomes(data: ReportData) -> Figure:
    """Succeeded, failed, retried and revoked per interval."""
    frame = _nonzero(data.outcomes)
    keep = [c for c in OUTCOME_COLORS if c in frame.columns]
    fig, ax = _figure(right=_legend_width(keep, _plot_height(3.2)))
    ax.set_title(f"Succeeded, failed, retried and revoked per {data.freq}")
    _lines(
        ax,
        frame[keep],
        data,
        "finished tasks",
        f"tasks / {data.freq}",
        colors=[OUTCOME_COLORS[c] for c in keep],
        drawstyle="steps-post",
    )
    return fig


@_styled
def chart_latency(data: ReportData) -> Figure:
    """Latency percentiles per task name: broker wait, queue wait and runtime side by side."""
    import matplotlib.ticker as mticker

    frame = data.by_name
    height = max(2.6, 0.9 + 0.32 * len(frame) * max(1, len(data.percentiles)) / 2)
    names = [_label(n, 28) for n in frame.index]
    pcts = [_pct(p) for p in data.percentiles]
    fig, axes = _figure(
        height=height,
        left=_text_width(names) + 0.25,
        right=_legend_width(pcts, _plot_height(height, top=0.75)),
        top=0.75,
        gaps=(0.3, 0.3),
        ratios=(1, 1, 1),
    )
    fig.suptitle(
        "Latency percentiles per task name", x=0.01, y=1 - 0.1 / height, ha="left", weight="bold"
    )
    y = np.arange(len(frame))
    bar = 0.8 / len(data.percentiles)
    for ax, (metric, title) in zip(axes, LATENCIES.items()):
        columns = [f"{metric}_{p}" for p in pcts]
        values = frame[columns].astype("float64") if len(frame) else pd.DataFrame()
        ax.set_title(title, fontsize=9)
        if values.empty or values.isna().all().all():
            _empty(ax, "timings")
            ax.set_xticks([])
            continue
        unit, factor = _unit(float(np.nanmax(values.to_numpy())))
        positive = values.to_numpy()[values.to_numpy() > 0]
        log = len(positive) and positive.max() / positive.min() > 100
        for i, column in enumerate(columns):
            widths = values[column].fillna(0).to_numpy() * factor
            ax.add_patch(_boxes(0, widths, y + (i - 0.5) * bar, bar, f"C{i}", pcts[i]))
        ax.set_xlim(0, np.nanmax(values.to_numpy()) * factor * 1.05)
        if log:  # one slow name must not flatten the others' bars
            ax.set_xscale("log", nonpositive="clip")
            ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
            ax.set_xlim(left=positive.min() * factor / 2)
        ax.set_yticks(y + bar * (len(columns) - 1) / 2)
        ax.set_yticklabels(names if ax is axes[0] else [])
        ax.set_ylim(len(frame) - 0.1 - bar / 2, -0.1 - bar / 2)  # first name on top
        ax.set_xlabel(f"{unit} (log scale)" if log else unit)
        ax.grid(axis="y", visible=False)
    _shared_legend(axes)
    return fig


@_styled
def chart_latency_trend(data: ReportData) -> Figure:
    """Latency percentiles over time (all task names together)."""
    pcts = [_pct(p) for p in data.percentiles]
    fig, axes = _figure(
        height=3.0,
        right=_legend_width(pcts, _plot_height(3.0, top=0.75)),
        top=0.75,
        gaps=(0.85, 0.85),
        ratios=(1, 1, 1),
    )
    fig.suptitle(
        f"Latency percentiles per {data.freq}, all task names",
        x=0.01,
        y=1 - 0.1 / 3.0,
        ha="left",
        weight="bold",
    )
    for ax, (metric, title) in zip(axes, LATENCIES.items()):
        columns = [f"{metric}_{p}" for p in pcts]
        frame = data.latency_trend.reindex(columns=columns)
        peak = float(np.nanmax(frame.to_numpy())) if frame.notna().any().any() else np.nan
        unit, factor = _unit(peak)
        frame = (frame * factor).rename(columns=lambda c: c.split("_")[-1])
        ax.set_title(title, fontsize=9)
        _lines(ax, frame, data, "timings", unit, legend=False)
    _shared_legend(axes)
    return fig


@_styled
def chart_failures(data: ReportData) -> Figure:
    """Failures per interval and task name (top), per worker (below)."""
    frame = _nonzero(data.failures)
    workers = data.failures_by_worker.head(data.top)
    upper, lower = 3.2, max(1.6, 1.0 + 0.3 * len(workers))
    fig: Figure = _plt().figure(figsize=(10.0, upper + lower))
    legend = _legend_width([_label(c) for c in frame.columns], _plot_height(upper))
    over_time = _axes(fig, 0.9, lower + 0.6, 10.0 - 0.9 - legend, _plot_height(upper))
    over_time.set_title(f"Failures per {data.freq}, by task name")
    _stacked(over_time, frame, data, "failures", f"failures / {data.freq}")
    left = _text_width([_label(w, 28) for w in workers.index]) + 0.3
    per_worker = _axes(fig, left, 0.55, min(5.0, 9.7 - left), lower - 0.45 - 0.55)
    per_worker.set_title("Failures per worker")
    _hbars(per_worker, workers, "failures", "failed tasks")
    return fig


def _hbars(
    ax: Axes, series: pd.Series[Any], what: str, xlabel: str, color: str = "#d62728"
) -> None:
    if series.empty:
        _empty(ax, what)
    else:
        y = np.arange(len(series))
        ax.barh(y, series.to_numpy(dtype="float64"), color=color)
        ax.set_yticks(y)
        ax.set_yticklabels([_label(v, 28) for v in series.index])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    ax.set_xlabel(xlabel)


@_styled
def chart_workers(data: ReportData) -> Figure:
    """Each worker online (green) or offline (grey) over time, heartbeats and restarts."""
    import matplotlib.dates as mdates
    from matplotlib.lines import Line2D

    hosts = data.workers_seen[: max(data.top, 12)]
    height = max(1.8, 1.0 + 0.38 * len(hosts))
    states = data.worker_states[data.worker_states["hostname"].isin(hosts)]
    beats = data.heartbeats[data.heartbeats["hostname"].isin(hosts)]
    shown = beats.groupby("hostname").size().between(1, MAX_HEARTBEAT_TICKS)
    restarts = data.restarts[data.restarts["hostname"].isin(hosts)]
    legend = {
        "online": Line2D([], [], color="#2ca02c", lw=6),
        "offline": Line2D([], [], color="#bbbbbb", lw=6),
        "heartbeat": Line2D([], [], color="#1f5f1f", marker="|", ls="none", markersize=6),
        "restart (new pid)": Line2D([], [], color="#9467bd", marker="^", ls="none"),
    }
    present = {
        "online": states["alive"].any(),
        "offline": (~states["alive"].astype(bool)).any(),
        "heartbeat": shown.any(),
        "restart (new pid)": len(restarts) > 0,
    }
    labels = [k for k, v in present.items() if v]
    fig, ax = _figure(
        height=height,
        left=_text_width([_label(h, 28) for h in hosts]) + 0.5,
        right=_legend_width(labels, _plot_height(height)),
    )
    ax.set_title("Workers online and offline (ticks: heartbeats, ▲ restarts)")
    if not hosts:
        _empty(ax, "workers")
    ax.xaxis_date()
    for i, host in enumerate(hosts):
        runs = states[states["hostname"] == host]
        for alive, color in ((True, "#2ca02c"), (False, "#bbbbbb")):
            part = runs[runs["alive"] == alive]
            if len(part):
                start = mdates.date2num(_naive(part["since"]))
                width = (part["until"] - part["since"]).dt.total_seconds().to_numpy() / 86400
                # add_artist: add_patch would walk the path's segments for the data limits
                ax.add_artist(_boxes(start, np.maximum(width, 1e-7), i - 0.3, 0.6, color))
        if shown.get(host, False):  # one path of short vertical strokes per worker
            at = mdates.date2num(_naive(beats.loc[beats["hostname"] == host, "at"]))
            xs = np.column_stack([at, at, np.full(len(at), np.nan)]).ravel()
            ys = np.tile([i - 0.44, i - 0.32, np.nan], len(at))
            ax.plot(xs, ys, color="#1f5f1f", lw=0.8)
        at = restarts.loc[restarts["hostname"] == host, "at"]
        if len(at):
            ax.plot(_naive(at), np.full(len(at), i), "^", color="#9467bd", markersize=7)
    ax.set_yticks(range(len(hosts)))
    ax.set_yticklabels([_label(h, 28) for h in hosts])
    ax.set_ylim(len(hosts) - 0.5, -0.6)
    ax.grid(axis="y", visible=False)
    ax.set_ylabel("worker")
    _legend(ax, [legend[k] for k in labels], labels)
    _time_axis(ax, data)
    return fig


def _boxes(
    x: Any, width: Any, y: Any, height: float, color: str, label: str | None = None
) -> PathPatch:
    """Rectangles ``[x, x + width] x [y, y + height]`` as one patch: one SVG path, not one
    element per bar (bars are the slowest artists to draw)."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    x0, width, y0 = np.broadcast_arrays(*(np.asarray(v, dtype="float64") for v in (x, width, y)))
    x1, y1 = x0 + width, y0 + height
    vertices = np.stack([x0, y0, x1, y0, x1, y1, x0, y1, x0, y0], axis=1).reshape(-1, 2)
    codes = np.tile(
        [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY],
        len(x0),
    )
    return PathPatch(MplPath(vertices, codes), facecolor=color, linewidth=0, label=label)


@_styled
def chart_worker_load(data: ReportData) -> Figure:
    """Tasks running (or utilisation, top) and load average (below) per worker over time."""
    busy = data.busy.dropna(axis=1, how="all")
    loadavg = data.loadavg.dropna(axis=1, how="all")
    hosts = list(dict.fromkeys([*busy.columns, *loadavg.columns]))
    colors = dict(zip(hosts, _colors(len(hosts))))
    panel = 2.9
    fig: Figure = _plt().figure(figsize=(10.0, 2 * panel))
    width = 10.0 - 0.9 - _legend_width([_label(h) for h in hosts], _plot_height(panel))
    upper = _axes(fig, 0.9, panel + 0.6, width, _plot_height(panel))
    lower = _axes(fig, 0.9, 0.6, width, _plot_height(panel))
    if data.utilisation:
        upper.set_title(f"Utilisation per worker (mean per {data.freq})")
        busy, ylabel = busy * 100, "% of pool busy"
    else:
        upper.set_title(f"Tasks running per worker (mean per {data.freq})")
        ylabel = "tasks running"
    _lines(upper, busy, data, "running tasks", ylabel, legend=False,
           colors=[colors[h] for h in busy.columns])  # fmt: skip
    lower.set_title(f"Load average (1 min, mean per {data.freq})")
    _lines(lower, loadavg, data, "load averages", "load average", legend=False,
           colors=[colors[h] for h in loadavg.columns])  # fmt: skip
    _shared_legend([lower, upper])
    return fig


@_styled
def chart_worker_tasks(data: ReportData) -> Figure:
    """Tasks processed (succeeded or failed) per worker."""
    series = (
        data.worker_tasks["processed"].head(max(data.top, 12))
        if len(data.worker_tasks)
        else (pd.Series(dtype="float64"))
    )
    labels = [_label(v, 28) for v in series.index]
    fig, ax = _figure(
        height=max(1.8, 0.9 + 0.3 * len(series)), width=7, left=_text_width(labels) + 0.5
    )
    ax.set_title("Tasks processed per worker")
    _hbars(ax, series, "processed tasks", "tasks (succeeded or failed)", color="#1f77b4")
    ax.set_ylabel("worker")
    return fig


@_styled
def chart_in_flight(data: ReportData) -> Figure:
    """Tasks in flight (pending, received, started, waiting to retry) from the snapshots."""
    frame = _nonzero(data.in_flight)
    fig, ax = _figure(right=_legend_width(list(frame.columns), _plot_height(3.2)))
    ax.set_title(f"Tasks in flight (mean of the snapshots per {data.freq})")
    if frame.empty or not len(frame.columns):
        _empty(ax, "tasks in flight")
        ax.set_ylabel("tasks")
        _time_axis(ax, data)
        return fig
    x = _naive(frame.index)
    ax.stackplot(
        x,
        *(frame[c].fillna(0).to_numpy() for c in frame.columns),
        labels=list(frame.columns),
        step="post",
        alpha=0.85,
    )
    _legend(ax)
    ax.set_ylabel("tasks")
    _time_axis(ax, data)
    return fig


#: The report's sections: (heading, chart functions).
SECTIONS: list[tuple[str, list[Callable[[ReportData], Figure]]]] = [
    ("Throughput", [chart_throughput, chart_outcomes]),
    ("Latency", [chart_latency, chart_latency_trend]),
    ("Failures", [chart_failures]),
    ("Workers", [chart_workers, chart_worker_tasks, chart_worker_load]),
    ("In flight", [chart_in_flight]),
]


def svg(fig: Figure, prefix: str) -> str:
    """``fig`` as an inline ``<svg>`` element; its ids are prefixed so several can share a page."""
    plt = _plt()
    buf = io.StringIO()
    with plt.rc_context(STYLE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font")  # shown as a box
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'(href|xlink:href)="#([^"]+)"', rf'\1="#{prefix}-\2"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    return text.replace("<svg", '<svg role="img"', 1)


def render_charts(data: ReportData, jobs: int = 2) -> list[str]:
    """Every chart of :data:`SECTIONS` as inline SVG, drawn by ``jobs`` processes (at most 2).

    Drawing is the report's slowest step and matplotlib holds the GIL, so a forked child
    (it shares ``data`` with no copy) draws charts while this process draws the others,
    taking them from a shared counter. Without ``fork``, or if the child fails, this
    process draws them all.
    """
    enabled = gc.isenabled()
    # matplotlib's many short-lived objects set off collections that walk every object of
    # the process (in the forked child, copying the pages they sit in): 15-20% of drawing.
    gc.disable()
    try:
        return _render_charts(data, jobs)
    finally:
        if enabled:
            gc.enable()


def _render_charts(data: ReportData, jobs: int) -> list[str]:
    import multiprocessing

    charts = [chart for _, group in SECTIONS for chart in group]
    out: dict[int, str] = {}

    def draw(i: int) -> str:
        return svg(charts[i](data), f"c{i + 1}")

    if jobs < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [draw(i) for i in range(len(charts))]
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)
    receiver, sender = ctx.Pipe(duplex=False)

    def take() -> int:
        with counter.get_lock():
            counter.value += 1
            return int(counter.value) - 1

    def child() -> None:
        done = {}
        try:
            while (i := take()) < len(charts):
                done[i] = draw(i)
        finally:  # what it drew, even if it failed (the rest is drawn again below)
            sender.send(done)

    proc = ctx.Process(target=child, daemon=True)
    try:
        with warnings.catch_warnings():  # Python 3.12+ warns of fork with threads (Arrow's)
            warnings.simplefilter("ignore", DeprecationWarning)
            proc.start()
    except OSError:  # no memory or process left for a child: draw them all here
        receiver.close()
        sender.close()
        return [draw(i) for i in range(len(charts))]
    sender.close()
    try:
        while (i := take()) < len(charts):
            out[i] = draw(i)
        with contextlib.suppress(EOFError):  # EOF: the child died
            out.update(receiver.recv())
    finally:
        receiver.close()
        proc.join()
    return [out[i] if i in out else draw(i) for i in range(len(charts))]


# -- HTML ---------------------------------------------------------------------------------
CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:20px}
figure.chart{margin:12px 0}figure.chart svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top;
white-space:nowrap}.wide{overflow-x:auto}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{max-width:1000px;max-height:240px;overflow:auto;background:#f6f6f6;padding:6px;font-size:12px}
details{margin:2px 0}.cols{display:flex;gap:32px;flex-wrap:wrap}
"""


def _fmt(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, (float, np.floating)):
        return f"{value:,.4g}" if abs(float(value)) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


def table_html(frame: pd.DataFrame, *, index: bool = True) -> str:
    """``frame`` as an HTML table; every cell escaped."""
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float, np.integer, np.floating))
            cls = ' class="n"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _window(data: ReportData) -> str:
    lo = data.start if data.start is not None else data.first
    hi = data.end if data.end is not None else data.last
    if lo is None:
        return "an empty window"
    return f"{_fmt(lo)} to {_fmt(hi)} UTC"


def _summary(data: ReportData) -> str:
    busiest = data.per_name["tasks"].head(5)
    slowest_names = (
        data.per_name[f"runtime_{_pct(data.percentiles[-1])}"].dropna().nlargest(5)
        if len(data.per_name)
        else pd.Series(dtype="float64")
    )
    cards = [
        ("tasks", data.tasks),
        ("events", data.events),
        ("workers seen", len(data.workers_seen)),
        *((str(s).lower(), int(n)) for s, n in data.states.items()),
    ]
    card_html = "".join(
        f'<div class="card"><b>{_fmt(v)}</b>{html.escape(k)}</div>' for k, v in cards
    )
    p = _pct(data.percentiles[-1])
    return (
        f'<div class="cards">{card_html}</div><div class="cols">'
        f"<div><h3>Busiest task names</h3>{table_html(busiest.rename('tasks').to_frame())}</div>"
        f"<div><h3>Slowest task names ({p} runtime, s)</h3>"
        f"{table_html(slowest_names.rename(f'{p} runtime (s)').to_frame())}</div></div>"
    )


def _exceptions_html(data: ReportData) -> str:
    if data.exceptions.empty:
        return "<p>No failed task in this window.</p>"
    rows = []
    for row in data.exceptions.itertuples(index=False):
        example = html.escape(str(row.traceback or row.message or ""))
        rows.append(
            "<tr>"
            f"<td>{html.escape(str(row.exception))}</td><td>{html.escape(str(row.name))}</td>"
            f'<td class="n">{row.count:,}</td><td>{_fmt(row.first_seen)}</td>'
            f"<td>{_fmt(row.last_seen)}</td><td><details><summary>"
            f"{html.escape(_label(row.message or '', 80))}</summary><pre>{example}</pre>"
            "</details></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "exception",
            "task name",
            "count",
            "first seen (UTC)",
            "last seen (UTC)",
            "example (click for the traceback)",
        )
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_html(data: ReportData, *, title: str | None = None, jobs: int = 2) -> str:
    """The report page: summary, charts (inline SVG), tables. No script, no external URL.

    ``jobs``: processes drawing the charts (:func:`render_charts`)."""
    title = title or "Celery cluster report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(_window(data))} · archive {html.escape(data.archive)}'
        + (f" · task names matching {html.escape(data.name)}" if data.name else "")
        + f" · intervals of {html.escape(data.freq)} · all times UTC</p>",
        "<h2>Summary</h2>",
        _summary(data),
    ]
    drawn = iter(render_charts(data, jobs))
    for heading, charts in SECTIONS:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for chart in charts:
            parts.append(f'<figure class="chart" id="{chart.__name__}">{next(drawn)}</figure>')
        if heading == "Latency":
            columns = [c for c in data.by_name.columns if c != "revoked"]
            parts.append("<h3>Per task name (seconds)</h3>" + table_html(data.by_name[columns]))
        if heading == "Failures":
            parts.append("<h3>Top exceptions</h3>" + _exceptions_html(data))
    parts.append("<h2>The slowest tasks</h2>")
    parts.append(
        table_html(data.slowest.rename(columns=SECONDS), index=False)
        if len(data.slowest)
        else "<p>No finished task.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def report(
    archive: Archive | str | os.PathLike[str],
    start: Any = None,
    end: Any = None,
    *,
    output: str | os.PathLike[str] | None = None,
    title: str | None = None,
    name: str | None = None,
    top: int = 8,
    percentiles: Sequence[float] = (0.5, 0.9, 0.99),
    freq: str | None = None,
    slowest: int = 10,
    concurrency: int | dict[str, int] | None = None,
) -> str:
    """The HTML report of ``[start, end)``; written to ``output`` too when given.

    The other arguments are :func:`gather`'s. Also callable as ``archiver.report(...)``.
    """
    if output is not None and not os.path.isdir(os.path.dirname(os.fspath(output)) or "."):
        raise ArchiverError(f"cannot write the report to {output}: no such directory")
    data = gather(
        archive,
        start,
        end,
        name=name,
        top=top,
        percentiles=percentiles,
        freq=freq,
        slowest=slowest,
        concurrency=concurrency,
    )
    page = render_html(data, title=title)
    if output is not None:
        tmp = f"{os.fspath(output)}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(page)
            os.replace(tmp, output)
        except OSError as exc:
            raise ArchiverError(f"cannot write the report to {output}: {exc.strerror}") from exc
    return page


class _CallableModule(types.ModuleType):
    """``archiver.report(archive, ...)`` calls :func:`report`; the module keeps its names."""

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
