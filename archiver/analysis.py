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
:func:`latency`            broker wait, queue wait and runtime percentiles per task name
:func:`failure_rates`      how often does each task fail, retry, get revoked or rejected?
:func:`top_exceptions`     which exceptions, in which tasks, how often?
:func:`slowest`            the slowest tasks (by runtime, queue wait or total time)
:func:`worker_utilisation` how busy was each worker over time (from the tasks' run times)?
:func:`worker_activity`    what did each worker report over time (workers table)?
:func:`cluster_timeline`   the cluster over time: tasks per state, workers (snapshots table)
=========================  ==============================================================

Intervals (``freq``) are durations as archiver spells them everywhere (``"30s"``,
``"1m"`` or ``"1min"`` = one minute, ``"15min"``, ``"1h"``, ``"1d"``, ``"1d12h"``), fixed
pandas aliases (``"1D"``, ``"1h"``) or a timedelta; ``"M"`` (a month in pandas) is refused,
as months are not a fixed length. The default picks a round interval that gives about 40
bins over the data's time span. Frames indexed by interval carry it, as a pandas alias
(``"1min"``), in ``.attrs["freq"]``.
Times are tz-aware UTC, durations are float seconds. On an empty frame every function
returns an empty result of the same shape (columns, index and dtypes) as a full one; a
frame without the columns a function needs is a one-line ``ValueError`` naming them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from datetime import timedelta
from numbers import Real
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .timeparse import duration_or_none, parse_time

__all__ = [
    "auto_freq",
    "broker_wait",
    "cluster_timeline",
    "failure_rates",
    "finished_at",
    "interval_freq",
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


TASKS = 'latest("tasks") or load("tasks")'
WORKERS = 'load("workers")'
SNAPSHOTS = 'load("snapshots")'
#: The per-state counts of a snapshot (``tasks_success``...): what cluster_timeline shows.
SNAPSHOT_STATES = (
    "pending",
    "received",
    "started",
    "success",
    "failure",
    "retry",
    "revoked",
    "rejected",
    "other",
)
#: Units of the durations users type (see :mod:`archiver.timeparse`), as pandas aliases.
_ALIASES = (
    ("D", pd.Timedelta(days=1)),
    ("h", pd.Timedelta(hours=1)),
    ("min", pd.Timedelta(minutes=1)),
    ("s", pd.Timedelta(seconds=1)),
    ("ms", pd.Timedelta(milliseconds=1)),
    ("us", pd.Timedelta(microseconds=1)),
)
#: pandas' calendar aliases (month, quarter, year...): not a fixed length, so no interval.
_CALENDAR = re.compile(r"^\s*\d*\s*(?:[BC]?M[ES]?|[BS]?Q[ES]?|[BS]?[YA][ES]?)(?:-[A-Z]+)?\s*$")


# -- helpers ------------------------------------------------------------------------------
def _need(df: Any, *columns: str | None, fn: str, frame: str = TASKS) -> None:
    """A one-line error naming ``fn`` and the columns ``df`` lacks (None entries: no need)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{fn}() takes a pandas DataFrame ({frame}), got {type(df).__name__}")
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise ValueError(
            f"{fn}(): the frame lacks the column(s) {', '.join(missing)}: pass {frame} "
            "with these columns loaded"
        )


def interval_freq(freq: str | timedelta | None, *, fn: str = "interval_freq") -> str | None:
    """``freq`` as a fixed pandas alias (``"1m"`` -> ``"1min"``, ``"90s"`` -> ``"90s"``).

    Durations are read as everywhere in archiver (``"1m"`` is a minute, ``"1d12h"``...);
    fixed pandas aliases (``"1D"``, ``"15min"``) are accepted too. A month (``"1M"``), a
    year or a business day is refused: it has no fixed length. None stays None.
    """
    if freq is None:
        return None
    if isinstance(freq, timedelta):
        delta = pd.Timedelta(freq)
    else:
        text = str(freq)
        if _CALENDAR.match(text):
            raise ValueError(
                f"{fn}(): invalid interval {text!r}: a month, quarter or year is not a fixed "
                "length; give a duration such as 1m (a minute), 15min, 1h or 7d"
            )
        try:
            found = duration_or_none(text)
            if found is None:  # a fixed pandas alias that is no duration word ("1T", "2L")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    offset = pd.tseries.frequencies.to_offset(text)
                if isinstance(offset, pd.offsets.Tick):  # fixed length, unlike "1B"
                    found = pd.Timedelta(offset)
        except (ValueError, TypeError, OverflowError):
            found = None
        if found is None:
            raise ValueError(
                f"{fn}(): invalid interval {text!r}: give a duration such as 30s, 1m "
                "(a minute), 15min, 1h or 1d"
            )
        delta = found
    if delta < pd.Timedelta(microseconds=1):
        raise ValueError(f"{fn}(): invalid interval {freq!r}: it must be at least 1us")
    for unit, size in _ALIASES:
        if delta % size == pd.Timedelta(0):
            return f"{delta // size}{unit}"
    # below a microsecond: archive times are whole microseconds, so round to one
    return f"{max(1, round(delta / pd.Timedelta(microseconds=1)))}us"


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
        return pd.Series(ALL, index=df.index, name="all", dtype=object)
    key: pd.Series = df[by].astype(object)
    named: pd.Series = key.where(key.notna(), "(none)")
    return named


def _seconds(delta: pd.Series) -> pd.Series:
    seconds: pd.Series = delta.dt.total_seconds().astype("float64")
    return seconds


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).astype("datetime64[us, UTC]")


def _empty_index(name: str = "interval") -> pd.DatetimeIndex:
    return pd.DatetimeIndex([], dtype="datetime64[us, UTC]", name=name)


def _intervals(first: pd.Timestamp, last: pd.Timestamp, freq: str) -> int:
    """How many intervals of ``freq`` (a fixed alias) from ``first`` to ``last``."""
    return int((last - first) // pd.Timedelta(freq)) + 1


def _timeline(index: pd.Index, freq: str, fn: str) -> pd.DatetimeIndex:
    """Every interval from the first to the last value of ``index`` (no gaps).

    Beyond :data:`MAX_INTERVALS` (a task dated in the year 9999, say) only the intervals
    in ``index`` are listed, with a warning: the gaps would not fit in memory.
    """
    if len(index) == 0:
        return _empty_index()
    first, last = index.min(), index.max()
    n = _intervals(first, last, freq)
    if n > MAX_INTERVALS:
        warnings.warn(
            f"{fn}(): the times span {first} to {last}, {n:,} intervals of {freq}: "
            f"only the intervals that hold data are listed",
            stacklevel=3,
        )
        listed = pd.DatetimeIndex(index.unique().sort_values(), name="interval")
    else:
        listed = pd.date_range(first, last, freq=freq, name="interval")
    return listed.as_unit("us")


def finished_at(tasks: pd.DataFrame) -> pd.Series:
    """When each task finished: ``succeeded``, else ``failed`` (NaT while not finished)."""
    out = pd.Series(pd.NaT, index=tasks.index, dtype="datetime64[us, UTC]")
    for column in ("failed", "succeeded"):
        if column in tasks.columns:
            values = _utc(tasks[column])
            out = values.where(values.notna(), out)
    return out


def _finish_column(tasks: pd.DataFrame) -> str | None:
    """``"succeeded"`` for :func:`_need` unless ``tasks`` has a column telling when tasks end."""
    return None if {"succeeded", "failed"} & set(getattr(tasks, "columns", ())) else "succeeded"


# -- tasks --------------------------------------------------------------------------------
def throughput(
    tasks: pd.DataFrame,
    freq: str | timedelta | None = None,
    *,
    by: str | None = "name",
    states: Sequence[str] = FINISHED_STATES,
) -> pd.DataFrame:
    """Tasks finished per interval, one column per task name.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``, ``state``,
            ``succeeded``/``failed`` and ``by``).
        freq: the interval ("1m" or "1min" = a minute, "1h"...); default :func:`auto_freq`.
        by: the column to split by (``"name"``, ``"worker"``) or None for one total.
        states: the final states that count as finished (default SUCCESS and FAILURE).

    Returns:
        A DataFrame indexed by interval start (UTC, no gaps), one int column per value
        of ``by``, sorted by total count. Divide by the interval's seconds for a rate.
    """
    _need(tasks, "state", _finish_column(tasks), by, fn="throughput")
    freq = interval_freq(freq, fn="throughput")
    tasks = one_row_per_task(tasks)
    done = finished_at(tasks)
    mask = tasks["state"].astype(object).isin(list(states)) & done.notna()
    done = done[mask]
    freq = freq or auto_freq(done)
    key = _group_key(tasks.loc[mask], by)
    counts = done.groupby([done.dt.floor(freq).rename("interval"), key]).size()
    table = counts.unstack(fill_value=0) if len(counts) else pd.DataFrame(index=_empty_index())
    if by is None and ALL not in table.columns:  # no tasks: the total is still a column
        table[ALL] = 0
    table = table.reindex(_timeline(table.index, freq, "throughput"), fill_value=0)
    if len(table.columns):
        table = table[table.sum().sort_values(ascending=False, kind="stable").index]
    table.columns = pd.Index([str(c) for c in table.columns], dtype=object, name=by or "all")
    table = table.astype("int64")
    table.attrs["freq"] = freq
    return table


def queue_wait(tasks: pd.DataFrame) -> pd.Series:
    """Seconds from ``received`` (by a worker) to ``started``, per task (NaN if unknown)."""
    _need(tasks, "received", "started", fn="queue_wait")
    return _seconds(_utc(tasks["started"]) - _utc(tasks["received"])).rename("wait")


def broker_wait(tasks: pd.DataFrame) -> pd.Series:
    """Seconds from ``sent`` (by the client) to ``received`` by a worker (NaN if unknown).

    The time a task spent in the broker; it needs ``task_send_sent_event`` on the client.
    Clocks of different hosts are compared, so small negative values can occur.
    """
    _need(tasks, "sent", "received", fn="broker_wait")
    return _seconds(_utc(tasks["received"]) - _utc(tasks["sent"])).rename("broker")


def _runtime(tasks: pd.DataFrame) -> pd.Series:
    """The ``runtime`` Celery reports, else finished minus started, in seconds."""
    measured = pd.Series(np.nan, index=tasks.index, dtype="float64")
    if "started" in tasks.columns:
        measured = _seconds(finished_at(tasks) - _utc(tasks["started"]))
    if "runtime" in tasks.columns:
        reported = tasks["runtime"].astype("float64")
        measured = reported.where(reported.notna(), measured)
    return measured.rename("runtime")


def _pct(q: float) -> str:
    return f"p{q * 100:g}"


#: The durations :func:`latency` and :func:`slowest` report, in the order of a task's life.
TIMINGS = ("broker", "wait", "runtime")


def latency(
    tasks: pd.DataFrame,
    percentiles: Sequence[float] = (0.5, 0.9, 0.99),
    *,
    by: str | None = "name",
) -> pd.DataFrame:
    """Broker wait, queue wait and runtime percentiles per task name, in seconds.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``, ``sent``,
            ``received``, ``started``, and ``runtime`` or ``succeeded``/``failed``).
        percentiles: fractions in [0, 1].
        by: the column to split by, or None for one row over all tasks.

    Returns:
        One row per value of ``by`` (busiest first) with ``count`` (tasks that
        started), ``broker_p50``... (sent -> received: time in the broker),
        ``wait_p50``... (received -> started: queue wait in the worker) and
        ``runtime_p50``... columns. For a retried task, the figures are those of its
        last attempt.
    """
    _need(tasks, "sent", "received", "started", by, fn="latency")
    bad = [q for q in percentiles if not isinstance(q, Real) or not 0 <= q <= 1]
    if bad:
        raise ValueError(f"latency(): percentiles must be fractions in [0, 1], got {bad[0]!r}")
    tasks = one_row_per_task(tasks)
    frame = pd.DataFrame(
        {
            "broker": broker_wait(tasks),
            "wait": queue_wait(tasks),
            "runtime": _runtime(tasks),
            "key": _group_key(tasks, by),
        }
    )
    frame["started"] = frame["wait"].notna() | frame["runtime"].notna()
    frame = frame[frame["started"] | frame["broker"].notna()]
    grouped = frame.groupby("key", sort=False)
    out = pd.DataFrame({"count": grouped["started"].sum().astype("int64")})
    for metric in TIMINGS:
        for q in percentiles:
            out[f"{metric}_{_pct(q)}"] = grouped[metric].quantile(q).astype("float64")
    out.index = out.index.astype(object).rename(by or "all")
    return out.sort_values("count", ascending=False, kind="stable")


def _retried_uuids(tasks: pd.DataFrame) -> set[str]:
    if "state" not in tasks.columns or "uuid" not in tasks.columns:
        return set()
    return set(tasks.loc[tasks["state"].astype(object) == "RETRY", "uuid"])


def _rejected(tasks: pd.DataFrame) -> pd.Series:
    """Whether each task was rejected: state REJECTED, or a ``task-rejected`` event seen.

    A task that raises ``Reject`` sends task-failed then task-rejected; Celery keeps the
    state FAILURE (it ranks above REJECTED), so the ``rejected`` time tells them apart.
    """
    out = tasks["state"].astype(object) == "REJECTED"
    if "rejected" in tasks.columns:
        out |= tasks["rejected"].notna()
    return out


def failure_rates(tasks: pd.DataFrame, *, by: str | None = "name") -> pd.DataFrame:
    """How often tasks fail, retry, get revoked or rejected, per task name.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")`` (columns ``uuid``, ``state``;
            ``rejected`` tells rejected tasks from failed ones; ``retried``/``retries``
            improve retry detection).
        by: the column to split by, or None for one row over all tasks.

    Returns:
        One row per value of ``by`` with counts ``tasks``, ``succeeded``, ``failed``
        (rejected tasks not included), ``revoked``, ``rejected``, ``retried`` (tasks
        retried at least once, whatever their outcome) and the rates ``failure_rate`` =
        failed / (succeeded + failed) and ``retry_rate`` = retried / tasks (NaN when
        undefined). Sorted by failures.
    """
    _need(tasks, "state", by, fn="failure_rates")
    retry_seen = _retried_uuids(tasks)
    tasks = one_row_per_task(tasks)
    state = tasks["state"].astype(object)
    rejected = _rejected(tasks)
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
            "succeeded": state == "SUCCESS",
            "failed": (state == "FAILURE") & ~rejected,
            "revoked": (state == "REVOKED") & ~rejected,
            "rejected": rejected,
            "retried": retried,
        },
        index=tasks.index,
    ).astype("int64")
    frame["key"] = _group_key(tasks, by)
    out = frame.groupby("key", sort=False).sum().astype("int64")
    finished = out["succeeded"] + out["failed"]
    out["failure_rate"] = (out["failed"] / finished.where(finished > 0)).astype("float64")
    out["retry_rate"] = (out["retried"] / out["tasks"].where(out["tasks"] > 0)).astype("float64")
    out.index = out.index.astype(object).rename(by or "all")
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
        ``example`` (one full message), most frequent first. Rejected tasks are left
        out, as in :func:`failure_rates`.
    """
    _need(tasks, "state", "exception", by, fn="top_exceptions")
    tasks = one_row_per_task(tasks)
    failed = tasks[(tasks["state"].astype(object) == "FAILURE") & ~_rejected(tasks)]
    frame = pd.DataFrame(
        {
            "exception": failed["exception"].map(exception_type).fillna("(unknown)"),
            "example": failed["exception"].astype(object),
        },
        index=failed.index,
    ).astype(object)
    keys = ["exception"]
    if by is not None:
        frame.insert(0, by, _group_key(failed, by))
        keys = [by, "exception"]
    out = frame.groupby(keys, sort=False).agg(
        count=("example", "size"), example=("example", "first")
    )
    out = out.sort_values("count", ascending=False, kind="stable").head(n).reset_index()
    return out.astype({"count": "int64", "example": object, **dict.fromkeys(keys, object)})


def slowest(tasks: pd.DataFrame, n: int = 10, *, by: str = "runtime") -> pd.DataFrame:
    """The ``n`` slowest tasks.

    Args:
        tasks: ``latest("tasks")`` or ``load("tasks")``.
        n: how many tasks.
        by: ``"runtime"`` (time running), ``"wait"`` (received -> started),
            ``"broker"`` (sent -> received) or ``"total"`` (received -> finished).

    Returns:
        Columns ``uuid``, ``name``, ``worker``, ``state``, ``sent``, ``received``,
        ``started`` (the ones present), ``broker``, ``wait``, ``runtime``, ``total``,
        slowest first.
    """
    needs = {
        "runtime": ("started",),
        "wait": ("received", "started"),
        "broker": ("sent", "received"),
        "total": ("received", _finish_column(tasks)),
    }
    if by not in needs:
        raise ValueError(
            f"slowest(): by must be 'runtime', 'wait', 'broker' or 'total', got {by!r}"
        )
    _need(tasks, "uuid", *needs[by], fn="slowest")
    tasks = one_row_per_task(tasks)
    present = [c for c in ("uuid", "name", "worker", "state") if c in tasks.columns]
    frame = tasks[present].copy()
    for column in ("sent", "received", "started"):
        if column in tasks.columns:
            frame[column] = _utc(tasks[column])
    nan = pd.Series(np.nan, index=tasks.index, dtype="float64")
    has = set(tasks.columns)
    frame["broker"] = broker_wait(tasks) if {"sent", "received"} <= has else nan
    frame["wait"] = queue_wait(tasks) if {"received", "started"} <= has else nan
    frame["runtime"] = _runtime(tasks)
    received = _utc(tasks["received"]) if "received" in has else None
    frame["total"] = nan if received is None else _seconds(finished_at(tasks) - received)
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
        return np.asarray(k * t - cum[k], dtype="float64")

    total = integral(starts, edges) - integral(ends, edges)
    return np.asarray(np.diff(total), dtype="float64")


def _empty_by_interval(freq: str | None, columns: str = "worker") -> pd.DataFrame:
    out = pd.DataFrame(index=_empty_index(), columns=pd.Index([], dtype=object, name=columns))
    out = out.astype("float64")
    if freq is not None:
        out.attrs["freq"] = freq
    return out


def worker_utilisation(
    tasks: pd.DataFrame,
    freq: str | timedelta | None = None,
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
        A DataFrame indexed by interval start (UTC), one float column per worker. The
        data covers the time from the first task time in ``tasks`` (sent, received or
        started) to ``until``; an interval only partly covered (the first and the last)
        is averaged over its covered part, not over its whole length.
        Only the last attempt of a retried task is known.
    """
    _need(tasks, "worker", "started", fn="worker_utilisation")
    freq = interval_freq(freq, fn="worker_utilisation")
    tasks = one_row_per_task(tasks)
    started = _utc(tasks["started"])
    end = _attempt_ends(tasks, started)
    cutoff = _cutoff(tasks, until, started, end)
    if cutoff is not None:
        end = end.fillna(cutoff)
        end = end.where(end <= cutoff, cutoff)
    ok = started.notna() & end.notna() & tasks["worker"].notna() & (end >= started)
    started, end, worker = started[ok], end[ok], tasks.loc[ok, "worker"].astype(str)
    if started.empty:
        return _empty_by_interval(freq)
    freq = freq or auto_freq(pd.concat([started, end]))
    # the time the data covers: from the first task time seen to the cutoff
    seen = [_utc(tasks[c]).min() for c in ("sent", "received", "started") if c in tasks.columns]
    cover_from = min(t for t in [*seen, started.min()] if not pd.isna(t))
    cover_to = max(end.max(), cutoff) if cutoff is not None else end.max()
    grid = _Grid.spanning(cover_from, cover_to, freq)
    s = _seconds(started - grid.first).to_numpy()
    e = _seconds(end - grid.first).to_numpy()
    out = {}
    for host in sorted(worker.unique()):
        mask = (worker == host).to_numpy()
        busy = _busy_integral(s[mask], e[mask], grid.edges) / grid.covered
        if concurrency is not None:
            size = concurrency.get(host) if isinstance(concurrency, dict) else concurrency
            busy = busy / size if size else np.full_like(busy, np.nan)
        out[host] = busy
    frame = pd.DataFrame(out, index=grid.starts, dtype="float64")
    frame.columns = pd.Index(list(frame.columns), dtype=object, name="worker")
    frame.attrs["freq"] = freq
    return frame


def _attempt_ends(tasks: pd.DataFrame, started: pd.Series) -> pd.Series:
    """When each task's (last) attempt ended: its finish, else its retry, revocation or
    rejection (when not before it started), else ``started`` + runtime; NaT if none."""
    end = finished_at(tasks)
    for column in ("retried", "revoked", "rejected"):  # an attempt also ends with these
        if column in tasks.columns:
            other = _utc(tasks[column])
            use = end.isna() & other.notna() & (other >= started)
            end = end.where(~use, other)
    if "runtime" in tasks.columns:
        by_runtime = started + pd.to_timedelta(tasks["runtime"].astype("float64"), unit="s")
        end = end.where(end.notna(), by_runtime)
    return end


def _cutoff(
    tasks: pd.DataFrame, until: Any, started: pd.Series, end: pd.Series
) -> pd.Timestamp | None:
    """When tasks still running are counted up to: ``until``, else the last capture,
    else the last task time (None: no time at all)."""
    if until is not None:
        cutoff = parse_time(until)
    elif "captured_at" in tasks.columns and _utc(tasks["captured_at"]).notna().any():
        cutoff = _utc(tasks["captured_at"]).max()
    else:
        cutoff = pd.concat([started, end]).max()
    return None if cutoff is None or pd.isna(cutoff) else cutoff


class _Grid(NamedTuple):
    """Intervals of one ``freq``: their ``starts`` (from ``first``), their edges in
    seconds from ``first``, and the seconds of each the data covers (NaN: none)."""

    starts: pd.DatetimeIndex
    first: pd.Timestamp
    edges: np.ndarray
    covered: np.ndarray

    @classmethod
    def spanning(cls, cover_from: pd.Timestamp, cover_to: pd.Timestamp, freq: str) -> _Grid:
        """The intervals from the one holding ``cover_from`` to the one holding ``cover_to``
        (not the one starting at it: that interval would be empty)."""
        step = pd.Timedelta(freq)
        first, last = cover_from.floor(freq), cover_to.floor(freq)
        if last == cover_to and last > first:  # the cutoff on an edge: the next interval is empty
            last -= step
        n = _intervals(first, last, freq)
        if n > MAX_INTERVALS:
            raise ValueError(
                f"worker_utilisation(): the tasks run from {first} to {last}, {n:,} intervals "
                f"of {freq}: pass a larger freq, or only the tasks of a time range"
            )
        index = pd.date_range(first, last, freq=freq, name="interval").as_unit("us")
        edges = np.arange(len(index) + 1) * step.total_seconds()
        lo = (cover_from - first).total_seconds()
        hi = (cover_to - first).total_seconds()
        covered = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
        return cls(index, first, edges, np.where(covered > 0, covered, np.nan))


def worker_activity(
    workers: pd.DataFrame, freq: str | timedelta | None = None, *, metric: str = "processed"
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
        A DataFrame indexed by interval start (UTC, no gaps), one float column per hostname.
    """
    if metric not in ("processed", "active", "alive", "loadavg"):
        raise ValueError(
            f"worker_activity(): metric must be processed, active, alive or loadavg, got {metric!r}"
        )
    _need(workers, "captured_at", "hostname", metric, fn="worker_activity", frame=WORKERS)
    freq = interval_freq(freq, fn="worker_activity")
    frame = workers[["captured_at", "hostname", metric]].copy()
    frame["captured_at"] = _utc(frame["captured_at"])
    frame = frame[frame["captured_at"].notna() & frame["hostname"].notna()]
    if frame.empty:
        return _empty_by_interval(freq)
    frame["hostname"] = frame["hostname"].astype(str)
    frame = frame.sort_values("captured_at", kind="stable")
    if freq is None:  # at least two heartbeats per interval, or counters look jumpy
        beat = workers["freq"].astype("float64").median() if "freq" in workers.columns else 0
        freq = auto_freq(frame["captured_at"], minimum=2 * beat if beat == beat else 0)
    frame["interval"] = frame["captured_at"].dt.floor(freq)
    if metric == "loadavg":
        frame[metric] = frame[metric].map(
            lambda v: float(v[0]) if v is not None and len(v) else np.nan
        )
    frame[metric] = frame[metric].astype("float64")
    grouped = frame.groupby(["interval", "hostname"])[metric]
    if metric == "processed":
        last = grouped.last().unstack()
        last = last.reindex(_timeline(last.index, freq, "worker_activity")).ffill()
        out = last.diff()
        first = frame.groupby("hostname")[metric].first()
        out.iloc[0] = last.iloc[0] - first.reindex(last.columns)
        out = out.fillna(0).clip(lower=0)
    else:
        if metric == "loadavg":
            out = grouped.mean().unstack()
        elif metric == "active":
            out = grouped.max().unstack()
        else:
            out = grouped.last().unstack()
        out = out.reindex(_timeline(out.index, freq, "worker_activity")).ffill()
    out = out.astype("float64")
    out.index.name = "interval"
    out.columns = pd.Index(list(out.columns), dtype=object, name="worker")
    out.attrs["freq"] = freq
    return out


def cluster_timeline(snapshots: pd.DataFrame) -> pd.DataFrame:
    """The cluster over time, one row per snapshot (from ``load("snapshots")``).

    Returns:
        A DataFrame indexed by ``captured_at`` with the number of tasks in each state
        held in memory at that moment (``pending``, ``received``, ``started``,
        ``success``, ``failure``, ``retry``, ``revoked``, ``rejected``, ``other``),
        ``in_flight`` (received + started + retry), ``alive_workers`` (int64; Int64
        with <NA> where a snapshot lacks the count), and ``events_per_s`` (events
        received since the previous snapshot per second, float). Only the columns
        present in ``snapshots`` are shown; it needs ``captured_at`` and at least one.
    """
    counts = [f"tasks_{s}" for s in SNAPSHOT_STATES]
    _need(snapshots, "captured_at", fn="cluster_timeline", frame=SNAPSHOTS)
    wanted = [*counts, "alive_workers", "event_count"]
    if not set(wanted) & set(snapshots.columns):
        raise ValueError(
            f"cluster_timeline(): the frame lacks the columns {', '.join(wanted)} "
            f"(it needs at least one): pass {SNAPSHOTS}"
        )
    frame = snapshots.sort_values("captured_at", kind="stable")
    index = pd.DatetimeIndex(_utc(frame["captured_at"]), name="captured_at")
    out = pd.DataFrame(index=index)

    def integers(column: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
        values = frame[column]
        return values.to_numpy("int64") if values.notna().all() else values.astype("Int64").array

    for column in counts:
        if column in frame.columns:
            out[column[len("tasks_") :]] = integers(column)
    in_flight = [c for c in ("received", "started", "retry") if c in out.columns]
    if in_flight:
        out["in_flight"] = out[in_flight].sum(axis=1, min_count=len(in_flight))
        if out["in_flight"].notna().all():
            out["in_flight"] = out["in_flight"].astype("int64")
    if "alive_workers" in frame.columns:
        out["alive_workers"] = integers("alive_workers")
    if "event_count" in frame.columns:
        events = frame["event_count"].astype("float64").to_numpy()
        seconds = (index[1:] - index[:-1]).total_seconds().to_numpy()
        rate = np.diff(events) / np.where(seconds > 0, seconds, np.nan)
        out["events_per_s"] = np.concatenate([[np.nan], rate]) if len(events) else events
    return out
