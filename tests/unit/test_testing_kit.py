"""The testing kit users get: Stepper, WorkflowEnvironment, replay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hookflow_gen import (
    Context,
    Flow,
    HookflowError,
    NonDeterminismError,
    PayloadValidationError,
    RunStatus,
    StepFailed,
    WorkflowFailed,
    workflow,
)
from hookflow_gen.testing import EPOCH, Stepper, WorkflowEnvironment, replay

from .models import Approval, Charge, Order, Receipt, charge_card, double, refund


@workflow
def kit_checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    try:
        yield from ctx.gather(ctx.run("reserve", double, 1), ctx.run("email", double, 2))
    except StepFailed:
        yield from ctx.run("refund", refund, charge.charge_id)
        raise
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    approval = yield from ctx.wait_for_event("approval", Approval, key=f"order-{order.order_id}")
    return Receipt(order_id=order.order_id, charge_id=f"{charge.charge_id}/{approval.approved_by}")


def test_stepper_walks_a_workflow_by_hand() -> None:
    """Each step can be inspected, answered with typed values, and the result read."""
    s = Stepper(kit_checkout, Order(order_id=7, amount_cents=1200))
    assert (s.step.kind, s.step.name) == ("run", "charge")
    s.send(Charge(charge_id="ch_1"))
    assert s.step.kind == "gather"
    s.send((2, 4))
    assert (s.step.kind, s.step.name) == ("sleep", "cool-off")
    s.send()
    assert s.now == EPOCH + timedelta(hours=1)
    assert s.step.name == "approval"
    s.send(Approval(approved_by="ann"))
    assert s.finished
    assert s.result() == Receipt(order_id=7, charge_id="ch_1/ann")
    assert [r.name for r in s.history] == ["charge", "reserve", "email", "cool-off", "approval"]


def test_stepper_failures_reach_the_workflow_as_step_failed() -> None:
    """An exception sent to a branch is thrown in; compensation steps follow."""
    s = Stepper(kit_checkout, Order(order_id=7))
    s.send(Charge(charge_id="ch_1"))
    s.send((2, ValueError("out of stock")))
    assert (s.step.name, s.step.args) == ("refund", ("ch_1",))  # type: ignore[attr-defined]
    s.send("refunded")
    assert s.finished
    assert s.error is not None and "out of stock" in s.error.message
    with pytest.raises(WorkflowFailed, match="out of stock"):
        s.result()


def test_stepper_validates_sent_values_like_production() -> None:
    """A value that does not fit the step's type is refused, as a stored one would be."""
    s = Stepper(kit_checkout, Order(order_id=7))
    with pytest.raises(PayloadValidationError, match="value sent for run 'charge'"):
        s.send({"nope": 1})
    s.send({"charge_id": "dict-is-coerced"})
    assert s.history[0].result == '{"charge_id":"dict-is-coerced","at":null}'
    with pytest.raises(HookflowError, match="send a tuple of 2 values"):
        s.send(1)


def test_stepper_fail_fails_every_branch_and_result_reports_unfinished() -> None:
    """fail() fails the current step; result() on a running workflow says where it waits."""
    s = Stepper(kit_checkout, Order(order_id=7))
    with pytest.raises(HookflowError, match="still waits on run 'charge'"):
        s.result()
    s.fail("card declined")
    assert s.finished and s.error is not None and "card declined" in s.error.message
    with pytest.raises(HookflowError, match="has finished"):
        _ = s.step


def test_environment_runs_with_stubs_a_fake_clock_and_events() -> None:
    """A run completes in-process: stubbed steps, instant sleeps, events sent by the test."""
    with WorkflowEnvironment(stubs={"charge": Charge(charge_id="stub")}) as env:
        handle = kit_checkout.start(Order(order_id=8))
        assert handle.status is RunStatus.RUNNING
        assert env.clock.now() == EPOCH + timedelta(hours=1)
        env.notify("order-8", Approval(approved_by="bo"))
        assert handle.result() == Receipt(order_id=8, charge_id="stub/bo")


def test_environment_stub_can_raise_or_compute() -> None:
    """A stub may be an exception to raise or a callable given the step's arguments."""
    with WorkflowEnvironment(stubs={"email": RuntimeError("smtp down")}) as env:

        def fake_charge(order_id: int, amount: int) -> Charge:
            return Charge(charge_id=f"c{order_id + amount}")

        env.stub("charge", fake_charge)
        handle = env.start(kit_checkout, Order(order_id=1, amount_cents=2))
        with pytest.raises(WorkflowFailed, match="smtp down"):
            handle.result()
        names = [(r.name, r.attempts) for r in env.journal(handle.run_id)]
        assert names == [("charge", 1), ("reserve", 1), ("email", 3), ("refund", 1)]


def test_environment_without_auto_advance_keeps_time_still() -> None:
    """With auto_advance=False a sleep waits until the test moves the clock."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(kit_checkout, Order(order_id=9))
        assert env.clock.now() == EPOCH
        assert env.journal(handle.run_id)[-1].name == "cool-off"
        env.advance(timedelta(minutes=59))
        assert env.journal(handle.run_id)[-1].status == "pending"
        env.advance(timedelta(minutes=1))
        assert env.journal(handle.run_id)[-1].name == "approval"


def test_replay_accepts_a_matching_journal_and_rejects_a_changed_workflow() -> None:
    """replay() reports how far a stored journal goes, or the non-determinism."""
    with WorkflowEnvironment() as env:
        handle = env.start(kit_checkout, Order(order_id=10))
        env.notify("order-10", Approval(approved_by="cy"))
        journal = env.journal(handle.run_id)
    result = replay(kit_checkout, Order(order_id=10), journal)
    assert result.finished and result.replayed == 5

    @workflow
    def kit_checkout_v2(ctx: Context, order: Order) -> Flow[Receipt]:
        charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
        yield from ctx.sleep("cool-off", timedelta(hours=1))  # moved before the gather
        return Receipt(order_id=order.order_id, charge_id=charge.charge_id)

    with pytest.raises(NonDeterminismError) as info:
        replay(kit_checkout_v2, payload_json=Order(order_id=10).model_dump_json(), journal=journal)
    assert "position 1 was run 'reserve' in the journal, now the workflow asks for sleep" in str(
        info.value
    )
    partial = replay(kit_checkout, Order(order_id=10), journal[:3])
    assert not partial.finished and partial.replayed == 3
