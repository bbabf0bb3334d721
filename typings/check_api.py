"""The static-typing contract: checked by mypy --strict and pyright strict, never run.

Positive cases pin inferred types with ``assert_type``. Negative cases carry a
``type: ignore[code]`` that both checkers must find necessary
(``warn_unused_ignores``, ``reportUnnecessaryTypeIgnoreComment``): if one of
them stops being an error, the check fails.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

from pydantic import BaseModel

from hookflow_gen import (
    CallResponse,
    Context,
    Flow,
    RetryPolicy,
    RunHandle,
    SleepStep,
    StepFailed,
    Workflow,
    current_step,
    step,
    workflow,
)
from hookflow_gen.testing import Stepper, WorkflowEnvironment, replay


class Order(BaseModel):
    order_id: int
    amount_cents: int


class Charge(BaseModel):
    charge_id: str


class Approval(BaseModel):
    approved_by: str


class FxRate(BaseModel):
    rate: float


class Receipt(BaseModel):
    order_id: int
    charge_id: str


def charge_card(order_id: int, amount_cents: int) -> Charge:
    return Charge(charge_id=f"ch_{order_id}_{amount_cents}")


async def reserve(order_id: int) -> list[str]:
    return [str(order_id)]


@step(retry=RetryPolicy(maximum_attempts=5))
def send_email(order_id: int, *, template: str = "receipt") -> bool:
    assert_type(current_step().attempt, int)
    return bool(order_id and template)


@workflow
def ship(ctx: Context, order: Order) -> Flow[str]:
    label = yield from ctx.run("label", str, order.order_id)
    return label


@workflow(name="checkout-v1", retry=RetryPolicy(maximum_attempts=2))
def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    assert_type(charge, Charge)
    reserved = yield from ctx.run("reserve", reserve, order.order_id)
    assert_type(reserved, list[str])
    a, b = yield from ctx.gather(
        ctx.run("email", send_email, order.order_id, template="x"),
        ctx.run("reserve-again", reserve, order.order_id),
    )
    assert_type(a, bool)
    assert_type(b, list[str])
    many = yield from ctx.gather(*[ctx.run(f"p{i}", charge_card, i, 1) for i in range(3)])
    assert_type(many, tuple[Charge, ...])
    assert_type(ctx.sleep("cool-off", timedelta(hours=1)), SleepStep)
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    yield from ctx.sleep("short", 1.5)
    yield from ctx.sleep_until("until", datetime(2030, 1, 1, tzinfo=UTC))
    approval = yield from ctx.wait_for_event("approval", Approval, key="order-7")
    assert_type(approval, Approval)
    maybe = yield from ctx.wait_for_event(
        "approval-2", Approval, key="order-7", timeout=timedelta(days=2)
    )
    assert_type(maybe, Approval | None)
    rate = yield from ctx.call("fx", "https://fx.example/eur", response_model=FxRate)
    assert_type(rate, CallResponse[FxRate])
    assert_type(rate.body, FxRate)
    text = yield from ctx.call("page", "https://example.com/")
    assert_type(text.body, str)
    child = yield from ctx.invoke("ship", ship, order)
    assert_type(child, str)
    retried = yield from ctx.run("charge-2", charge_card, 1, 2).options(
        retry=RetryPolicy(maximum_attempts=3), timeout=5, atomic=True
    )
    assert_type(retried, Charge)
    try:
        yield from ctx.run("risky", charge_card, 1, 2)
    except StepFailed as failed:
        assert_type(failed.caused_by(ValueError), bool)
    assert_type(ctx.now(), datetime)
    assert_type(ctx.run_id, str)
    untyped = yield ctx.run("classic", charge_card, 1, 2)
    assert_type(untyped, object)
    return Receipt(order_id=order.order_id, charge_id=charge.charge_id)


assert_type(checkout, Workflow[Order, Receipt])
assert_type(ship, Workflow[Order, str])


def start_runs() -> None:
    handle = checkout.start(Order(order_id=7, amount_cents=1200))
    assert_type(handle, RunHandle[Receipt])
    assert_type(handle.result(), Receipt)
    assert_type(checkout.start(Order(order_id=1, amount_cents=1), run_id="x").run_id, str)


def testing_kit() -> None:
    stepper = Stepper(checkout, Order(order_id=7, amount_cents=1200))
    assert_type(stepper, Stepper[Receipt])
    assert_type(stepper.send(Charge(charge_id="c")).result(), Receipt)
    with WorkflowEnvironment(stubs={"charge": Charge(charge_id="c")}) as env:
        assert_type(env.run(checkout, Order(order_id=7, amount_cents=1)), Receipt)
        assert_type(env.start(ship, Order(order_id=7, amount_cents=1)), RunHandle[str])
        assert_type(
            replay(checkout, Order(order_id=1, amount_cents=1), env.journal("x")).replayed, int
        )


# --- negative cases: each line must stay an error for both checkers -----------------------


@workflow
def wrong_types(ctx: Context, order: Order) -> Flow[Receipt]:
    yield from ctx.run("charge", charge_card, "7", 1)  # type: ignore[call-overload]
    yield from ctx.run("charge", charge_card, 7)  # type: ignore[call-overload]
    yield from ctx.run("charge", send_email, 7, templat="x")  # type: ignore[arg-type, call-arg]
    wrong: str = yield from ctx.run("charge", charge_card, 7, 1)  # type: ignore[assignment]
    a, b, c = yield from ctx.gather(  # type: ignore[misc]
        ctx.run("a", charge_card, 1, 1), ctx.run("b", charge_card, 2, 2)
    )
    approval: Charge = yield from ctx.wait_for_event("e", Approval, key="k")  # type: ignore[assignment]
    maybe = yield from ctx.wait_for_event("e2", Approval, key="k", timeout=3)
    maybe.approved_by  # type: ignore[union-attr]
    yield from ctx.invoke("ship", ship, Charge(charge_id="x"))  # type: ignore[misc]
    del wrong, a, b, c, approval
    return Receipt(order_id=1, charge_id="x")


def wrong_starts() -> None:
    checkout.start(Charge(charge_id="x"))  # type: ignore[arg-type]
    name: int = checkout.start(Order(order_id=1, amount_cents=1)).result()  # type: ignore[assignment]
    del name


@workflow  # type: ignore[arg-type]
def not_a_flow(ctx: Context, order: Order) -> Receipt:
    return Receipt(order_id=order.order_id, charge_id="x")


def unused(value: Any) -> None:
    del value
