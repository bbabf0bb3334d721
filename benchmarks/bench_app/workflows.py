"""Benchmark workflows: n trivial run steps with small pydantic results."""

from __future__ import annotations

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
