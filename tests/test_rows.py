"""One rule for "the last row of a key", shared by ``latest`` and ``compact(keep="latest")``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import archiver
from archiver.record import Recorder
from archiver.rows import latest_rows
from archiver.sink import write_file

from .helpers import SMALL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), max_size=40))
def test_latest_rows_is_the_greatest_time_then_the_later_position(rows):
    """The winner of each key is its greatest (time, position); winners come in that order."""
    table = pa.table(
        {
            "k": pa.array([k for k, _ in rows], pa.string()),
            "captured_at": pa.array([t for _, t in rows], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "pos": pa.array(np.arange(len(rows)), pa.int64()),
        }
    )
    best: dict[str, tuple[int, int]] = {}
    for pos, (key, time) in enumerate(rows):
        best[key] = max(best.get(key, (time, pos)), (time, pos))
    expected = sorted(best.values())
    got = latest_rows(table, "k")
    assert got.column("pos").to_pylist() == [pos for _, pos in expected]
    assert sorted(got.column("k").to_pylist()) == sorted(best)


def test_compacting_to_the_latest_rows_keeps_what_latest_shows(tmp_path):
    """Rows tied on captured_at: compaction keeps the row ``latest`` shows (the later file),
    even when its snapshot_id sorts first."""
    path = tmp_path / "archive"
    Recorder(str(path), freq=1.0).replay_file(str(SMALL))
    arch = archiver.Archive(path)
    part = arch.partitions("tasks")[-1]
    last = latest_rows(arch.read("tasks", partitions=[part]), "uuid").slice(0, 5)
    tie = last.drop_columns(["date", "hour"])
    tie = tie.set_column(
        tie.schema.get_field_index("snapshot_id"), "snapshot_id", pa.array([""] * 5)
    )
    state = pa.array(["REVOKED"] * 5).dictionary_encode().cast(tie.schema.field("state").type)
    tie = tie.set_column(tie.schema.get_field_index("state"), "state", state)
    write_file(arch.location, part.path, "part-zzz-tie.parquet", tie)
    tied = set(last.column("uuid").to_pylist())

    def latest() -> dict[str, str]:
        frame = arch.latest("tasks", columns=["uuid", "state", "captured_at"])
        return dict(zip(frame["uuid"], frame["state"].astype(str)))

    before = latest()
    assert {before[u] for u in tied} == {"REVOKED"}
    report = arch.compact(tables=["tasks"], keep="latest")
    assert report.partitions
    assert latest() == before
