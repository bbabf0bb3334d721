"""What the signals and the tracing add to a durable step, with nothing listening.

The runtime on the in-memory store (no database, so the difference is not
lost in I/O), one run of ``--steps`` trivial steps ticked to its end, under
four set-ups, interleaved round by round so that a loaded machine slows
them alike:

- ``bare``: no observer, no tracer (the runtime core alone);
- ``signals``: the Django app's signal observer, no receiver connected;
- ``otel-api``: that, and the OpenTelemetry tracer on the global provider
  that no SDK was set up for (what an app with the extra but no exporter
  pays: the tracer sees that nothing records and opens no span);
- ``otel-sdk``: that, with an SDK tracer provider recording every span into
  an in-memory exporter (what tracing costs when it is on).

Prints the best and the median microseconds per step of each (the best is
the steadier figure on a shared machine), and their difference from ``bare``.

Run: ``uv run python benchmarks/observe_overhead.py [--steps 2000] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from pydantic import BaseModel

from hookflow_gen import Context, Flow, workflow
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import MemoryStore
from hookflow_gen.testing import FakeClock


class Count(BaseModel):
    n: int


def noop(i: int) -> int:
    return i


@workflow(name="bench-observe")
def steps(ctx: Context, count: Count) -> Flow[int]:
    total = 0
    for i in range(count.n):
        total += yield from ctx.run(f"s{i}", noop, i)
    return total


def runtime_for(setup: str) -> Runtime:
    runtime = Runtime(MemoryStore(), DatabaseScheduler(), clock=FakeClock(), warm_runs=16)
    if setup == "bare":
        return runtime
    from hookflow_gen.django.signals import SignalObserver

    runtime.observer = SignalObserver()
    if setup == "signals":
        return runtime
    from hookflow_gen._tracing import OpenTelemetryTracer

    if setup == "otel-api":
        runtime.tracer = OpenTelemetryTracer()  # the global provider, which nothing set
        return runtime
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    runtime.tracer = OpenTelemetryTracer(provider)
    return runtime


def one_round(setup: str, n: int) -> float:
    """Microseconds per step of one run of ``n`` steps under ``setup``."""
    runtime = runtime_for(setup)
    run, _ = runtime.start_run(steps, Count(n=n))
    tick: Callable[[str], object] = runtime.tick
    start = time.perf_counter()
    report = tick(run.run_id)
    elapsed = time.perf_counter() - start
    stored = runtime.store.get_run(run.run_id)
    assert stored is not None and stored.status.finished, report
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--setups", nargs="+", default=["bare", "signals", "otel-api", "otel-sdk"])
    args = parser.parse_args()
    setups = tuple(args.setups)
    for setup in setups:
        one_round(setup, 200)  # warm-up: imports, adapters
    times: dict[str, list[float]] = {setup: [] for setup in setups}
    for _ in range(args.rounds):
        for setup in setups:
            times[setup].append(one_round(setup, args.steps))
    first = times[setups[0]]
    best_bare, median_bare = min(first), statistics.median(first)
    print(f"{args.steps} steps per run, {args.rounds} interleaved rounds")
    print(f"| set-up | best us/step | over {setups[0]} | median us/step | over {setups[0]} |")
    print("|---|---:|---:|---:|---:|")
    for setup in setups:
        best, median = min(times[setup]), statistics.median(times[setup])
        print(
            f"| {setup} | {best:.1f} | {best - best_bare:+.1f} "
            f"| {median:.1f} | {median - median_bare:+.1f} |"
        )


if __name__ == "__main__":
    main()
