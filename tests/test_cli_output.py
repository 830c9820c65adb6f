"""The CLI's shared output helpers."""

from __future__ import annotations

import pytest

from archiver.cli.output import human_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2048 * 1024**3, "2.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),
    ],
)
def test_human_bytes(n, text):
    """Binary units up to TiB, one decimal above bytes (``info`` and ``compact`` alike)."""
    assert human_bytes(n) == text
