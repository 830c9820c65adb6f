"""Celery-style signals: receivers are called with keyword arguments only."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Receiver = Callable[..., Any]


def _ref(receiver: Receiver, weak: bool) -> Callable[[], Receiver | None]:
    if not weak:
        return lambda: receiver
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return weakref.WeakMethod(receiver)
    try:
        return weakref.ref(receiver)
    except TypeError:  # builtins and some callables cannot be weakly referenced
        return lambda: receiver


def _key(obj: Any) -> Any:
    if hasattr(obj, "__self__") and hasattr(obj, "__func__"):
        return (id(obj.__self__), id(obj.__func__))
    return id(obj)


class Signal:
    """A named signal, as in ``celery.utils.dispatch.Signal``.

    ``send(sender, **named)`` calls every connected receiver as
    ``receiver(signal=self, sender=sender, **named)``. A receiver that raises is
    logged and the remaining receivers still run.
    """

    def __init__(self, name: str | None = None, providing_args: set[str] | None = None) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args or ())
        self._receivers: list[tuple[Any, Any, Callable[[], Receiver | None]]] = []
        self._lock = threading.Lock()

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
    ) -> Any:
        """Connect ``receiver``; usable as ``@signal.connect`` or ``@signal.connect(sender=x)``."""

        def _connect(fun: Receiver) -> Receiver:
            if not callable(fun):
                raise TypeError(f"signal receiver must be callable, got {fun!r}")
            key = (dispatch_uid if dispatch_uid is not None else _key(fun), _key(sender))
            with self._lock:
                if all(k != key for k, _, _ in self._receivers):
                    self._receivers.append((key, sender, _ref(fun, weak)))
            return fun

        if receiver is None:
            return _connect
        return _connect(receiver)

    def disconnect(
        self, receiver: Receiver | None = None, *, sender: Any = None, dispatch_uid: Any = None
    ) -> bool:
        """Disconnect a receiver; returns True when one was connected."""
        key = (dispatch_uid if dispatch_uid is not None else _key(receiver), _key(sender))
        with self._lock:
            before = len(self._receivers)
            self._receivers = [r for r in self._receivers if r[0] != key]
            return len(self._receivers) != before

    @property
    def receivers(self) -> list[Receiver]:
        """The live receivers, in connection order."""
        with self._lock:
            entries = list(self._receivers)
        return [fun for _, _, ref in entries if (fun := ref()) is not None]

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._live_receivers(sender))

    def _live_receivers(self, sender: Any) -> list[Receiver]:
        with self._lock:
            entries = list(self._receivers)
            dead = [e for e in entries if e[2]() is None]
            if dead:
                self._receivers = [e for e in self._receivers if e not in dead]
        return [
            fun
            for _, wanted, ref in entries
            if (wanted is None or wanted is sender) and (fun := ref()) is not None
        ]

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver for ``sender``; returns ``[(receiver, response), ...]``."""
        responses = []
        for receiver in self._live_receivers(sender):
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception("Signal %s: receiver %r raised: %r", self.name, receiver, exc)
                response = exc
            responses.append((receiver, response))
        return responses

    def __repr__(self) -> str:
        return f"<Signal: {self.name} providing_args={set(self.providing_args)!r}>"
