"""Typing contract of race, patching and the smaller API gaps: checked, never run.

Positives pin inferred types with ``assert_type``; each negative carries a
``type: ignore[code]`` that mypy and pyright must both find necessary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, assert_type

from pydantic import BaseModel

from hookflow_gen import Context, Flow, RaceStep, Winner, workflow


class Order(BaseModel):
    order_id: int


class Approval(BaseModel):
    approved_by: str


def quote(order_id: int) -> float:
    return order_id * 1.5


@workflow
def racing(ctx: Context, order: Order) -> Flow[str]:
    step = ctx.race(
        ctx.wait_for_event("approval", Approval, key="k"), ctx.sleep("deadline", timedelta(days=1))
    )
    assert_type(step, RaceStep[Winner[Literal[0], Approval] | Winner[Literal[1], None]])
    won = yield from step
    assert_type(won.index, Literal[0, 1])
    assert_type(won.name, str)
    if won.index == 0:
        assert_type(won.value, Approval)
    else:
        assert_type(won.value, None)
    three = yield from ctx.race(
        ctx.run("quote", quote, order.order_id),
        ctx.wait_for_event("approval-2", Approval, key="k2"),
        ctx.sleep("deadline-2", 60),
    )
    if three.index == 0:
        assert_type(three.value, float)
    elif three.index == 1:
        assert_type(three.value, Approval)
    else:
        assert_type(three.value, None)
    kept = yield from ctx.race(ctx.sleep("a", 1), ctx.run("b", quote, 2), cancel_losers=False)
    assert_type(kept, Winner[Literal[0], None] | Winner[Literal[1], float])
    alone = yield from ctx.race(ctx.run("only", quote, 1))
    assert_type(alone, Winner[Literal[0], float])
    many = yield from ctx.race(*[ctx.run(f"q{i}", quote, i) for i in range(3)])
    assert_type(many, Winner[int, float])
    assert_type(many.value, float)
    return "ok"


# --- negative cases ------------------------------------------------------------------------


@workflow
def racing_wrongly(ctx: Context, order: Order) -> Flow[str]:
    won = yield from ctx.race(
        ctx.wait_for_event("approval", Approval, key="k"), ctx.sleep("deadline", 5)
    )
    won.value.approved_by  # type: ignore[union-attr]
    if won.index == 1:
        won.value.approved_by  # type: ignore[attr-defined]
    label: int = won.name  # type: ignore[assignment]
    ctx.race(ctx.run("q", quote, "x"))  # type: ignore[call-overload]
    del label
    return "no"
