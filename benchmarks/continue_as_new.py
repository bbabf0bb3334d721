"""What continue-as-new saves: the cost of a cold wake-up of a long event loop.

A listener waits for events one after another. Each event wakes the run
cold (no warm generator, as after a restart or an eviction), so the tick
replays the run's whole journal first. As one run, the n-th event replays
n records; continuing as new every ``--every`` events keeps the journal
short. Both run on the in-memory store, so the figures are the engine's and
the runtime's, not a database's.

Run: ``uv run python benchmarks/continue_as_new.py [--events 200 1000] [--every 50]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from pydantic import BaseModel

from hookflow_gen import Context, Flow, workflow
from hookflow_gen.testing import WorkflowEnvironment


class Loop(BaseModel):
    key: str
    events: int
    every: int
    seen: int = 0


class Event(BaseModel):
    n: int


@workflow(name="bench-listen-forever")
def listen_forever(ctx: Context, loop: Loop) -> Flow[int]:
    seen = loop.seen
    while seen < loop.events:
        event = yield from ctx.wait_for_event(f"event-{seen}", Event, key=loop.key)
        seen += 1
        ctx.set_status(event)
    return seen


@workflow(name="bench-listen-in-chunks")
def listen_in_chunks(ctx: Context, loop: Loop) -> Flow[int]:
    seen = loop.seen
    for _ in range(loop.every):
        if seen >= loop.events:
            return seen
        event = yield from ctx.wait_for_event(f"event-{seen}", Event, key=loop.key)
        seen += 1
        ctx.set_status(event)
    if seen >= loop.events:
        return seen
    nxt = Loop(key=loop.key, events=loop.events, every=loop.every, seen=seen)
    return (yield from ctx.continue_as_new(listen_in_chunks, nxt))


def measure(chunked: bool, events: int, every: int) -> tuple[float, float]:
    """(median, last tenth's median) microseconds per cold-woken event."""
    flow = listen_in_chunks if chunked else listen_forever
    key = f"{'chunks' if chunked else 'forever'}-{events}"
    with WorkflowEnvironment() as env:
        handle = flow.start(Loop(key=key, events=events, every=every))
        took: list[float] = []
        for n in range(events):
            env.runtime.close()  # no warm generator: every wake-up replays its journal
            started = time.perf_counter()
            env.notify(key, Event(n=n))
            took.append((time.perf_counter() - started) * 1e6)
        assert handle.result() == events
    return statistics.median(took), statistics.median(took[-max(events // 10, 1) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    print(f"cold-woken event loop, microseconds per event (continue every {args.every})")
    print(f"{'events':>8} {'shape':>22} {'median':>10} {'last 10%':>10}")
    for events in args.events:
        for chunked in (False, True):
            median, tail = measure(chunked, events, args.every)
            shape = "continue-as-new" if chunked else "one run"
            print(f"{events:>8} {shape:>22} {median:>10.0f} {tail:>10.0f}")


if __name__ == "__main__":
    main()
