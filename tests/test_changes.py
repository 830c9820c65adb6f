"""archiver.changes: which rows a snapshot writes, and tasks per state, on recorded events."""

from __future__ import annotations

from collections import Counter

import pytest
from celery.events.state import State as CeleryState
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import State
from archiver.changes import ChangeDetector, StateCounts, current_tasks


def feed(state, events) -> None:
    """Apply a private copy of every event (Celery's State mutates the dicts it is given)."""
    for event in events:
        state.event(dict(event))


def true_counts(state) -> Counter:
    """Tasks per state by reading every task (the oracle)."""
    return Counter(t.state for t in current_tasks(state).values())


def test_signatures_select_the_tasks_events_touched(small_events):
    """Celery's State: every task at first, none when nothing happened, then those touched."""
    state, changes = CeleryState(), ChangeDetector("changes")
    half = len(small_events) // 2
    feed(state, small_events[:half])
    first = changes.tasks(state, None)
    assert {t.uuid for t in first} == set(current_tasks(state))
    assert changes.states_read() == true_counts(state)
    changes.commit()
    assert changes.tasks(state, None) == []
    changes.commit()
    feed(state, small_events[half:])
    touched = {e["uuid"] for e in small_events[half:] if e["type"].startswith("task-")}
    assert {t.uuid for t in changes.tasks(state, None)} == touched


def test_without_commit_the_same_rows_are_selected_again(small_events):
    """A snapshot that failed (no commit) leaves its rows for the next one."""
    state, changes = CeleryState(), ChangeDetector("changes")
    feed(state, small_events)
    rows = [(w, True) for w in state.workers.values()]
    first_tasks, first_workers = changes.tasks(state, None), changes.workers(rows)
    assert first_tasks and len(first_workers) == len(rows)
    assert changes.tasks(state, None) == first_tasks  # not committed: selected again
    assert changes.workers(rows) == first_workers
    changes.commit()
    assert changes.tasks(state, None) == [] and changes.workers(rows) == []
    assert len(changes.workers([(w, False) for w, _ in rows])) == len(rows)  # alive changed


def test_full_mode_selects_everything_and_the_evicted_changes(small_events):
    """Full mode: every task of the state, plus reported changes the LRU evicted."""
    state = State(max_tasks_in_memory=5)
    feed(state, small_events)
    taken, _ = state.take_changes()
    selected = ChangeDetector("full").tasks(state, taken)
    in_state = set(current_tasks(state))
    assert {t.uuid for t in selected} == in_state | {t.uuid for t in taken}
    assert ChangeDetector("changes").tasks(state, taken) == taken


def test_a_bad_mode_is_refused():
    """A mode other than changes/full is a one-line ValueError."""
    with pytest.raises(ValueError, match="mode must be 'changes' or 'full', got 'delta'"):
        ChangeDetector("delta")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12))
def test_state_counts_follow_changes_and_evictions(sample_events, cuts):
    """Updated from each snapshot's changes only, the counts equal a full count,
    through LRU evictions (a small state) and invalidations."""
    state, counts = State(max_tasks_in_memory=30), StateCounts()
    position = 0
    for i, cut in enumerate(cuts):
        feed(state, sample_events[position : position + cut * 10])
        position += cut * 10
        taken, _ = state.take_changes()
        uuids = [t.uuid for t in taken]
        got = counts.update(state, current_tasks(state), uuids, [t.state for t in taken])
        assert +got == true_counts(state)
        if i % 4 == 3:
            counts.invalidate()


def test_reset_starts_from_a_full_read(small_events):
    """reset() takes every task's state as read elsewhere; update() continues from it."""
    state, counts = State(), StateCounts(recount_every=10**6)
    feed(state, small_events[:100])
    state.take_changes()
    tasks = current_tasks(state)
    got = counts.reset(list(tasks), [t.state for t in tasks.values()], dropped=0)
    assert got == true_counts(state) and counts.since_recount == 0
    feed(state, small_events[100:])
    taken, _ = state.take_changes()
    got = counts.update(state, tasks, [t.uuid for t in taken], [t.state for t in taken])
    assert +got == true_counts(state) and counts.since_recount == 1
