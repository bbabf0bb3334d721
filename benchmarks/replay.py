"""Replay cost per step, next to its floor, measured in the same run.

The floor is what any replay of a typed step must do: one ``generator.send``
and one pydantic ``TypeAdapter.validate_json`` of the same small model. The
engine adds the determinism check, the journal lookup and the ``yield from``
of a step request; the aim is to stay within 4x of the floor.

Run: ``uv run python benchmarks/replay.py [--n 1000] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Generator
from typing import Any

from pydantic import BaseModel, TypeAdapter

from hookflow_gen import Context, Flow, StepRecord, workflow
from hookflow_gen._context import RunInfo
from hookflow_gen._engine import Completed, Replay
from hookflow_gen.testing import EPOCH


class Item(BaseModel):
    i: int
    value: str


class Count(BaseModel):
    n: int


def make_item(i: int) -> Item:
    return Item(i=i, value="x" * 16)


@workflow(name="bench-linear")
def linear(ctx: Context, count: Count) -> Flow[int]:
    total = 0
    for i in range(count.n):
        item = yield from ctx.run(f"step-{i}", make_item, i)
        total += item.i
    return total


def journal(n: int) -> list[StepRecord]:
    """A journal of n completed run steps with small model results."""
    return [
        StepRecord(
            position=i,
            kind="run",
            name=f"step-{i}",
            result=Item(i=i, value="x" * 16).model_dump_json(),
            completed_at=EPOCH,
        )
        for i in range(n)
    ]


def best(fn: Callable[[], None], repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn`` in seconds (least disturbed by noise)."""
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor_seconds(n: int, repeats: int) -> float:
    """generator.send + TypeAdapter.validate_json of the same model, n times."""
    adapter: TypeAdapter[Item] = TypeAdapter(Item)
    data = [Item(i=i, value="x" * 16).model_dump_json() for i in range(n)]

    def consumer() -> Generator[None, Any, int]:
        total = 0
        for _ in range(n):
            item = yield
            total += item.i
        return total

    def run() -> None:
        gen = consumer()
        next(gen)
        try:
            for text in data:
                gen.send(adapter.validate_json(text))
        except StopIteration:
            pass

    return best(run, repeats)


def replay_seconds(n: int, repeats: int) -> float:
    """One full replay of an n-step journal by the engine, to completion."""
    records = journal(n)
    payload = Count(n=n).model_dump_json()
    info = RunInfo(run_id="bench", workflow_name=linear.name, started_at=EPOCH)
    expected = n * (n - 1) // 2

    def run() -> None:
        decision = Replay(linear, payload, info, records).advance()
        assert isinstance(decision, Completed) and decision.value == expected

    return best(run, repeats)


def measure(n: int = 1000, repeats: int = 7) -> dict[str, float]:
    """Per-step figures in microseconds, and their ratio."""
    floor = floor_seconds(n, repeats) / n * 1e6
    engine = replay_seconds(n, repeats) / n * 1e6
    return {"n": n, "floor_us": floor, "replay_us": engine, "ratio": engine / floor}


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay cost per step, next to its floor.")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rounds = [measure(args.n, args.repeats) for _ in range(3)]
    print(f"replay of a {args.n}-step journal, small pydantic results (best of {args.repeats}):")
    for r in rounds:
        print(
            f"  floor (send + validate_json) {r['floor_us']:.2f} us/step | "
            f"engine {r['replay_us']:.2f} us/step | ratio {r['ratio']:.2f}x"
        )
    median = statistics.median(r["ratio"] for r in rounds)
    print(f"median ratio {median:.2f}x (target: within 4x)")


if __name__ == "__main__":
    main()
