"""Cameras for `archiver record --camera module:Class` tests."""

from __future__ import annotations

from typing import Any, ClassVar

from archiver import Polaroid


class CountingCamera(Polaroid):
    """Remembers (event_count, tasks in state) at every shot, in the class (CLI tests)."""

    shots: ClassVar[list[tuple[int, int]]] = []

    def on_shutter(self, state: Any) -> None:
        type(self).shots.append((state.event_count, len(state.tasks)))


class NotACamera:
    """Not a Polaroid: `--camera tests.cameras:NotACamera` must be refused."""
