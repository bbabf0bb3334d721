"""Benchmark workflows: n trivial run steps with small pydantic results, or n I/O waits."""

from __future__ import annotations

import time

from pydantic import BaseModel

from hookflow_gen import Context, Flow, workflow


class Item(BaseModel):
    i: int
    value: str


class Steps(BaseModel):
    n: int


def make_item(i: int) -> Item:
    return Item(i=i, value="x" * 16)


@workflow(name="bench-steps")
def steps(ctx: Context, request: Steps) -> Flow[int]:
    total = 0
    for i in range(request.n):
        item = yield from ctx.run(f"step-{i}", make_item, i)
        total += item.i
    return total


class Waits(BaseModel):
    n: int
    seconds: float


def wait_on_io(i: int, seconds: float) -> int:
    """A step that waits on I/O (here: a sleep), as a call to another service does."""
    time.sleep(seconds)
    return i


@workflow(name="bench-io")
def io_steps(ctx: Context, request: Waits) -> Flow[int]:
    total = 0
    for i in range(request.n):
        total += yield from ctx.run(f"io-{i}", wait_on_io, i, request.seconds)
    return total
