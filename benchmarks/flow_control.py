"""What flow control costs per step, on the in-memory store (the runtime's own Python).

Three shapes, each one run of ``--n`` steps, median of ``--repeats``:
plain steps (no limits: the hot path flow control must leave alone), steps
under a ``Limit`` and steps under a ``Limit`` and a ``Rate`` loose enough
never to deny (the price of counting slots and starts on every claim).

Times on a shared machine are noisy; the Python function calls per step
(counted by ``cProfile``, the same on every machine) are printed beside
them, so two versions of the runtime can be compared exactly: run the
script with ``PYTHONPATH`` pointing at the other version's ``src``.

Run: ``uv run python benchmarks/flow_control.py [--n 2000] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import statistics
import time
from datetime import timedelta

from pydantic import BaseModel

from hookflow_gen import Context, Flow, step, workflow
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import MemoryStore


class Count(BaseModel):
    n: int


def plain(i: int) -> int:
    return i


@workflow(name="bench-flow-plain")
def bench_plain(ctx: Context, count: Count) -> Flow[int]:
    total = 0
    for i in range(count.n):
        total += yield from ctx.run(f"s{i}", plain, i)
    return total


SHAPES = {"plain": bench_plain}

# A version without flow control (to compare against): only the plain shape runs.
if importlib.util.find_spec("hookflow_gen._flow") is not None:
    from hookflow_gen import Limit, Rate

    @step(concurrency=Limit(4, key="bench"))
    def limited(i: int) -> int:
        return i

    @step(concurrency=Limit(4, key="bench"), rate=Rate(1_000_000, per=timedelta(seconds=1)))
    def rated(i: int) -> int:
        return i

    @workflow(name="bench-flow-limited")
    def bench_limited(ctx: Context, count: Count) -> Flow[int]:
        total = 0
        for i in range(count.n):
            total += yield from ctx.run(f"s{i}", limited, i)
        return total

    @workflow(name="bench-flow-rated")
    def bench_rated(ctx: Context, count: Count) -> Flow[int]:
        total = 0
        for i in range(count.n):
            total += yield from ctx.run(f"s{i}", rated, i)
        return total

    SHAPES["limit"] = bench_limited
    SHAPES["limit+rate"] = bench_rated


def per_step(shape: str, n: int) -> float:
    """Microseconds per step of one run of ``n`` steps, ticked to its end."""
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), budget=timedelta(hours=1))
    run, _ = runtime.start_run(SHAPES[shape], Count(n=n))
    started = time.perf_counter()
    runtime.tick(run.run_id)
    elapsed = time.perf_counter() - started
    assert store.runs[run.run_id].status.value == "completed"
    return elapsed / n * 1e6


def calls_per_step(shape: str, n: int) -> float:
    """Python function calls per step of one run of ``n`` steps."""
    per_step(shape, 10)  # imports and caches out of the count
    profile = cProfile.Profile()
    profile.enable()
    per_step(shape, n)
    profile.disable()
    return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined,no-any-return]  # untyped in typeshed


def main() -> None:
    parser = argparse.ArgumentParser(description="What flow control costs per step.")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    for shape in args.shapes:
        # The rounds interleave nothing else; a warm-up round is dropped.
        times = [per_step(shape, args.n) for _ in range(args.repeats + 1)][1:]
        print(
            f"{shape:>11}: {statistics.median(times):7.1f} us/step "
            f"[{min(times):.1f}-{max(times):.1f}] over {args.repeats} runs of {args.n} steps, "
            f"{calls_per_step(shape, 1000):.2f} calls/step"
        )


if __name__ == "__main__":
    main()
