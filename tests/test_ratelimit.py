"""Tests for archiver.ratelimit: Celery-style rate strings and the token bucket."""

from __future__ import annotations

import math

import pytest

from archiver.ratelimit import ACCEPTED, TokenBucket, parse_rate


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestParseRate:
    @pytest.mark.parametrize(
        ("value", "per_second"),
        [
            ("10/s", 10.0),
            ("100/m", 100 / 60),
            ("1/h", 1 / 3600),
            ("0.5", 0.5),
            ("7", 7.0),
            (" 3 / m ", 3 / 60),
            (5, 5.0),
            (0.25, 0.25),
        ],
    )
    def test_valid_forms(self, value, per_second):
        """'N/s', 'N/m', 'N/h', bare numeric strings and numbers become tokens per second."""
        assert math.isclose(parse_rate(value), per_second)

    @pytest.mark.parametrize(
        "value",
        ["fast", "1/d", "-1/s", "0/s", 0, -3, "", "10/", "/s", "nan", "inf", True, None, [1]],
    )
    def test_invalid_forms_name_the_accepted_ones(self, value):
        """Anything else raises ValueError listing the accepted forms."""
        with pytest.raises(ValueError, match=r"invalid maxrate .*expected 'N/s', 'N/m', 'N/h'"):
            parse_rate(value)

    def test_accepted_forms_are_documented(self):
        """The message constant mentions every unit and the bare-number form."""
        for form in ("'N/s'", "'N/m'", "'N/h'", "number per second"):
            assert form in ACCEPTED


class TestTokenBucket:
    def test_starts_full(self):
        """A new bucket of capacity 1 lets exactly one token through at once."""
        bucket = TokenBucket(1.0, capacity=1, clock=FakeClock())
        assert bucket.can_consume()
        assert not bucket.can_consume()

    def test_refills_at_fill_rate(self):
        """Tokens come back at ``fill_rate`` per second of the clock."""
        clock = FakeClock()
        bucket = TokenBucket(2.0, capacity=1, clock=clock)
        assert bucket.can_consume()
        clock.now += 0.25
        assert not bucket.can_consume()
        clock.now += 0.25
        assert bucket.can_consume()

    def test_capacity_caps_bursts(self):
        """A long idle period refills no more than ``capacity`` tokens."""
        clock = FakeClock()
        bucket = TokenBucket(10.0, capacity=1, clock=clock)
        bucket.can_consume()
        clock.now += 3600
        assert bucket.can_consume()
        assert not bucket.can_consume()

    def test_expected_time(self):
        """``expected_time`` says how long until a token is available."""
        clock = FakeClock()
        bucket = TokenBucket(0.5, capacity=1, clock=clock)
        assert bucket.expected_time() == 0.0
        bucket.can_consume()
        assert math.isclose(bucket.expected_time(), 2.0)
        clock.now += 1.5
        assert math.isclose(bucket.expected_time(), 0.5)

    def test_repr(self):
        """The repr shows the rate and capacity."""
        assert repr(TokenBucket(2, capacity=1)) == "<TokenBucket 2/s capacity=1>"
