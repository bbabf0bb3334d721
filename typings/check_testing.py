"""The testing kit's typing contract: checked by mypy --strict and pyright strict, never run.

Stepping the raw generator: ``next``/``send`` give ``Step[Any]`` (narrowed
with ``isinstance``), ``send`` takes ``object`` (the send type of
``Flow[R]``), ``answer(fn)`` holds a sent value to ``fn``'s return type, and
``finish`` returns the workflow's ``R``. Negative cases carry a ``type:
ignore[code]`` both checkers must find necessary.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

from pydantic import BaseModel

from hookflow_gen import (
    Context,
    EventStep,
    Flow,
    RunStatus,
    RunStep,
    SleepStep,
    Step,
    StepFailed,
    workflow,
)
from hookflow_gen.testing import (
    Effect,
    ResumabilityError,
    ResumeProblem,
    ResumeReport,
    answer,
    check_resumable,
    context,
    finish,
    step_failed,
)


class Order(BaseModel):
    order_id: int


class Charge(BaseModel):
    charge_id: str


class Approval(BaseModel):
    approved_by: str


class Receipt(BaseModel):
    charge_id: str
    approved_by: str


def charge_card(order_id: int) -> Charge:
    return Charge(charge_id=f"ch_{order_id}")


async def reserve(order_id: int) -> list[str]:
    return [str(order_id)]


@workflow
def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", charge_card, order.order_id)
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    approval = yield from ctx.wait_for_event("approval", Approval, key=f"o-{order.order_id}")
    return Receipt(charge_id=charge.charge_id, approved_by=approval.approved_by)


def by_hand() -> None:
    ctx = context(run_id="r1", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert_type(ctx, Context)
    assert_type(context(now=lambda: datetime.now(UTC)), Context)

    gen = checkout(ctx, Order(order_id=7))
    assert_type(gen, Flow[Receipt])
    step = next(gen)
    assert_type(step, Step[Any])
    if isinstance(step, RunStep):
        assert_type(step, RunStep[Any])
    assert_type(answer(charge_card), Callable[[Charge], Charge])
    assert_type(answer(reserve), Callable[[list[str]], list[str]])  # what an async step awaits to
    assert_type(answer(Approval), Callable[[Approval], Approval])
    sent = answer(charge_card)(Charge(charge_id="ch_1"))
    assert_type(sent, Charge)
    step = gen.send(sent)
    assert_type(step, Step[Any])
    if isinstance(step, SleepStep):
        assert_type(step.duration, timedelta | None)
    step = gen.send(None)
    if isinstance(step, EventStep):
        assert_type(step.key, str)
    failure = step_failed(step, ValueError("declined"))
    assert_type(failure, StepFailed)
    receipt = finish(gen, answer(Approval)(Approval(approved_by="ann")))
    assert_type(receipt, Receipt)


def by_hand_mistakes() -> None:
    gen = checkout(context(), Order(order_id=7))
    next(gen)
    gen.send("not a charge")  # accepted: the send type is object, hence answer()
    answer(charge_card)("not a charge")  # type: ignore[arg-type]
    answer(charge_card)(Approval(approved_by="ann"))  # type: ignore[arg-type]
    wrong: str = finish(gen)  # type: ignore[assignment]
    context(run_id=7)  # type: ignore[arg-type]


def resumable() -> None:
    report = check_resumable(
        checkout,
        Order(order_id=7),
        stubs={"charge": Charge(charge_id="stub")},
        events={"o-7": Approval(approved_by="ann")},
    )
    assert_type(report, ResumeReport[Receipt])
    assert_type(report.result, Receipt)
    assert_type(report.status, RunStatus)
    assert_type(report.effects, tuple[Effect, ...])
    assert_type(report.warnings, tuple[str, ...])
    assert_type(report.restarts, int)
    several = check_resumable(
        checkout, Order(order_id=7), events=[("o-7", {"approved_by": "ann"})], strict=True
    )
    assert_type(several.result, Receipt)
    try:
        check_resumable(checkout, Order(order_id=8))
    except ResumabilityError as exc:
        assert_type(exc.problems, tuple[ResumeProblem, ...])
        assert_type(exc.problems[0].position, int | None)


def resumable_mistakes() -> None:
    check_resumable(checkout, {"order_id": 7})  # type: ignore[misc]
    wrong: str = check_resumable(checkout, Order(order_id=7)).result  # type: ignore[assignment]
    check_resumable(checkout, Order(order_id=7), events=["o-7"])  # type: ignore[list-item]
