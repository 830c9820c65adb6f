"""Retention settings: what a periodic cleanup does, and the parsing of sizes and durations."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from ..errors import ArchiverError
from ..timeparse import parse_duration

Keep = Literal["all", "latest"]

MIB = 1024 * 1024
DEFAULT_TARGET_FILE_BYTES = 128 * MIB
#: Seconds a committed group's inputs stay on disk for readers of an exact list taken
#: before the commit (see :class:`~.recovery.DeferredDeletes`). 0 by default: the run
#: waits out each partition's grace before the next commit (to keep glob readers'
#: duplicates to one partition), which costs ``partitions x grace`` of wall time, 36
#: minutes for a 30-day backlog at 1 s; archiver's own readers retry instead.
DEFAULT_GRACE = 0.0
#: The longest grace: beyond it, another host's repair may finish the commit anyway.
MAX_GRACE = 3600.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"128MiB"``, ``"64MB"``, ``"512k"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ArchiverError(f"invalid size {value!r}: use bytes or a unit, such as 128MiB")
        unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
        size = int(float(match.group(1)) * 1024 ** " kmgt".index(unit or " "))
    if size < 1:
        raise ArchiverError(f"invalid size {value!r}: it must be at least 1 byte")
    return size


def parse_per_state(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, pd.Timedelta]:
    """``{"SUCCESS": "1d"}`` or ``["SUCCESS=1d", ...]`` as ``{state: Timedelta}``."""
    if not value:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        for entry in value:
            state, sep, duration = str(entry).partition("=")
            if not sep or not state.strip():
                raise ArchiverError(
                    f"invalid state retention {entry!r}: use STATE=DURATION, such as SUCCESS=1d"
                )
            items.append((state, duration))
    durations: dict[str, pd.Timedelta] = {}
    given: dict[str, str] = {}
    for s, d in items:
        state = str(s).strip().upper()
        delta = parse_duration(d, what=f"state {state}")
        if durations.get(state, delta) != delta:  # the last one must not win silently
            raise ArchiverError(f"state {state} is given twice ({given[state]}, {d})")
        durations[state], given[state] = delta, str(d)
    return durations


def parse_grace(value: Any) -> float:
    """Seconds from a number or a duration such as ``"2s"`` or ``"500ms"``; 0 is allowed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif str(value).strip() in ("0", "0.0"):
        seconds = 0.0
    else:
        seconds = parse_duration(value, what="grace").total_seconds()
    if not 0 <= seconds <= MAX_GRACE:  # also NaN
        raise ArchiverError(f"invalid grace {value!r}: give 0 to {MAX_GRACE:.0f} seconds")
    return seconds


def check_keep(keep: str) -> Keep:
    if keep not in ("all", "latest"):
        raise ArchiverError(f"invalid keep {keep!r}: use 'all' or 'latest'")
    return keep  # type: ignore[return-value]


@dataclass(frozen=True)
class Retention:
    """What a periodic cleanup does: expire, then compact.

    Args:
        older_than: drop whole partitions whose hour ended longer ago than this.
        per_state: drop tasks whose last row is older than their state's duration.
        compact: merge the small files of closed partitions.
        keep: ``"latest"`` keeps only the last row per task/worker and partition.
        target_file_bytes: compacted file size.
        tables: the tables to clean (default: all).

    Example:
        >>> policy = Retention(older_than="30d", per_state={"success": "1d"})
        >>> policy.older_than, policy.per_state
        (Timedelta('30 days 00:00:00'), {'SUCCESS': Timedelta('1 days 00:00:00')})
    """

    older_than: pd.Timedelta | None = None
    per_state: Mapping[str, pd.Timedelta] = field(default_factory=dict)
    compact: bool = True
    keep: Keep = "all"
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES
    tables: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.older_than is not None:
            object.__setattr__(
                self, "older_than", parse_duration(self.older_than, what="older_than")
            )
        object.__setattr__(self, "per_state", parse_per_state(self.per_state))
        object.__setattr__(self, "keep", check_keep(self.keep))
        object.__setattr__(self, "target_file_bytes", parse_size(self.target_file_bytes))
        if self.tables is not None:
            tables = (self.tables,) if isinstance(self.tables, str) else self.tables
            object.__setattr__(self, "tables", tuple(tables))

    FIELDS = ("older_than", "per_state", "compact", "keep", "target_file_bytes", "tables")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Retention:
        """From a dict with the field names (as in a retention file)."""
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise ArchiverError(
                f"unknown retention setting(s) {', '.join(unknown)}: use {', '.join(cls.FIELDS)}"
            )
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Retention:
        """From a JSON file, or a TOML file (Python 3.11+)."""
        text_path = os.fspath(path)
        try:
            with open(text_path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ArchiverError(f"cannot read retention file {text_path}: {exc.strerror}") from exc
        if text_path.endswith(".toml"):
            if sys.version_info < (3, 11):
                raise ArchiverError(
                    f"cannot read {text_path}: TOML needs Python 3.11+; write the file as JSON"
                )
            import tomllib

            try:
                data = tomllib.loads(raw.decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ArchiverError(f"invalid TOML in {text_path}: {exc}") from exc
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ArchiverError(f"invalid JSON in {text_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ArchiverError(f"{text_path} must hold a table of settings")
        return cls.from_mapping(data)

    @property
    def deletes_rows(self) -> bool:
        """Whether running it deletes rows (expiry, or keeping only the latest rows)."""
        return self.older_than is not None or bool(self.per_state) or self.keep == "latest"

    def override(
        self,
        *,
        older_than: Any = None,
        per_state: Mapping[str, Any] | Iterable[str] | None = None,
        keep: Keep | None = None,
        target_file_bytes: int | str | None = None,
        tables: str | Iterable[str] | None = None,
        compact: bool | None = None,
    ) -> Retention:
        """This retention with each setting given (not None, not empty) replaced."""
        given: dict[str, Any] = {
            "older_than": older_than,
            "per_state": per_state or None,
            "keep": keep,
            "target_file_bytes": target_file_bytes,
            "tables": (tables,) if isinstance(tables, str) else tables or None,
            "compact": compact,
        }
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    @classmethod
    def coerce(cls, value: Retention | Mapping[str, Any] | str | os.PathLike[str]) -> Retention:
        """A Retention from itself, a mapping, or the path of a retention file."""
        if isinstance(value, Retention):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        return cls.from_file(value)
