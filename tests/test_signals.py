"""Tests for archiver.signals.Signal (Celery-style dispatch)."""

from __future__ import annotations

import gc
import logging

import pytest

from archiver.signals import Signal


class Recorder:
    """A receiver that records the arguments it was called with."""

    def __init__(self, response=None) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.response = response

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.response


class TestSend:
    def test_receivers_get_keyword_arguments_only(self):
        """Receivers are called as ``receiver(signal=, sender=, **named)``, never positionally."""
        sig = Signal(name="s", providing_args={"state"})
        rec = Recorder()
        sig.connect(rec)
        sig.send(sender="S", state=42)
        assert rec.calls == [((), {"signal": sig, "sender": "S", "state": 42})]

    def test_returns_receiver_response_pairs(self):
        """``send`` returns ``[(receiver, response), ...]`` in connection order."""
        sig = Signal()
        first, second = Recorder("a"), Recorder("b")
        sig.connect(first)
        sig.connect(second)
        assert sig.send(sender=None) == [(first, "a"), (second, "b")]

    def test_no_receivers(self):
        """Sending with nobody connected does nothing and returns an empty list."""
        assert Signal().send(sender=object()) == []

    def test_raising_receiver_is_logged_and_others_still_run(self, caplog):
        """A receiver that raises is logged; the next receivers still run."""
        sig = Signal(name="boom_signal")

        def boom(**kwargs):
            raise RuntimeError("receiver failed")

        after = Recorder("ok")
        sig.connect(boom)
        sig.connect(after)
        with caplog.at_level(logging.ERROR, logger="archiver.signals"):
            responses = sig.send(sender=None)
        assert len(after.calls) == 1
        assert isinstance(responses[0][1], RuntimeError)
        assert responses[1] == (after, "ok")
        assert "boom_signal" in caplog.text
        assert "receiver failed" in caplog.text


class TestConnect:
    def test_connect_as_decorator(self):
        """``@signal.connect`` connects the function and returns it unchanged."""
        sig = Signal()
        seen = []

        @sig.connect
        def receiver(**kwargs):
            seen.append(kwargs["sender"])

        sig.send(sender="x")
        assert seen == ["x"]
        assert callable(receiver)

    def test_connect_as_decorator_with_sender(self):
        """``@signal.connect(sender=x)`` only fires for that sender."""
        sig = Signal()
        wanted, other = object(), object()
        seen = []

        @sig.connect(sender=wanted)
        def receiver(sender, **kwargs):
            seen.append(sender)

        sig.send(sender=other)
        sig.send(sender=wanted)
        assert seen == [wanted]

    def test_sender_filter_uses_identity(self):
        """The sender filter compares by identity, not equality."""
        sig = Signal()
        rec = Recorder()
        wanted = [1]
        sig.connect(rec, sender=wanted)
        sig.send(sender=[1])
        assert rec.calls == []
        sig.send(sender=wanted)
        assert len(rec.calls) == 1

    def test_connecting_twice_is_ignored(self):
        """Connecting the same receiver twice calls it only once."""
        sig = Signal()
        rec = Recorder()
        sig.connect(rec)
        sig.connect(rec)
        sig.send(sender=None)
        assert len(rec.calls) == 1

    def test_dispatch_uid_deduplicates(self):
        """Two receivers with the same ``dispatch_uid`` count as one."""
        sig = Signal()
        first, second = Recorder(), Recorder()
        sig.connect(first, dispatch_uid="uid")
        sig.connect(second, dispatch_uid="uid")
        sig.send(sender=None)
        assert len(first.calls) == 1
        assert second.calls == []

    def test_not_callable(self):
        """Connecting something that is not callable raises TypeError."""
        with pytest.raises(TypeError, match="must be callable"):
            Signal().connect(42)

    def test_weak_receiver_goes_away(self):
        """By default receivers are weakly referenced, as in Celery."""
        sig = Signal()

        def receiver(**kwargs):
            return None

        sig.connect(receiver)
        assert sig.has_listeners()
        del receiver
        gc.collect()
        assert not sig.has_listeners()
        assert sig.send(sender=None) == []

    def test_weak_bound_method_goes_away(self):
        """A bound method receiver goes away with its instance."""
        sig = Signal()
        rec = Recorder()
        sig.connect(rec.__call__)
        assert len(sig.receivers) == 1
        del rec
        gc.collect()
        assert sig.receivers == []

    def test_strong_receiver_stays(self):
        """``weak=False`` keeps a receiver alive even when nothing else refers to it."""
        sig = Signal()
        seen = []
        sig.connect(lambda **kw: seen.append(1), weak=False)
        gc.collect()
        sig.send(sender=None)
        assert seen == [1]

    def test_receivers_in_connection_order(self):
        """``receivers`` lists live receivers in the order they were connected."""
        sig = Signal()
        first, second = Recorder(), Recorder()
        sig.connect(first)
        sig.connect(second)
        assert sig.receivers == [first, second]

    def test_has_listeners_for_sender(self):
        """``has_listeners(sender)`` honours the sender filter."""
        sig = Signal()
        wanted = object()
        rec = Recorder()
        sig.connect(rec, sender=wanted)
        assert sig.has_listeners(wanted)
        assert not sig.has_listeners(object())


class TestDisconnect:
    def test_disconnect(self):
        """A disconnected receiver is no longer called; ``disconnect`` says whether it was there."""
        sig = Signal()
        rec = Recorder()
        sig.connect(rec)
        assert sig.disconnect(rec) is True
        assert sig.disconnect(rec) is False
        sig.send(sender=None)
        assert rec.calls == []

    def test_disconnect_needs_the_same_sender(self):
        """A receiver connected for a sender is disconnected with that same sender."""
        sig = Signal()
        rec = Recorder()
        sender = object()
        sig.connect(rec, sender=sender)
        assert sig.disconnect(rec) is False
        assert sig.disconnect(rec, sender=sender) is True

    def test_disconnect_by_dispatch_uid(self):
        """A receiver connected with a ``dispatch_uid`` is disconnected by it."""
        sig = Signal()
        rec = Recorder()
        sig.connect(rec, dispatch_uid="uid")
        assert sig.disconnect(dispatch_uid="uid") is True
        sig.send(sender=None)
        assert rec.calls == []


class TestRepr:
    def test_repr(self):
        """The repr shows the name and the provided arguments."""
        sig = Signal(name="shutter_signal", providing_args={"state"})
        assert repr(sig) == "<Signal: shutter_signal providing_args={'state'}>"
        assert sig.providing_args == frozenset({"state"})
