"""archiver.schema: the tables' schemas as written to real files, the metadata they carry,
and which other schemas a reader accepts (older files, other writers) or refuses."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver import __version__
from archiver.schema import (
    END_PARTITION_US,
    ENTITY_KEYS,
    FIRST_PARTITION_US,
    SCHEMA_VERSION,
    SCHEMAS,
    TASKS,
    WORKERS,
    dictionary_columns,
    in_partition_range,
    schema_problem,
    with_metadata,
)

from .helpers import first_file, record_copies


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_events) -> Path:
    """The small recording written by the Parquet camera."""
    path = tmp_path_factory.mktemp("schema") / "a"
    record_copies(path, [small_events])
    return path


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_written_files_have_the_schema_and_its_metadata(recorded, table):
    """Each table's files hold exactly its schema, tagged with table and versions."""
    schema = pq.read_schema(first_file(recorded, table))
    assert schema.remove_metadata().equals(SCHEMAS[table])
    assert schema.metadata[b"archiver.table"] == table.encode()
    assert schema.metadata[b"archiver.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.metadata[b"archiver.version"] == __version__.encode()
    assert schema_problem(table, schema) is None
    assert ENTITY_KEYS[table] in schema.names


def test_with_metadata_keeps_the_fields():
    """with_metadata changes only the schema's metadata."""
    tagged = with_metadata(WORKERS, "workers")
    assert tagged.remove_metadata().equals(WORKERS) and tagged.metadata[b"archiver.table"]


def test_dictionary_columns_are_the_repeating_ones(recorded):
    """Categories and marked text get a Parquet dictionary, unique ids none; unmarked: all."""
    columns = dictionary_columns(TASKS)
    assert isinstance(columns, list)
    assert {"name", "state", "worker", "args", "traceback", "retries"} <= set(columns)
    assert not {"uuid", "captured_at", "sent", "runtime"} & set(columns)
    assert dictionary_columns(WORKERS) is True
    meta = pq.read_metadata(first_file(recorded, "tasks"))
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index("uuid"))
    assert chunk.dictionary_page_offset is None  # as written: uuids are not dictionary-encoded


def replaced(schema: pa.Schema, name: str, field: pa.Field | None) -> pa.Schema:
    """``schema`` with column ``name`` replaced by ``field`` (removed if None)."""
    i = schema.get_field_index(name)
    return schema.remove(i) if field is None else schema.set(i, field)


@pytest.mark.parametrize(
    ("name", "field", "problem"),
    [
        ("state", pa.field("state", pa.int32()), "column state is int32, expected dictionary"),
        ("uuid", None, "column uuid is missing"),
        ("captured_at", pa.field("captured_at", pa.string()), "column captured_at is string"),
        ("retries", pa.field("retries", pa.float64()), "column retries is double"),
        ("clock", pa.field("clock", pa.bool_()), "column clock is bool, expected int64"),
    ],
)
def test_an_incompatible_task_schema_is_named(name, field, problem):
    """A missing required column or a type that cannot be read as the expected one is named."""
    found = schema_problem("tasks", replaced(TASKS, name, field))
    assert found is not None and found.startswith(problem), found


@pytest.mark.parametrize(
    ("table", "name", "field"),
    [
        ("tasks", "traceback", None),  # an older file without a nullable column
        ("tasks", "state", pa.field("state", pa.large_string())),  # another writer's strings
        ("tasks", "retries", pa.field("retries", pa.int64())),
        ("tasks", "sent", pa.field("sent", pa.timestamp("ns"))),
        ("workers", "loadavg", pa.field("loadavg", pa.large_list(pa.float32()))),
    ],
)
def test_a_compatible_schema_is_accepted(table, name, field):
    """Missing nullable columns, other widths and string or list flavours read fine."""
    assert schema_problem(table, replaced(SCHEMAS[table], name, field)) is None


def test_a_list_of_the_wrong_values_is_refused():
    """``loadavg`` as a list of strings is refused."""
    schema = replaced(WORKERS, "loadavg", pa.field("loadavg", pa.list_(pa.string())))
    assert schema_problem("workers", schema) == (
        "column loadavg is list<item: string>, expected list<item: double>"
    )


def test_a_foreign_table_needs_only_a_time_captured_at():
    """Another table is accepted unless its captured_at is not a timestamp."""
    assert schema_problem("extra", pa.schema([("x", pa.int8())])) is None
    assert schema_problem("extra", pa.schema([("captured_at", pa.timestamp("s"))])) is None
    assert schema_problem("extra", pa.schema([("captured_at", pa.string())])) == (
        "column captured_at is string, not a timestamp"
    )


def test_partition_range_bounds():
    """Partitions cover [1970-01-01, 2262-01-01): the last microsecond in, the end out."""
    assert in_partition_range(FIRST_PARTITION_US) and not in_partition_range(FIRST_PARTITION_US - 1)
    assert in_partition_range(END_PARTITION_US - 1) and not in_partition_range(END_PARTITION_US)
    assert pa.scalar(END_PARTITION_US, pa.timestamp("us")).as_py().year == 2262
