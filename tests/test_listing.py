"""Walking ``date=/hour=`` folders and listing a partition's visible files, on real files."""

from __future__ import annotations

import pyarrow as pa

from archiver.layout import partition_path
from archiver.listing import scan_partition, walk_partitions
from archiver.maintenance.recovery import remove_set_aside
from archiver.schema import TASKS
from archiver.sink import write_file
from archiver.storage import resolve

HOUR = 490_000  # an hour since the epoch, in 2025


def test_walk_finds_partitions_reports_strays_and_lists_set_aside_hours(tmp_path):
    """One walker serves readers (damaged folders reported) and expiry (set-aside hours)."""
    location = resolve(str(tmp_path))
    tasks = tmp_path / "tasks"
    for bucket in (HOUR + 1, HOUR):
        (tasks / partition_path(bucket)).mkdir(parents=True)
    day = (tasks / partition_path(HOUR)).parent
    (day / ".hour=3.expired-abc").mkdir()
    (day / "hour=24").mkdir()
    (tasks / "date=2025-13-01").mkdir()
    (tasks / "_SUCCESS").write_text("")
    damaged: list[tuple[str, str]] = []
    walk = walk_partitions(location, "tasks", lambda path, reason: damaged.append((path, reason)))
    assert [(p.date, p.hour) for p in walk.partitions] == [("2025-11-24", 16), ("2025-11-24", 17)]
    assert walk.partitions[0].end_us == walk.partitions[1].start_us
    assert walk.set_aside == [str(day / ".hour=3.expired-abc")]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in damaged) == ["date=2025-13-01", "hour=24"]
    assert remove_set_aside(location, "tasks") == 1
    assert walk_partitions(location, "tasks").set_aside == []


def test_scan_partition_hides_temporary_foreign_and_damaged_files(tmp_path):
    """Only readable Parquet files of the table are visible; a damaged one is reported."""
    location = resolve(str(tmp_path))
    walk_dir = tmp_path / "tasks" / partition_path(HOUR)
    walk_dir.mkdir(parents=True)
    rows = pa.table({"captured_at": pa.array([HOUR * 3600 * 10**6], pa.timestamp("us", tz="UTC"))})
    table = rows.append_column("snapshot_id", pa.array(["s"])).append_column(
        "uuid", pa.array(["u"])
    )
    table = table.cast(pa.schema([TASKS.field(n) for n in table.column_names]))
    write_file(location, str(walk_dir), "part-a.parquet", table.cast(table.schema))
    (walk_dir / "part-b.parquet").write_bytes(b"not parquet")
    (walk_dir / ".part-c.parquet.tmp").write_bytes(b"")
    (walk_dir / "_SUCCESS").write_text("")
    partition = walk_partitions(location, "tasks").partitions[0]
    damaged: list[str] = []
    scan = scan_partition(location, partition, lambda path, reason: damaged.append(path))
    assert [i.base_name for i in scan.visible] == ["part-a.parquet"]
    assert scan.num_rows(scan.visible[0]) == 1
    assert damaged == [str(walk_dir / "part-b.parquet")]
    assert scan.temps == []  # too young to be a crash's leftover
