"""Answers to what operators ask, as small functions over the archive's DataFrames.

Every function takes the pandas DataFrames that :meth:`archiver.Archive.latest` and
:meth:`archiver.Archive.load` return and gives back a new DataFrame ready to print or
plot. Functions over tasks accept either form: one row per task (``latest("tasks")``)
or every recorded version (``load("tasks")``), which they reduce to the last version
of each task first. Only the columns a function uses need to be loaded.

=========================  ==============================================================
function                   question
=========================  ==============================================================
:func:`throughput`         how many tasks finished per interval, per task name?
:func:`latency`            queue wait (received -> started) and runtime percentiles per name
:func:`failure_rates`      how often does each task fail, retry, get revoked or rejected?
:func:`top_exceptions`     which exceptions, in which tasks, how often?
:func:`slowest`            the slowest tasks (by runtime, queue wait or total time)
:func:`worker_utilisation` how busy was each worker over time (from the tasks' run times)?
:func:`worker_activity`    what did each worker report over time (workers table)?
:func:`cluster_timeline`   the cluster over time: tasks per state, workers (snapshots table)
=========================  ==============================================================

Intervals (``freq``) are pandas offsets such as ``"1min"``, ``"15min"``, ``"1h"``; the
default picks a round interval that gives about 40 bins over the data's time span. Frames
indexed by interval carry it in ``.attrs["freq"]``.
Times are tz-aware UTC, durations are float seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "auto_freq",
    "cluster_timeline",
    "failure_rates",
    "finished_at",
    "latency",
    "one_row_per_task",
    "queue_wait",
    "slowest",
    "throughput",
    "top_exceptions",
    "worker_activity",
    "worker_utilisation",
]

#: Candidate intervals for :func:`auto_freq`, smallest first.
NICE_FREQS = (
    "1s",
    "2s",
    "5s",
    "10s",
    "15s",
    "30s",
    "1min",
    "2min",
    "5min",
    "10min",
    "15min",
    "30min",
    "1h",
    "2h",
    "3h",
    "6h",
    "12h",
    "1D",
    "2D",
    "7D",
)
FINISHED_STATES = ("SUCCESS", "FAILURE")
#: Most intervals a result lists without gaps (beyond: only the intervals with data).
MAX_INTERVALS = 200_000
ALL = "(all)"


# -- helpers ------------------------------------------------------------------------------
def _need(df: pd.DataFrame, *columns: str, fn: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(
            f"{fn}() needs the column(s) {', '.join(missing)}; load them "
            f"(columns=[...]) or pass the whole table"
        )


def auto_freq(
    times: pd.Series | pd.DatetimeIndex | Sequence[Any], bins: int = 40, *, minimum: float = 0
) -> str:
    """The smallest round interval ("1s", "5min", "1h"...) that cuts ``times`` into <= ``bins``.

    ``minimum``: the interval is at least this many seconds.
    """
    times = pd.to_datetime(pd.Series(times), utc=True).dropna()
    span = (times.max() - times.min()).total_seconds() if len(times) else 0.0
    for freq in NICE_FREQS:
        seconds = pd.Timedelta(freq).total_seconds()
        if seconds >= minimum and span / seconds <= bins:
            return freq
    return NICE_FREQS[-1]


def one_row_per_task(tasks: pd.DataFrame) -> pd.DataFrame:
    """The last recorded version of each task (a ``load()`` frame becomes a ``latest()`` one).

    Rows are kept in their order; ``captured_at`` (if present) decides which version is last.
    """
    if "uuid" not in tasks.columns or not tasks["uuid"].duplicated().any():
        return tasks
    ordered = tasks
    if "captured_at" in tasks.columns:
        ordered = tasks.sort_values("captured_at", kind="stable")
    return ordered.drop_duplicates("uuid", keep="last").sort_index()


def _group_key(df: pd.DataFrame, by: str | None) -> pd.Series:
    if by is None:
        return pd.Series(ALL, index=df.index, name="all")
    key = df[by]
    if isinstance(key.dtype, pd.CategoricalDtype):
        key = key.astype(object)
    return key.where(key.notna(), "(none)")


def _seconds(delta: pd.Series) -> pd.Series:
    seconds: pd.Series = delta.dt.total_seconds().astype("float64")
    return seconds


def _utc(series: pd.Series) -> pd.Series:
    utc: pd.Series = pd.to_datetime(series, utc=True)
    return utc


def _intervals(first: pd.Timestamp, last: pd.Timestamp, freq: str) -> int:
    """How many intervals of ``freq`` from ``first`` to ``last`` (0 for calendar offsets)."""
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))  # type: ignore[arg-type]
    except (ValueError, TypeError):  # a month or a year: not a fixed length
        return 0
    return int((last - first) // step) + 1 if step > pd.Timedelta(0) else 0


def _timeline(index: pd.Index, freq: str, fn: str) -> pd.DatetimeIndex:
    """Every interval from the first to the last value of ``index`` (no gaps).

    Beyond :data:`MAX_INTERVALS` (a task dated in the year 9999, say) only the intervals
    in ``index`` are listed, with a warning: the gaps would not fit in memory.
    """
    if len(index) == 0:
        return pd.DatetimeIndex([], tz="UTC", name="interval")
    first, last = index.min(), index.max()
    n = _intervals(first, last, freq)
    if n > MAX_INTERVALS:
        warnings.warn(
            f"{fn}(): the times span {first} to {last}, {n:,} intervals of {freq}: "
            f"only the intervals that hold data are listed",
            stacklevel=3,
        )
        return pd.DatetimeIndex(index.unique().sort_values(), name="interval")
    return pd.date_range(first, last, freq=freq, name="interval")


def finished_at(tasks: pd.DataFrame) -> pd.Series:
    """When each task finished: ``succeeded``, else ``failed`` (NaT while not finished)."""
    out = pd.Series(pd.NaT, index=tasks.index, dtype="datetime64[us, UTC]")
    for column in ("failed", "succeeded"):
        if column in tasks.columns:
            values = _utc(tasks[column])
            out = values.where(values.notna(), out)
    return out


# -- tasks --------------------------------------------------------------------------------
def throughput(
    tasks: pd.DataFrame,
    freq: str | None = None,
    *,
    by: str | None = "name",
    states: Sequence[str] = FINISHED_STATES,
) -> pd.DataFrame:
    """Tasks finished per interval, one column per task name.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``, ``state``,
            ``succeeded``/``failed`` and ``by``).
        freq: the interval ("1min", "1h"...); default :func:`auto_freq`.
        by: the column to split by (``"name"``, ``"worker"``) or None for one total.
        states: the final states that count as finished (default SUCCESS and FAILURE).

    Returns:
        A DataFrame indexed by interval start (UTC, no gaps), one int column per value
        of ``by``, sorted by total count. Divide by the interval's seconds for a rate.
    """
    _need(tasks, "state", fn="throughput")
    tasks = one_row_per_task(tasks)
    done = finished_at(tasks)
    mask = tasks["state"].astype(object).isin(list(states)) & done.notna()
    done = done[mask]
    freq = freq or auto_freq(done)
    key = _group_key(tasks.loc[mask], by)
    counts = done.groupby([done.dt.floor(freq).rename("interval"), key]).size()
    table = counts.unstack(fill_value=0) if len(counts) else pd.DataFrame()
    table = table.reindex(_timeline(table.index, freq, "throughput"), fill_value=0)
    if len(table.columns):
        table = table[table.sum().sort_values(ascending=False, kind="stable").index]
    table.columns = pd.Index([str(c) for c in table.columns], name=by or "all")
    table = table.astype("int64")
    table.attrs["freq"] = freq
    return table


def queue_wait(tasks: pd.DataFrame) -> pd.Series:
    """Seconds from ``received`` (by a worker) to ``started``, per task (NaN if unknown)."""
    _need(tasks, "received", "started", fn="queue_wait")
    return _seconds(_utc(tasks["started"]) - _utc(tasks["received"])).rename("wait")


def _runtime(tasks: pd.DataFrame) -> pd.Series:
    """The ``runtime`` Celery reports, else finished minus started, in seconds."""
    measured = pd.Series(np.nan, index=tasks.index)
    if "started" in tasks.columns:
        measured = _seconds(finished_at(tasks) - _utc(tasks["started"]))
    if "runtime" in tasks.columns:
        reported = tasks["runtime"].astype("float64")
        measured = reported.where(reported.notna(), measured)
    return measured.rename("runtime")


def _pct(q: float) -> str:
    return f"p{q * 100:g}"


def latency(
    tasks: pd.DataFrame,
    percentiles: Sequence[float] = (0.5, 0.9, 0.99),
    *,
    by: str | None = "name",
) -> pd.DataFrame:
    """Queue wait (received -> started) and runtime percentiles per task name, in seconds.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``,
            ``received``, ``started``, and ``runtime`` or ``succeeded``/``failed``).
        percentiles: fractions in [0, 1].
        by: the column to split by, or None for one row over all tasks.

    Returns:
        One row per value of ``by`` (busiest first) with ``count`` (tasks that
        started), ``wait_p50``, ``wait_p90``... and ``runtime_p50``... columns. For a
        retried task, the figures are those of its last attempt.
    """
    tasks = one_row_per_task(tasks)
    frame = pd.DataFrame(
        {"wait": queue_wait(tasks), "runtime": _runtime(tasks), "key": _group_key(tasks, by)}
    )
    frame = frame[frame["wait"].notna() | frame["runtime"].notna()]
    grouped = frame.groupby("key", sort=False)
    out = pd.DataFrame({"count": grouped.size()})
    for metric in ("wait", "runtime"):
        for q in percentiles:
            out[f"{metric}_{_pct(q)}"] = grouped[metric].quantile(q)
    out.index.name = by or "all"
    return out.sort_values("count", ascending=False, kind="stable")


def _retried_uuids(tasks: pd.DataFrame) -> set[str]:
    if "state" not in tasks.columns or "uuid" not in tasks.columns:
        return set()
    return set(tasks.loc[tasks["state"].astype(object) == "RETRY", "uuid"])


def failure_rates(tasks: pd.DataFrame, *, by: str | None = "name") -> pd.DataFrame:
    """How often tasks fail and retry, per task name.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``, ``state``;
            ``retried``/``retries`` improve retry detection).
        by: the column to split by, or None for one row over all tasks.

    Returns:
        One row per value of ``by`` with counts ``tasks``, ``succeeded``, ``failed``,
        ``revoked``, ``rejected``, ``retried`` (tasks retried at least once, whatever
        their outcome) and the rates ``failure_rate`` = failed / (succeeded + failed)
        and ``retry_rate`` = retried / tasks (NaN when undefined). Sorted by failures.
    """
    _need(tasks, "state", fn="failure_rates")
    retry_seen = _retried_uuids(tasks)
    tasks = one_row_per_task(tasks)
    state = tasks["state"].astype(object)
    retried = pd.Series(False, index=tasks.index)
    if "uuid" in tasks.columns and retry_seen:
        retried |= tasks["uuid"].isin(retry_seen)
    if "retried" in tasks.columns:
        retried |= tasks["retried"].notna()
    if "retries" in tasks.columns:
        retried |= tasks["retries"].fillna(0).astype("int64") > 0
    retried |= state == "RETRY"
    frame = pd.DataFrame(
        {
            "tasks": 1,
            "succeeded": (state == "SUCCESS").astype(int),
            "failed": (state == "FAILURE").astype(int),
            "revoked": (state == "REVOKED").astype(int),
            "rejected": (state == "REJECTED").astype(int),
            "retried": retried.astype(int),
            "key": _group_key(tasks, by),
        }
    )
    out = frame.groupby("key", sort=False).sum()
    finished = out["succeeded"] + out["failed"]
    out["failure_rate"] = (out["failed"] / finished.where(finished > 0)).astype("float64")
    out["retry_rate"] = (out["retried"] / out["tasks"]).astype("float64")
    out.index.name = by or "all"
    return out.sort_values(["failed", "tasks"], ascending=False, kind="stable")


def exception_type(text: Any) -> str | None:
    """``"ValueError('bad')"`` -> ``"ValueError"`` (the text before ``(`` or ``:``)."""
    if not isinstance(text, str) or not text:
        return None
    for sep in ("(", ":"):
        text = text.split(sep, 1)[0]
    return text.strip() or None


def top_exceptions(tasks: pd.DataFrame, n: int = 10, *, by: str | None = "name") -> pd.DataFrame:
    """The most frequent exceptions of failed tasks, by task name and exception type.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``state``, ``exception``).
        n: how many rows to return.
        by: group also by this column (None: by exception type only).

    Returns:
        Columns ``by``, ``exception`` (the type, e.g. ``ValueError``), ``count`` and
        ``example`` (one full message), most frequent first.
    """
    _need(tasks, "state", "exception", fn="top_exceptions")
    tasks = one_row_per_task(tasks)
    failed = tasks[tasks["state"].astype(object) == "FAILURE"]
    frame = pd.DataFrame(
        {
            "exception": failed["exception"].map(exception_type).fillna("(unknown)"),
            "example": failed["exception"].astype(object),
        }
    )
    keys = ["exception"]
    if by is not None:
        frame.insert(0, by, _group_key(failed, by))
        keys = [by, "exception"]
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "count", "example"])
    out = frame.groupby(keys, sort=False).agg(
        count=("example", "size"), example=("example", "first")
    )
    return out.sort_values("count", ascending=False, kind="stable").head(n).reset_index()


def slowest(tasks: pd.DataFrame, n: int = 10, *, by: str = "runtime") -> pd.DataFrame:
    """The ``n`` slowest tasks.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")``.
        n: how many tasks.
        by: ``"runtime"`` (time running), ``"wait"`` (received -> started) or
            ``"total"`` (received -> finished).

    Returns:
        Columns ``uuid``, ``name``, ``worker``, ``state``, ``received``, ``started``,
        ``wait``, ``runtime``, ``total`` (the ones present), slowest first.
    """
    if by not in ("runtime", "wait", "total"):
        raise ValueError(f"by must be 'runtime', 'wait' or 'total', got {by!r}")
    tasks = one_row_per_task(tasks)
    frame = tasks[[c for c in ("uuid", "name", "worker", "state") if c in tasks.columns]].copy()
    for column in ("received", "started"):
        if column in tasks.columns:
            frame[column] = tasks[column]
    frame["wait"] = queue_wait(tasks) if {"received", "started"} <= set(tasks.columns) else np.nan
    frame["runtime"] = _runtime(tasks)
    if "received" in tasks.columns:
        frame["total"] = _seconds(finished_at(tasks) - _utc(tasks["received"]))
    else:
        frame["total"] = np.nan
    frame = frame[frame[by].notna()]
    return frame.sort_values(by, ascending=False, kind="stable").head(n).reset_index(drop=True)


# -- workers ------------------------------------------------------------------------------
def _busy_integral(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Busy seconds in each ``[edges[i], edges[i+1])`` of intervals ``[starts, ends)``.

    Exact and vectorised: the running count of busy slots is a step function, whose
    integral up to ``t`` is ``sum(t - s for s < t) - sum(t - e for e < t)``.
    """

    def integral(points: np.ndarray, t: np.ndarray) -> np.ndarray:
        points = np.sort(points)
        cum = np.concatenate([[0.0], np.cumsum(points)])
        k = np.searchsorted(points, t, side="left")
        area: np.ndarray = k * t - cum[k]
        return area

    total = integral(starts, edges) - integral(ends, edges)
    return np.diff(total)


def worker_utilisation(
    tasks: pd.DataFrame,
    freq: str | None = None,
    *,
    concurrency: int | dict[str, int] | None = None,
    until: Any = None,
) -> pd.DataFrame:
    """How busy each worker was over time, from the tasks' start and finish times.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``worker``, ``started``,
            ``succeeded``/``failed``; also ``retried``/``revoked``/``runtime`` if present).
        freq: the interval; default :func:`auto_freq`.
        concurrency: the worker pool size (one number, or per hostname). Without it
            the values are the average number of tasks running on the worker during
            the interval (busy slots); with it, the fraction of the pool in use (0-1).
        until: when tasks still running are counted up to (default: the latest
            ``captured_at`` in ``tasks``, i.e. the time of the snapshot).

    Returns:
        A DataFrame indexed by interval start (UTC), one float column per worker.
        Only the last attempt of a retried task is known.
    """
    _need(tasks, "worker", "started", fn="worker_utilisation")
    tasks = one_row_per_task(tasks)
    started = _utc(tasks["started"])
    end = finished_at(tasks)
    for column in ("retried", "revoked", "rejected"):  # an attempt also ends with these
        if column in tasks.columns:
            other = _utc(tasks[column])
            use = end.isna() & other.notna() & (other >= started)
            end = end.where(~use, other)
    if "runtime" in tasks.columns:
        by_runtime = started + pd.to_timedelta(tasks["runtime"].astype("float64"), unit="s")
        end = end.where(end.notna(), by_runtime)
    cutoff: Any  # a Timestamp, or NaT (the max of nothing)
    if until is not None:
        from .timeparse import parse_time

        cutoff = parse_time(until)
    elif "captured_at" in tasks.columns and len(tasks):
        cutoff = _utc(tasks["captured_at"]).max()
    else:
        cutoff = pd.concat([started, end]).max()
    end = end.fillna(cutoff).clip(upper=cutoff) if cutoff is not pd.NaT else end
    ok = started.notna() & end.notna() & tasks["worker"].notna() & (end >= started)
    started, end, worker = started[ok], end[ok], tasks.loc[ok, "worker"].astype(str)
    if started.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="interval"))
    freq = freq or auto_freq(pd.concat([started, end]))
    first, last = started.min().floor(freq), end.max().floor(freq)
    n = _intervals(first, last, freq)
    if n > MAX_INTERVALS:
        raise ValueError(
            f"worker_utilisation(): the tasks run from {first} to {last}, {n:,} intervals "
            f"of {freq}: pass a larger freq, or only the tasks of a time range"
        )
    index = pd.date_range(first, last, freq=freq)
    index.name = "interval"
    step = pd.Timedelta(freq).total_seconds()
    origin = index[0]
    edges = np.arange(len(index) + 1) * step
    s = _seconds(started - origin).to_numpy()
    e = _seconds(end - origin).to_numpy()
    out = {}
    for host in sorted(worker.unique()):
        mask = (worker == host).to_numpy()
        busy = _busy_integral(s[mask], e[mask], edges) / step
        if concurrency is not None:
            size = concurrency.get(host) if isinstance(concurrency, dict) else concurrency
            busy = busy / size if size else np.full_like(busy, np.nan)
        out[host] = busy
    frame = pd.DataFrame(out, index=index)
    frame.columns.name = "worker"
    frame.attrs["freq"] = freq
    return frame


def worker_activity(
    workers: pd.DataFrame, freq: str | None = None, *, metric: str = "processed"
) -> pd.DataFrame:
    """What the workers reported in their heartbeats, per interval, one column per worker.

    Args:
        workers: ``load("workers")`` (columns ``captured_at``, ``hostname``, ``metric``).
        freq: the interval; default :func:`auto_freq`, at least two heartbeats long.
        metric: ``"processed"`` (tasks the worker finished during the interval, from
            the increase of its ``processed`` counter), ``"active"`` (the largest number
            of tasks it reported running), ``"alive"`` (1 if it was alive at the last
            snapshot of the interval, else 0) or ``"loadavg"`` (the 1-minute load average).

    Returns:
        A DataFrame indexed by interval start (UTC, no gaps), one column per hostname.
    """
    if metric not in ("processed", "active", "alive", "loadavg"):
        raise ValueError(f"metric must be processed, active, alive or loadavg, got {metric!r}")
    _need(workers, "captured_at", "hostname", metric, fn="worker_activity")
    frame = workers[["captured_at", "hostname", metric]].copy()
    frame["captured_at"] = _utc(frame["captured_at"])
    frame["hostname"] = frame["hostname"].astype(str)
    frame = frame.sort_values("captured_at", kind="stable")
    if freq is None:  # at least two heartbeats per interval, or counters look jumpy
        beat = workers["freq"].astype("float64").median() if "freq" in workers.columns else 0
        freq = auto_freq(frame["captured_at"], minimum=2 * beat if beat == beat else 0)
    frame["interval"] = frame["captured_at"].dt.floor(freq)
    grouped = frame.groupby(["interval", "hostname"])[metric]
    if metric == "processed":
        last = grouped.last().astype("float64").unstack()
        last = last.reindex(_timeline(last.index, freq, "worker_activity")).ffill()
        out = last.diff()
        first = frame.groupby("hostname")[metric].first().astype("float64")
        out.iloc[0] = last.iloc[0] - first.reindex(last.columns)
        out = out.fillna(0).clip(lower=0)
    elif metric == "loadavg":
        frame[metric] = frame[metric].map(
            lambda v: float(v[0]) if v is not None and len(v) else np.nan
        )
        out = frame.groupby(["interval", "hostname"])[metric].mean().unstack()
        out = out.reindex(_timeline(out.index, freq, "worker_activity")).ffill()
    elif metric == "active":
        out = grouped.max().astype("float64").unstack()
        out = out.reindex(_timeline(out.index, freq, "worker_activity")).ffill()
    else:
        out = grouped.last().astype("float64").unstack()
        out = out.reindex(_timeline(out.index, freq, "worker_activity")).ffill()
    out.index.name = "interval"
    out.columns.name = "worker"
    out.attrs["freq"] = freq
    return out


def cluster_timeline(snapshots: pd.DataFrame) -> pd.DataFrame:
    """The cluster over time, one row per snapshot (from ``load("snapshots")``).

    Returns:
        A DataFrame indexed by ``captured_at`` with the number of tasks in each state
        held in memory at that moment (``pending``, ``received``, ``started``,
        ``success``, ``failure``, ``retry``, ``revoked``, ``rejected``, ``other``),
        ``in_flight`` (received + started + retry), ``alive_workers``, and
        ``events_per_s`` (events received since the previous snapshot per second).
    """
    _need(snapshots, "captured_at", fn="cluster_timeline")
    frame = snapshots.sort_values("captured_at", kind="stable")
    index = pd.DatetimeIndex(_utc(frame["captured_at"]), name="captured_at")
    out = pd.DataFrame(index=index)
    for column in frame.columns:
        if column.startswith("tasks_") and column not in ("tasks_written", "tasks_in_state"):
            out[column[len("tasks_") :]] = frame[column].astype("float64").to_numpy()
    in_flight = [c for c in ("received", "started", "retry") if c in out.columns]
    if in_flight:
        out["in_flight"] = out[in_flight].sum(axis=1)
    if "alive_workers" in frame.columns:
        out["alive_workers"] = frame["alive_workers"].astype("float64").to_numpy()
    if "event_count" in frame.columns:
        events = frame["event_count"].astype("float64").to_numpy()
        seconds = (index[1:] - index[:-1]).total_seconds().to_numpy()
        rate = np.concatenate([[np.nan], np.diff(events) / np.where(seconds > 0, seconds, np.nan)])
        out["events_per_s"] = rate
    return out
