"""Reading a partition's input files and writing their rows as one commit group."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..layout import GROUP_KEY, KEEP_KEY, REPLACES_KEY
from ..listing import PARQUET, Damaged, is_missing_file, mark_damaged
from ..schema import SCHEMAS, with_metadata
from ..sink import ROW_GROUP_SIZE, new_writer_id, open_writer, temp_path
from ..storage import Location
from .recovery import open_commit, step
from .retention import Keep


def _target_schema(table: str, fragments: list[ds.ParquetFileFragment]) -> pa.Schema:
    """The schema to write: archiver's for its tables, widened by any extra input column."""
    base = with_metadata(SCHEMAS[table], table) if table in SCHEMAS else None
    schemas = [f.physical_schema for f in fragments]
    if base is not None and all(set(s.names) <= set(base.names) for s in schemas):
        return base
    unified = pa.unify_schemas(
        ([base] if base is not None else []) + [s.remove_metadata() for s in schemas],
        promote_options="permissive",
    )
    return unified.with_metadata(base.metadata if base is not None else schemas[0].metadata)


def read_inputs(
    location: Location, table: str, paths: list[str], damaged: Damaged | None = None
) -> tuple[pa.Table, pa.Schema, list[str]]:
    """The rows of ``paths``, the schema to write them with, and the paths actually read.

    Page checksums are verified; a file that fails is reported to ``damaged`` and
    left out (it must then be neither replaced nor deleted).
    """
    fragments = [PARQUET.make_fragment(p, filesystem=location.fs) for p in paths]
    schema = _target_schema(table, fragments)
    plain = schema.remove_metadata()
    try:
        data = ds.FileSystemDataset(fragments, plain, PARQUET, location.fs).to_table()
        return data, schema, paths
    except (pa.ArrowException, OSError) as exc:
        if is_missing_file(exc):
            raise
    pieces, good = [], []
    for fragment in fragments:
        try:
            pieces.append(ds.FileSystemDataset([fragment], plain, PARQUET, location.fs).to_table())
            good.append(fragment.path)
        except (pa.ArrowException, OSError) as exc:
            if is_missing_file(exc):
                raise
            reason = mark_damaged(location, fragment.path, exc)
            if damaged is not None:
                damaged(fragment.path, reason)
    data = pa.concat_tables(pieces) if pieces else plain.empty_table()
    return data, schema, good


@dataclass
class Output:
    name: str
    final: str
    target: str
    stream: Any
    writer: pq.ParquetWriter
    group: str
    rows: int = 0
    size: int = 0


def write_group(
    location: Location,
    directory: str,
    data: pa.Table,
    schema: pa.Schema,
    *,
    replaces: Sequence[str],
    keep: Keep,
    target_bytes: int,
    slice_rows: int,
    before_commit: Callable[[], None] | None = None,
) -> list[Output]:
    """Write ``data`` as a group of files of about ``target_bytes``, renamed into place last.

    Every file records the group and the files it replaces; the commit is journaled
    (:func:`~.recovery.open_commit`) before the first rename, and the caller closes
    it once the inputs are deleted. ``before_commit`` runs just before the journal
    entry (a previous group's inputs go then). Returns the outputs once all are in place (the
    commit); on error, removes what it wrote.
    """
    gid = new_writer_id()
    outs: list[Output] = []
    try:
        _write_outputs(location, directory, data, schema, gid, outs, target_bytes, slice_rows)
        _seal(location, outs, replaces, keep)
        if before_commit is not None:
            before_commit()
        _commit(location, directory, gid, outs)
    except BaseException:
        _discard(location, outs)
        raise
    return outs


def _write_outputs(
    location: Location,
    directory: str,
    data: pa.Table,
    schema: pa.Schema,
    gid: str,
    outs: list[Output],
    target_bytes: int,
    slice_rows: int,
) -> None:
    """Write ``data`` under temporary names into ``outs``, a new file every ``target_bytes``
    (an empty table still gives one file: an expiry's tombstone)."""
    micros = data.column("captured_at").cast(pa.int64()).to_numpy() if data.num_rows else None

    def open_next(row: int) -> Output:
        first_us = int(micros[row]) if micros is not None else 0
        stamp = datetime.fromtimestamp(first_us // 10**6, tz=timezone.utc)
        name = f"part-{stamp:%Y%m%dT%H%M%S}-compact-{gid}-{len(outs) + 1:03d}.parquet"
        target = temp_path(location, directory, name)
        stream = location.fs.open_output_stream(target)
        writer = open_writer(stream, schema)  # checksums; the camera's dictionary columns
        out = Output(name, f"{directory}/{name}", target, stream, writer, gid)
        outs.append(out)
        return out

    if data.num_rows == 0:
        open_next(0).writer.write_table(data.cast(schema.remove_metadata()))
    pos = 0
    while pos < data.num_rows:
        if not outs or outs[-1].stream.tell() >= target_bytes:
            open_next(pos)
        out = outs[-1]
        chunk = data.slice(pos, slice_rows)
        out.writer.write_table(chunk, row_group_size=slice_rows)
        out.rows += chunk.num_rows
        pos += chunk.num_rows


def _seal(location: Location, outs: list[Output], replaces: Sequence[str], keep: Keep) -> None:
    """Close every output with the group's metadata (what it replaces) and sync it."""
    group = json.dumps([o.name for o in outs])
    for out in outs:
        out.writer.add_key_value_metadata(
            {
                REPLACES_KEY.decode(): json.dumps(sorted(replaces)),
                GROUP_KEY.decode(): group,
                KEEP_KEY.decode(): keep,
            }
        )
        out.writer.close()
        out.size = out.stream.tell()
        out.stream.close()
        location.sync(out.target)
        step("written")


def _commit(location: Location, directory: str, gid: str, outs: list[Output]) -> None:
    """Journal the commit, then rename every output into place (the last rename commits)."""
    open_commit(location, gid, directory)
    for out in outs:
        if out.target != out.final:
            location.rename(out.target, out.final, sync=False)
        step("renamed")
    location.sync_parents(o.final for o in outs)


def _discard(location: Location, outs: list[Output]) -> None:
    """After a failure: close the outputs and delete the temporaries.

    Only temporaries: renamed files are a (partial) group that readers ignore while
    the inputs exist; the next run deletes them.
    """
    for out in outs:
        with contextlib.suppress(Exception):  # already closed or broken
            out.writer.close()
            out.stream.close()
        if out.target != out.final:
            with contextlib.suppress(Exception):  # may not exist
                location.fs.delete_file(out.target)


def rows_per_group(target_bytes: int, bytes_in: int, rows_in: int) -> int:
    """Rows per row group: 64 Ki, fewer when the target holds few rows (finer splits)."""
    per_row = max(1.0, bytes_in / max(rows_in, 1) / 3)  # merged files are ~3x denser
    return int(min(ROW_GROUP_SIZE, max(256, target_bytes / per_row / 8)))
