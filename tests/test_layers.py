"""The package's modules import one way, through five layers, with no cycle.

Every module of ``archiver`` is parsed with ``ast``; every import counts, those
inside functions included. Importing ``archiver.maintenance.x`` also runs
``archiver.maintenance/__init__``, so from outside that package it counts as an
import of the package too (the package root ``archiver`` aside: Python imports it
first whatever is asked).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "archiver"

PURE, IO, READ, OPERATIONS, INTERFACES = 1, 2, 3, 4, 5
#: The layer of each module. A module may import only from its own layer or below.
LAYERS = {
    # 1. pure: errors, times and durations, schemas, the on-disk layout, in-memory rules
    "archiver._version": PURE,
    "archiver.errors": PURE,
    "archiver.timeparse": PURE,
    "archiver.schema": PURE,
    "archiver.layout": PURE,
    "archiver.rows": PURE,
    "archiver.state": PURE,
    "archiver.changes": PURE,
    "archiver.convert": PURE,
    "archiver.timer": PURE,
    "archiver.replay_timer": PURE,
    "archiver.ratelimit": PURE,
    "archiver.signals": PURE,
    "archiver.camera": PURE,
    "archiver.maintenance.retention": PURE,
    "archiver.maintenance.reports": PURE,
    # 2. I/O primitives: storage and listing, writing files, locks, event sources
    "archiver.storage": IO,
    "archiver.lockfile": IO,
    "archiver.pidfile": IO,
    "archiver.listing": IO,
    "archiver.archive_path": IO,
    "archiver.sink": IO,
    "archiver.sources": IO,
    # 3. the read handle
    "archiver.archive": READ,
    # 4. operations: query, check, cleanup, recording
    "archiver.query": OPERATIONS,
    "archiver.export": OPERATIONS,
    "archiver.check": OPERATIONS,
    "archiver.maintenance": OPERATIONS,
    "archiver.maintenance.lock": OPERATIONS,
    "archiver.maintenance.recovery": OPERATIONS,
    "archiver.maintenance.rewrite": OPERATIONS,
    "archiver.maintenance.compaction": OPERATIONS,
    "archiver.maintenance.expiry": OPERATIONS,
    "archiver.parquet_camera": OPERATIONS,
    "archiver.record": OPERATIONS,
    "archiver.demo": OPERATIONS,
    # 5. interfaces: the object API, analysis, report, CLI, the package root
    "archiver.api": INTERFACES,
    "archiver.analysis": INTERFACES,
    "archiver.report": INTERFACES,
    "archiver": INTERFACES,
    "archiver.__main__": INTERFACES,
    "archiver.cli": INTERFACES,
    "archiver.cli.output": INTERFACES,
    "archiver.cli.cmd_check": INTERFACES,
    "archiver.cli.cmd_files": INTERFACES,
    "archiver.cli.cmd_cleanup": INTERFACES,
    "archiver.cli.cmd_query": INTERFACES,
    "archiver.cli.cmd_record": INTERFACES,
    "archiver.cli.cmd_report": INTERFACES,
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # ``from . import x`` imports the module ``x``
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
    # The packages holding ``name`` are already being imported when it runs.
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    deps = set()
    for target in targets:
        while target and target not in known:  # ``import archiver.x.y`` of a name in x
            target = target.rpartition(".")[0]
        deps.add(target)
        # Importing a.b.c runs a.b's __init__ too (the root package aside).
        steps = target.split(".")
        deps |= {".".join(steps[:i]) for i in range(2, len(steps))} - ancestors
    deps.discard(name)
    return {d for d in deps if d in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    """A new module must be given a layer here (and a stale entry removed)."""
    assert set(modules()) == set(LAYERS)


def test_no_import_cycle():
    """No cycle among the package's modules, counting imports inside functions."""
    assert cycles(graph()) == []


def test_imports_point_down():
    """A module imports only from its own layer or a lower one."""
    upward = sorted(
        f"{name} (layer {LAYERS[name]}) imports {dep} (layer {LAYERS[dep]})"
        for name, deps in graph().items()
        for dep in deps
        if LAYERS[dep] > LAYERS[name]
    )
    assert upward == []


LAZY = "def f():\n    from .maintenance import recovery\n"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import schema\n", {"archiver.schema"}),
        (LAZY, {"archiver.maintenance", "archiver.maintenance.recovery"}),
        ("import archiver.layout\n", {"archiver.layout"}),
        ("from .api import Archive\n", {"archiver.api"}),
    ],
)
def test_the_parser_sees_every_kind_of_import(tmp_path, source, expected):
    """Relative, absolute and function-level imports, and the packages they run."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports("archiver.probe", path, set(modules())) == expected


def test_a_cycle_is_found():
    """The checker itself fails on a cycle, even one through a function-level import."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": set(), "b": {"a"}}) == []


# -- the tests themselves ---------------------------------------------------------------
TESTS = Path(__file__).resolve().parent


def undocumented_tests(source: str) -> list[str]:
    """The ``test_*`` functions and methods in ``source`` without a docstring."""
    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    ]


def imported_test_modules(source: str) -> set[str]:
    """The test modules (``test_*``) that ``source`` imports, relatively or as ``tests.x``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            last = name.rpartition(".")[2]
            if last.startswith("test_"):
                found.add(last)
    return found


def test_every_test_has_a_docstring():
    """Each test function and method in tests/ says in a docstring what it asserts."""
    missing = [
        f"{path.name}::{name}"
        for path in sorted(TESTS.glob("*.py"))
        for name in undocumented_tests(path.read_text())
    ]
    assert missing == []


def test_no_test_module_imports_another():
    """Shared code lives in conftest.py or helpers.py, never in another test module."""
    crossing = {
        path.name: sorted(found)
        for path in sorted(TESTS.glob("*.py"))
        if (found := imported_test_modules(path.read_text()))
    }
    assert crossing == {}


@pytest.mark.parametrize(
    ("source", "undocumented", "imported"),
    [
        ("def test_a():\n    pass\n", ["test_a"], set()),
        ('class TestX:\n    def test_b(self):\n        """B."""\n', [], set()),
        ("from .test_query import record\n", [], {"test_query"}),
        ("from tests import test_state\nimport tests.test_sink\n", [], {"test_state", "test_sink"}),
        ("from .helpers import record_copies\n", [], set()),
    ],
)
def test_the_test_checks_see_what_they_look_for(source, undocumented, imported):
    """The docstring and cross-import checks flag what they must, and nothing else."""
    assert undocumented_tests(source) == undocumented
    assert imported_test_modules(source) == imported
