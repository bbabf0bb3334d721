"""The raw-generator helpers: context(), answer(), step_failed(), finish()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hookflow_gen import Context, Flow, HookflowError, StepFailed, WorkflowDefinitionError, workflow
from hookflow_gen.testing import EPOCH, answer, context, finish, step_failed

from .models import Charge, Order, charge_card, double


@workflow
def bh_flow(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    try:
        yield from ctx.run("double", double, 2)
    except StepFailed as failed:
        return f"{charge.charge_id} failed {failed.error_type} {failed.message} x{failed.attempts}"
    label = "replay" if ctx.is_replaying else "live"
    return f"{charge.charge_id} {ctx.run_id} {ctx.now().isoformat()} {ctx.uuid4()} {label}"


def test_context_defaults_give_a_fixed_clock_and_run_id() -> None:
    """context() needs no arguments: run id 'test-run', clock at the kit's epoch."""
    ctx = context()
    assert (ctx.run_id, ctx.workflow_name, ctx.now(), ctx.is_replaying) == (
        "test-run",
        "test",
        EPOCH,
        False,
    )
    assert ctx.info.started_at == EPOCH and ctx.info.parent_run_id is None


def test_context_takes_a_moving_clock_and_seeds_uuids_from_the_run_id() -> None:
    """now= may be a function; the same run id gives the same uuid4() sequence."""
    times = iter([EPOCH, EPOCH + timedelta(minutes=5)])
    ctx = context(run_id="r9", now=lambda: next(times), replaying=True, parent_run_id="p")
    assert ctx.info.started_at == EPOCH  # the clock's first value
    assert ctx.now() == EPOCH + timedelta(minutes=5)
    assert ctx.is_replaying and ctx.info.parent_run_id == "p"
    assert context(run_id="r9").uuid4() == context(run_id="r9").uuid4()
    assert context(run_id="r9").uuid4() != context(run_id="r10").uuid4()


def test_context_refuses_a_naive_datetime() -> None:
    """A naive now= is a clear error, as ctx.sleep_until's would be."""
    with pytest.raises(WorkflowDefinitionError, match=r"context\(now=...\) needs an aware"):
        context(now=datetime(2026, 1, 1))


def test_finish_returns_the_result_or_says_what_the_workflow_still_asks_for() -> None:
    """finish() gives the typed result, or names the step the workflow asks for next."""
    gen = bh_flow(context(run_id="r1", now=EPOCH), Order(order_id=1))
    next(gen)
    with pytest.raises(HookflowError, match="did not finish: it asks for run 'double'"):
        finish(gen, answer(charge_card)(Charge(charge_id="c")))
    result = finish(gen, answer(double)(4))
    assert result.startswith(f"c r1 {EPOCH.isoformat()} ") and result.endswith(" live")


def test_step_failed_builds_what_the_engine_throws() -> None:
    """step_failed() carries the error's type, message and attempts into the workflow."""
    gen = bh_flow(context(), Order(order_id=1))
    next(gen)
    step = gen.send(Charge(charge_id="c"))
    failure = step_failed(step, ValueError("odd"), position=1, attempts=3)
    assert (failure.step_name, failure.position, failure.error_type) == (
        "double",
        1,
        "builtins.ValueError",
    )
    assert finish_throw(gen, failure) == "c failed builtins.ValueError odd x3"
    assert step_failed("ship", "gone").message == "gone"


def finish_throw(gen: Flow[str], exc: BaseException) -> str:
    try:
        gen.throw(exc)
    except StopIteration as stop:
        value: str = stop.value
        return value
    raise AssertionError("the workflow did not return")


def test_answer_passes_the_value_through() -> None:
    """answer(fn) is an identity at run time: the checkers do the checking."""
    charge = Charge(charge_id="x", at=datetime(2026, 1, 1, tzinfo=UTC))
    assert answer(charge_card)(charge) is charge
