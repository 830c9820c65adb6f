"""Events per second of archiver.State against celery.events.state.State.

Feeds the recorded events (``data/celery-events-sample.jsonl``) repeated to at least
1M events to both implementations in the same process, interleaving the runs and
keeping the best of three for each, then prints both rates and the ratio.

Two workloads:

* ``replay``: the recording repeated as is (the same 2,111 tasks over and over).
* ``stream``: every repetition gets fresh task ids and clocks/timestamps shifted
  forward, like a cluster that keeps running: the 10,000-task LRU fills and evicts.

Only ``state.event(e)`` is timed, in CPU time of this process (``time.process_time``,
so the figures hold on a busy, shared machine). Each run feeds its own copy of every
event (Celery's State mutates the dicts it is given); copies are made per repetition,
outside the timing.

Usage: ``.venv/bin/python bench/bench_state.py [--events N] [--rounds R] [--workload W]``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from celery.events.state import State as CeleryState

from archiver.state import State as ArchiverState

DATA = Path(__file__).resolve().parent.parent / "data" / "celery-events-sample.jsonl"


def load(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def replay_batches(events: list[dict], reps: int) -> Iterator[list[dict]]:
    """The recording as is, ``reps`` times."""
    for _ in range(reps):
        yield [dict(e) for e in events]


def stream_batches(events: list[dict], reps: int) -> Iterator[list[dict]]:
    """The recording ``reps`` times, with new task ids and later clocks/timestamps each time."""
    clock_step = max(e["clock"] for e in events) + 1
    stamps = [e["timestamp"] for e in events]
    time_step = max(stamps) - min(stamps) + 1.0
    for rep in range(reps):
        batch = []
        for e in events:
            d = dict(e)
            d["clock"] += rep * clock_step
            d["timestamp"] += rep * time_step
            d["local_received"] += rep * time_step
            for key in ("uuid", "parent_id", "root_id"):
                if d.get(key):
                    d[key] = f"{d[key]}~{rep}"
            batch.append(d)
        yield batch


def run(make_state: Callable[[], object], batches: Iterator[list[dict]]) -> tuple[float, int]:
    """Feed every batch to a new state; return (seconds spent in ``event``, events fed)."""
    state = make_state()
    event = state.event
    elapsed, count = 0.0, 0
    gc.collect()
    for batch in batches:
        started = time.process_time()
        for e in batch:
            event(e)
        elapsed += time.process_time() - started
        count += len(batch)
    if state.event_count != count:  # sanity: every event was accepted
        raise SystemExit(f"{type(state).__module__}: {state.event_count} events, expected {count}")
    return elapsed, count


def bench(workload: str, events: list[dict], reps: int, rounds: int) -> float:
    make_batches = replay_batches if workload == "replay" else stream_batches
    impls = {"archiver": ArchiverState, "celery": CeleryState}
    best = dict.fromkeys(impls, float("inf"))
    total = 0
    for round_ in range(1, rounds + 1):
        for name, cls in impls.items():
            elapsed, total = run(cls, make_batches(events, reps))
            best[name] = min(best[name], elapsed)
            print(f"  [{workload}] round {round_} {name:8s} {total / elapsed:12,.0f} events/s")
    ours, theirs = total / best["archiver"], total / best["celery"]
    print(f"{workload}: {total:,} events, best of {rounds}")
    print(f"  archiver.State            {ours:12,.0f} events/s")
    print(f"  celery.events.state.State {theirs:12,.0f} events/s")
    print(f"  ratio archiver/celery     {ours / theirs:12.2f}x")
    return ours / theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="at least this many events")
    parser.add_argument("--rounds", type=int, default=3, help="runs per implementation (best kept)")
    parser.add_argument(
        "--workload", choices=["replay", "stream", "both"], default="both", help="what to feed"
    )
    args = parser.parse_args(argv)

    import celery

    # No camera takes changes here, so archiver's cap on held changes kicks in and warns.
    logging.getLogger("archiver.state").setLevel(logging.ERROR)
    events = load(DATA)
    reps = -(-args.events // len(events))
    total = len(events) * reps
    print(
        f"Python {platform.python_version()} {sys.implementation.name}, celery {celery.__version__}"
    )
    print(f"{len(events):,} recorded events x {reps} = {total:,} events per run")
    workloads = ["replay", "stream"] if args.workload == "both" else [args.workload]
    ratios = [bench(w, events, reps, args.rounds) for w in workloads]
    return 0 if min(ratios) >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
