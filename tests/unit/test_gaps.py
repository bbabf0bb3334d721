"""The smaller API gaps: empty gather, invoke retries, replay's payload, typed get_run, ..."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hookflow_gen import (
    Context,
    ErrorInfo,
    Flow,
    HookflowError,
    NonRetryableError,
    RetryPolicy,
    RunStatus,
    StepFailed,
    StepStatus,
    WorkflowDefinitionError,
    WorkflowFailed,
    get_run,
    workflow,
)
from hookflow_gen.testing import Stepper, WorkflowEnvironment, replay

from .models import Order, double


@workflow
def gaps_fan_out(ctx: Context, order: Order) -> Flow[list[int]]:
    results = yield from ctx.gather(*[ctx.run(f"d{i}", double, i) for i in range(order.order_id)])
    nothing = yield from ctx.gather()
    return [*results, len(nothing)]


def test_gather_of_no_steps_is_an_empty_tuple() -> None:
    """A fan-out over an empty list gives () at once, without a journal record."""
    s = Stepper(gaps_fan_out, Order(order_id=0))
    assert s.finished and s.result() == [0]
    assert s.history == []


def test_gather_of_no_steps_on_the_runtime() -> None:
    """The runtime completes a run whose gathers are empty or not."""
    with WorkflowEnvironment() as env:
        assert env.run(gaps_fan_out, Order(order_id=0)) == [0]
        assert env.run(gaps_fan_out, Order(order_id=3)) == [0, 2, 4, 0]


@workflow
def gaps_no_steps(ctx: Context, order: Order) -> Flow[int]:
    yield from ()  # a workflow with no steps (yet): the documented idiom
    return order.order_id


def test_a_workflow_without_steps_uses_yield_from_nothing() -> None:
    """``yield from ()`` makes a step-less workflow; a plain function is refused helpfully."""
    assert Stepper(gaps_no_steps, Order(order_id=5)).result() == 5

    def plain(ctx: Context, order: Order) -> Flow[int]:
        return order.order_id  # type: ignore[return-value]  # the mistake under test

    with pytest.raises(WorkflowDefinitionError, match=r"yield from \(\)"):
        workflow(name="gaps-plain")(plain)


attempts_seen: dict[str, int] = {}


def shaky(key: str, failures: int) -> str:
    attempts_seen[key] = attempts_seen.get(key, 0) + 1
    if attempts_seen[key] <= failures:
        raise ConnectionError(f"attempt {attempts_seen[key]} of {key} failed")
    return f"ok after {attempts_seen[key]}"


def refuse(key: str) -> str:
    raise NonRetryableError(f"{key} refused")


@workflow(retry=RetryPolicy(maximum_attempts=1))
def shaky_child(ctx: Context, order: Order) -> Flow[str]:
    return (yield from ctx.run("shaky", shaky, f"child-{order.order_id}", order.amount_cents))


@workflow(retry=RetryPolicy(maximum_attempts=1))
def refusing_child(ctx: Context, order: Order) -> Flow[str]:
    return (yield from ctx.run("refuse", refuse, f"child-{order.order_id}"))


CHILD_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(minutes=1))


@workflow
def gaps_retrying_parent(ctx: Context, order: Order) -> Flow[str]:
    try:
        return (yield from ctx.invoke("child", shaky_child, order, retry=CHILD_RETRY))
    except StepFailed as failed:
        return f"gave up after {failed.attempts}: {failed.caused_by(ConnectionError)}"


@workflow
def refused_parent(ctx: Context, order: Order) -> Flow[str]:
    try:
        return (yield from ctx.invoke("child", refusing_child, order, retry=CHILD_RETRY))
    except StepFailed as failed:
        return f"refused after {failed.attempts}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    attempts_seen.clear()


def test_invoke_retries_a_failed_child_with_a_new_run() -> None:
    """A child that fails twice is started again after the back-off; the third one succeeds."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = gaps_retrying_parent.start(Order(order_id=1, amount_cents=2))
        assert handle.status is RunStatus.RUNNING
        (record,) = env.journal(handle.run_id)
        assert (record.status, record.key, record.attempts) == (StepStatus.PENDING, None, 1)
        env.advance(timedelta(minutes=1))
        env.advance(timedelta(minutes=2))
        assert handle.result() == "ok after 3"
        (record,) = env.journal(handle.run_id)
        assert (record.key, record.attempts) == (f"{handle.run_id}-0-attempt-3", 3)
        first = env.store.get_run(f"{handle.run_id}-0")
        assert first is not None and first.status is RunStatus.FAILED


def test_invoke_retries_stop_at_the_policy_maximum() -> None:
    """After maximum_attempts child runs the failure reaches the workflow, cause intact."""
    with WorkflowEnvironment() as env:
        assert env.run(gaps_retrying_parent, Order(order_id=2, amount_cents=9)) == (
            "gave up after 3: True"
        )


def test_invoke_does_not_retry_a_non_retryable_child_failure() -> None:
    """A child that failed with NonRetryableError is not started again."""
    with WorkflowEnvironment() as env:
        assert env.run(refused_parent, Order(order_id=3)) == "refused after 1"


def test_invoke_retry_replays_deterministically() -> None:
    """The reopened and retried invoke record replays to the same result."""
    with WorkflowEnvironment() as env:
        handle = env.start(gaps_retrying_parent, Order(order_id=4, amount_cents=1))
        assert handle.result() == "ok after 2"
        assert replay(
            gaps_retrying_parent, Order(order_id=4, amount_cents=1), env.journal(handle.run_id)
        ).finished


@workflow
def gaps_str_payload(ctx: Context, text: str) -> Flow[str]:
    yield from ()
    return text.upper()


def test_replay_takes_a_str_payload_as_a_value() -> None:
    """A str payload is the payload itself; stored JSON goes by payload_json=."""
    by_value = replay(gaps_str_payload, '"quoted"', [])
    assert getattr(by_value.decision, "value", None) == '"QUOTED"'
    by_json = replay(gaps_str_payload, payload_json='"quoted"', journal=[])
    assert getattr(by_json.decision, "value", None) == "QUOTED"
    loose: Any = replay
    with pytest.raises(TypeError, match="exactly one"):
        loose(gaps_str_payload, "a", [], payload_json='"b"')
    with pytest.raises(TypeError, match="needs the journal"):
        loose(gaps_str_payload, "a")


failures: list[ErrorInfo] = []


def explode(why: str) -> int:
    raise ValueError(why)


@workflow(on_failure=lambda run_id, payload, error: failures.append(error))
def gaps_doomed(ctx: Context, order: Order) -> Flow[int]:
    return (yield from ctx.run("explode", explode, f"order {order.order_id} is cursed"))


def test_on_failure_sees_the_original_error() -> None:
    """An uncaught step failure reaches on_failure with the step's own type and message."""
    failures.clear()
    with WorkflowEnvironment(default_retry=RetryPolicy(maximum_attempts=1)) as env:
        handle = env.start(gaps_doomed, Order(order_id=6))
        with pytest.raises(WorkflowFailed) as info:
            handle.result()
    assert info.value.caused_by(ValueError)
    (error,) = failures
    assert error.type == "hookflow_gen.exceptions.StepFailed"
    assert (error.original.type, error.original.message) == (
        "builtins.ValueError",
        "order 6 is cursed",
    )
    assert error.caused_by(ValueError) and not error.caused_by(KeyError)
    assert ErrorInfo.from_json(error.to_json()) == error


def test_error_cause_follows_raise_from() -> None:
    """A workflow's own ``raise X from exc`` keeps the cause it wraps."""
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as outer:
        info = ErrorInfo.from_exception(outer)
    assert info.cause is not None and info.original.type == "builtins.KeyError"
    assert "cause" not in ErrorInfo(type="x", message="y").to_json()


def test_get_run_with_a_workflow_is_typed_and_checked() -> None:
    """``get_run(workflow, run_id)`` gives that workflow's handle, or says it is another's."""
    with WorkflowEnvironment() as env:
        handle = env.start(gaps_fan_out, Order(order_id=2))
        typed = get_run(gaps_fan_out, handle.run_id)
        assert typed.result() == [0, 2, 0]
        assert get_run(handle.run_id).workflow is gaps_fan_out
        with pytest.raises(HookflowError, match="not 'gaps_no_steps'"):
            get_run(gaps_no_steps, handle.run_id)
        loose: Any = get_run
        with pytest.raises(TypeError):
            loose(gaps_fan_out)
