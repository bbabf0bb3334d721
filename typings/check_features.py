"""Typing contract of race, patching and the smaller API gaps: checked, never run.

Positives pin inferred types with ``assert_type``; each negative carries a
``type: ignore[code]`` that mypy and pyright must both find necessary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, assert_type

from pydantic import BaseModel

from hookflow_gen import (
    CallResponse,
    Context,
    ErrorInfo,
    Flow,
    RaceStep,
    RetryPolicy,
    RunHandle,
    Winner,
    get_run,
    workflow,
)
from hookflow_gen.testing import ReplayResult, replay


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


# --- the smaller gaps ----------------------------------------------------------------------


@workflow
def child(ctx: Context, order: Order) -> Flow[int]:
    yield from ()  # no steps: the idiom both checkers accept, even with warn_unreachable
    return order.order_id


@workflow
def gaps(ctx: Context, order: Order) -> Flow[int]:
    nothing = yield from ctx.gather()
    assert_type(nothing, tuple[()])
    many = yield from ctx.gather(*[ctx.run(f"q{i}", quote, i) for i in range(order.order_id)])
    assert_type(many, tuple[float, ...])
    policy = RetryPolicy(maximum_attempts=3)
    value = yield from ctx.invoke("child", child, order, retry=policy)
    assert_type(value, int)
    again = yield from ctx.invoke("child-2", child, order).options(retry=policy)
    assert_type(again, int)
    yield from ctx.sleep("nap", 1)  # a None step: a statement, no variable to assign
    return value + again


def typed_runs(run_id: str) -> None:
    assert_type(get_run(gaps, run_id), RunHandle[int])
    assert_type(get_run(gaps, run_id).result(), int)
    assert_type(get_run(run_id), RunHandle[Any])
    journal = get_run(run_id).steps()
    assert_type(replay(gaps, Order(order_id=1), journal), ReplayResult)
    assert_type(replay(gaps, payload_json='{"order_id": 1}', journal=journal), ReplayResult)


def on_failure(run_id: str, payload: Any, error: ErrorInfo) -> None:
    assert_type(error.original, ErrorInfo)
    assert_type(error.original.type, str)
    assert_type(error.cause, ErrorInfo | None)
    assert_type(error.caused_by(ValueError), bool)


def wrong_gaps(run_id: str) -> None:
    wrong: RunHandle[str] = get_run(gaps, run_id)  # type: ignore[arg-type]
    journal = get_run(run_id).steps()
    replay(gaps, '{"order_id": 1}', journal)  # type: ignore[misc]
    replay(gaps, Order(order_id=1), journal, payload_json="{}")  # type: ignore[call-overload]
    del wrong


# --- versioning ----------------------------------------------------------------------------


@workflow
def versioned(ctx: Context, order: Order) -> Flow[float]:
    assert_type(ctx.patched("quote-v2"), bool)
    if ctx.patched("quote-v2"):
        value = yield from ctx.run("quote-v2", quote, order.order_id)
    else:
        value = yield from ctx.run("quote", quote, order.order_id)
    ctx.deprecate_patch("old-fix")
    ctx.patched(2)  # type: ignore[arg-type]
    return value


# --- call answers as values ----------------------------------------------------------------


@workflow
def calling(ctx: Context, order: Order) -> Flow[int]:
    strict = yield from ctx.call("a", "https://x.example/", response_model=Order)
    assert_type(strict, CallResponse[Order])
    loose = yield from ctx.call(
        "b", "https://x.example/", response_model=Order, raise_for_status=False
    )
    assert_type(loose, CallResponse[Order | str])
    assert_type(loose.ok, bool)
    text = yield from ctx.call("c", "https://x.example/", raise_for_status=False)
    assert_type(text.body, str)
    if isinstance(loose.body, Order):
        return loose.body.order_id
    loose.body.order_id  # type: ignore[attr-defined]
    return loose.status
