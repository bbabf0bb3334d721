"""Updates: what one round trip costs, sender to answer, on the in-process runtime.

Each round sends one update to a run that waits in ``ctx.receive`` and reads
its answer: validate and store the request, settle the wait, tick the run
(replay-free: the generator is kept warm), record the reply and its answer,
read the answer back. On ``WorkflowEnvironment`` (memory store, inline
scheduler) this is the library's own cost; on a database it adds the
statements (one transaction to accept, one tick, two reads).

The memory store scans a run's whole journal to find waiters, so its cost
grows with the number of updates one run has taken; the figures for a short
and a long run show it.

Run: ``uv run python benchmarks/updates.py [--n 100,1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from pydantic import BaseModel

from hookflow_gen import Context, Flow, Update, workflow
from hookflow_gen.testing import WorkflowEnvironment


class Add(BaseModel):
    amount: int


class Total(BaseModel):
    total: int


add = Update("add", Add, Total)


@workflow(name="bench-updates-counter")
def counter(ctx: Context, n: int) -> Flow[int]:
    total = 0
    for _ in range(n):
        req = yield from ctx.receive(add)
        total += req.request.amount
        yield from ctx.reply(req, Total(total=total))
    return total


def one_round(n: int) -> float:
    """Seconds per update over ``n`` updates to one run."""
    with WorkflowEnvironment() as env:
        handle = env.start(counter, n)
        began = time.perf_counter()
        for i in range(n):
            handle.update(add, Add(amount=1), update_id=f"u{i}")
        elapsed = time.perf_counter() - began
        assert handle.result() == n
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", default="100,1000", help="updates per run, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for n in (int(part) for part in args.n.split(",")):
        rounds = [one_round(n) for _ in range(args.repeats)]
        print(
            f"update round trip, WorkflowEnvironment, {n} updates per run x {args.repeats} "
            f"rounds: median {statistics.median(rounds) * 1e6:.0f} us per update "
            f"[{min(rounds) * 1e6:.0f}-{max(rounds) * 1e6:.0f}]"
        )


if __name__ == "__main__":
    main()
