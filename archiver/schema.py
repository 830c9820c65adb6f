"""The archive's explicit Arrow schemas, one per table, versioned in each file's metadata."""

from __future__ import annotations

import pyarrow as pa

from ._version import __version__

#: Bump when a column is added, removed or changes type; readers fill missing columns with nulls.
SCHEMA_VERSION = 1

TIMESTAMP = pa.timestamp("us", tz="UTC")
#: Strings with few distinct values (names, states, hostnames) are dictionary-encoded.
CATEGORY = pa.dictionary(pa.int32(), pa.string())
#: Field metadata asking for a Parquet dictionary on a column that is not a dictionary
#: in Arrow: values that repeat (the same args in every version of a task, the same
#: traceback in many tasks). Unique values (uuids, times) get none: there a dictionary
#: costs write time and bytes (bench/bench_camera.py). See :func:`dictionary_columns`.
PARQUET_DICTIONARY = {b"archiver.parquet_dictionary": b"true"}

TASK_TIME_FIELDS = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
    "timestamp",
)
TASK_TEXT_FIELDS = ("args", "kwargs", "result", "exception", "traceback", "eta", "expires")
TASK_CATEGORY_FIELDS = ("name", "state", "worker", "exchange", "routing_key", "client")
TASK_STATES = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "REJECTED",
)

_HEAD = [
    pa.field("captured_at", TIMESTAMP, nullable=False),
    pa.field("snapshot_id", pa.string(), nullable=False),
]

TASKS = pa.schema(
    [
        *_HEAD,
        pa.field("uuid", pa.string(), nullable=False),
        pa.field("name", CATEGORY),
        pa.field("state", CATEGORY),
        pa.field("worker", CATEGORY),
        *(pa.field(f, TIMESTAMP) for f in TASK_TIME_FIELDS),
        *(pa.field(f, pa.string(), metadata=PARQUET_DICTIONARY) for f in TASK_TEXT_FIELDS),
        pa.field("retries", pa.int32(), metadata=PARQUET_DICTIONARY),
        pa.field("runtime", pa.float64()),
        pa.field("exchange", CATEGORY),
        pa.field("routing_key", CATEGORY),
        pa.field("client", CATEGORY),
        pa.field("root_id", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("clock", pa.int64()),
    ]
)

WORKERS = pa.schema(
    [
        *_HEAD,
        pa.field("hostname", CATEGORY, nullable=False),
        pa.field("alive", pa.bool_()),
        pa.field("pid", pa.int64()),
        pa.field("freq", pa.float64()),
        pa.field("active", pa.int64()),
        pa.field("processed", pa.int64()),
        pa.field("loadavg", pa.list_(pa.float64())),
        pa.field("sw_ident", CATEGORY),
        pa.field("sw_ver", CATEGORY),
        pa.field("sw_sys", CATEGORY),
        pa.field("last_heartbeat", TIMESTAMP),
    ]
)

SNAPSHOTS = pa.schema(
    [
        *_HEAD,
        pa.field("event_count", pa.int64()),
        pa.field("task_count", pa.int64()),
        pa.field("tasks_in_state", pa.int64()),
        pa.field("worker_count", pa.int64()),
        pa.field("alive_workers", pa.int64()),
        pa.field("tasks_written", pa.int64()),
        *(pa.field(f"tasks_{s.lower()}", pa.int64()) for s in TASK_STATES),
        pa.field("tasks_other", pa.int64()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"tasks": TASKS, "workers": WORKERS, "snapshots": SNAPSHOTS}
#: The column that identifies an entity per table (used by ``latest`` and compaction).
ENTITY_KEYS = {"tasks": "uuid", "workers": "hostname", "snapshots": "snapshot_id"}
#: One partition's span (an hour) in microseconds, the unit of ``captured_at``.
HOUR_US = 3_600_000_000
#: The span partitions cover, ``[FIRST_PARTITION_US, END_PARTITION_US)`` µs since the
#: epoch: 1970-01-01 up to 2262-01-01, inside pandas' nanosecond timestamps. The sink
#: writes no partition outside it and readers accept every partition inside it.
FIRST_PARTITION_US = 0
END_PARTITION_US = 9_214_646_400 * 10**6


def in_partition_range(us: int) -> bool:
    """Whether the time ``us`` (µs since the epoch) may have a partition."""
    return FIRST_PARTITION_US <= us < END_PARTITION_US


#: Partition columns added by the hive layout ``date=YYYY-MM-DD/hour=H``.
PARTITION_SCHEMA = pa.schema([("date", pa.string()), ("hour", pa.int32())])


def dictionary_columns(schema: pa.Schema) -> list[str] | bool:
    """The columns to write with a Parquet dictionary: Arrow dictionaries and fields
    marked with :data:`PARQUET_DICTIONARY`; every column (Arrow's default) when no
    field is marked."""
    marked = [
        f.name
        for f in schema
        if f.metadata and f.metadata.get(b"archiver.parquet_dictionary") == b"true"
    ]
    if not marked:
        return True
    return [f.name for f in schema if pa.types.is_dictionary(f.type) or f.name in marked]


def with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    """``schema`` tagged with the table name, schema version and archiver version."""
    return schema.with_metadata(
        {
            b"archiver.table": table.encode(),
            b"archiver.schema_version": str(SCHEMA_VERSION).encode(),
            b"archiver.version": __version__.encode(),
        }
    )


def schema_problem(table: str, schema: pa.Schema) -> str | None:
    """Why a file with ``schema`` cannot be read as part of ``table`` (None: it can)."""
    expected = SCHEMAS.get(table)
    if expected is None:  # a foreign table: only the time column matters
        i = schema.get_field_index("captured_at")
        if i >= 0 and not pa.types.is_timestamp(schema.field(i).type):
            return f"column captured_at is {schema.field(i).type}, not a timestamp"
        return None
    for field in expected:
        i = schema.get_field_index(field.name)
        if i < 0:
            if not field.nullable:
                return f"column {field.name} is missing"
        elif not _compatible(schema.field(i).type, field.type):
            return f"column {field.name} is {schema.field(i).type}, expected {field.type}"
    return None


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of type ``actual`` reads as ``expected`` (a cast that makes sense)."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_dictionary(expected):
        expected = expected.value_type
    kinds = (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        pa.types.is_timestamp,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
    )
    for kind in kinds:
        if kind(expected):
            return bool(kind(actual))
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    return bool(actual == expected)
