"""Building workflows and step requests: decorator, registry, early errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from hookflow_gen import (
    Context,
    Flow,
    RetryPolicy,
    RunStep,
    SleepStep,
    Workflow,
    WorkflowDefinitionError,
    get_workflow,
    step,
    workflow,
)
from hookflow_gen._context import RunInfo
from hookflow_gen.exceptions import (
    DuplicateWorkflowError,
    NonRetryableError,
    UnknownWorkflowError,
)
from hookflow_gen.testing import EPOCH

from .models import Approval, Charge, Order, async_double, charge_card, double

CTX = Context(RunInfo(run_id="r", workflow_name="w", started_at=EPOCH))


@workflow
def bare(ctx: Context, order: Order) -> Flow[int]:
    value = yield from ctx.run("double", double, order.order_id)
    return value


@workflow(name="named-flow", retry=RetryPolicy(maximum_attempts=9))
def with_options(ctx: Context, order: Order) -> Flow[str]:
    yield from ctx.sleep("nap", 1)
    return "ok"


def test_bare_decorator_registers_under_the_function_name() -> None:
    """@workflow without arguments registers the function under its __name__."""
    assert isinstance(bare, Workflow)
    assert bare.name == "bare"
    assert get_workflow("bare") is bare


def test_decorator_with_arguments_sets_name_and_retry() -> None:
    """@workflow(name=..., retry=...) keeps both options."""
    assert get_workflow("named-flow") is with_options
    assert with_options.retry == RetryPolicy(maximum_attempts=9)


def test_workflow_stays_callable_for_hand_stepping() -> None:
    """Calling a workflow returns its raw generator: next/send/throw work by hand."""
    gen = bare(CTX, Order(order_id=4))
    request = next(gen)
    assert isinstance(request, RunStep) and request.name == "double" and request.args == (4,)
    with pytest.raises(StopIteration) as stop:
        gen.send(8)
    assert stop.value.value == 8
    gen2 = bare(CTX, Order(order_id=4))
    next(gen2)
    with pytest.raises(ValueError, match="boom"):
        gen2.throw(ValueError("boom"))


def test_duplicate_names_are_a_clear_error() -> None:
    """Two different functions under one name raise DuplicateWorkflowError naming both."""
    with pytest.raises(DuplicateWorkflowError, match="two workflows are named 'bare'"):

        @workflow(name="bare")
        def other(ctx: Context, order: Order) -> Flow[int]:
            yield from ctx.sleep("x", 1)
            return 1


def test_redefining_the_same_function_replaces_it() -> None:
    """Re-registering the same module-level function (a re-import) is allowed."""
    again = workflow(bare.fn)
    assert get_workflow("bare") is again
    workflow(bare.fn)  # and once more, still fine


def test_unknown_workflow_lists_the_known_ones() -> None:
    """get_workflow of an unknown name says which names exist."""
    with pytest.raises(UnknownWorkflowError, match="no workflow is registered as 'nope'.*bare"):
        get_workflow("nope")


def test_non_generator_function_is_rejected() -> None:
    """A plain function is not a workflow: the error says to yield steps."""

    def plain(ctx: Context, order: Order) -> int:
        return 1

    with pytest.raises(WorkflowDefinitionError, match="needs a generator function.*yield from"):
        workflow(plain)  # type: ignore[arg-type]  # the mistake under test


def test_wrong_arity_and_annotation_are_rejected() -> None:
    """A workflow must take (ctx, payload) and be annotated -> Flow[R]."""

    def three(ctx: Context, a: int, b: int) -> Flow[int]:
        yield from ctx.sleep("x", 1)
        return 1

    def badly_annotated(ctx: Context, order: Order) -> Any:  # wrong on purpose: not Flow[...]
        yield from ctx.sleep("x", 1)

    badly_annotated.__annotations__["return"] = int

    with pytest.raises(WorkflowDefinitionError, match="exactly \\(ctx, payload\\)"):
        Workflow(three)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(WorkflowDefinitionError, match="Flow\\[ResultType\\]"):
        Workflow(badly_annotated)  # annotated wrongly at run time only


def test_run_step_records_function_arguments_and_options() -> None:
    """ctx.run keeps fn, args, kwargs; .options() returns a changed copy."""
    request = CTX.run("charge", charge_card, 7, amount_cents=5)
    assert (request.kind, request.name, request.args, request.kwargs) == (
        "run",
        "charge",
        (7,),
        {"amount_cents": 5},
    )
    tuned = request.options(retry=RetryPolicy(maximum_attempts=5), timeout=3, atomic=True)
    assert tuned.retry == RetryPolicy(maximum_attempts=5)
    assert tuned.timeout == timedelta(seconds=3)
    assert tuned.atomic and not request.atomic


def test_step_decorator_sets_defaults_for_every_run() -> None:
    """@step(...) options apply to each ctx.run of that function."""

    @step(retry=RetryPolicy(maximum_attempts=4), timeout=2, atomic=True)
    def careful(x: int) -> int:
        return x

    request = CTX.run("careful", careful, 1)
    assert request.retry == RetryPolicy(maximum_attempts=4)
    assert request.timeout == timedelta(seconds=2)
    assert request.atomic
    assert careful(5) == 5


def test_step_result_adapter_uses_the_return_annotation() -> None:
    """A step's result type comes from its function's return annotation (async unwrapped)."""
    assert CTX.run("c", charge_card, 1, 2).adapter.validate_python({"charge_id": "x"}) == Charge(
        charge_id="x"
    )
    assert CTX.run("d", async_double, 1).adapter.validate_python(3) == 3


UNTYPED: Any = CTX  # misuse the type checkers would catch, as an untyped caller can


def _nested_gather() -> object:
    inner = CTX.gather(CTX.run("a", double, 1))
    return UNTYPED.gather(inner, CTX.run("b", double, 2))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CTX.sleep_until("s", datetime(2030, 1, 1)), "aware datetime"),
        (lambda: CTX.sleep("s", timedelta(seconds=-1)), "negative duration"),
        (lambda: UNTYPED.sleep("s", "10"), "timedelta or seconds"),
        (lambda: CTX.run("", double, 1), "non-empty string"),
        (lambda: UNTYPED.run("x", 5), "needs a callable"),
        (lambda: CTX.call("x", "ftp://host/"), "http\\(s\\) URL"),
        (lambda: CTX.wait_for_event("x", Approval, key=""), "non-empty string key"),
        (UNTYPED.race, "at least one step"),
        (
            lambda: CTX.gather(CTX.run("a", double, 1), CTX.run("a", double, 2)),
            "two branches named 'a'",
        ),
        (_nested_gather, "do not nest"),
        (lambda: UNTYPED.invoke("x", bare.fn, Order(order_id=1)), "needs a @workflow"),
    ],
)
def test_bad_step_requests_fail_early(build: Callable[[], object], message: str) -> None:
    """Each misuse raises WorkflowDefinitionError where the step is built."""
    with pytest.raises(WorkflowDefinitionError, match=message):
        build()


def test_sleep_accepts_seconds_and_timedeltas() -> None:
    """ctx.sleep takes seconds or a timedelta; sleep_until an aware datetime."""
    assert isinstance(CTX.sleep("a", 1), SleepStep)
    assert CTX.sleep("a", 1.5).duration == timedelta(seconds=1.5)
    assert CTX.sleep("b", timedelta(minutes=2)).duration == timedelta(minutes=2)
    assert CTX.sleep_until("c", EPOCH).until == EPOCH


def test_retry_policy_backoff_is_exponential_and_capped() -> None:
    """RetryPolicy.delay grows by the coefficient and stops at maximum_interval."""
    policy = RetryPolicy(
        maximum_attempts=10,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=3,
        maximum_interval=timedelta(seconds=20),
    )
    assert [policy.delay(n).total_seconds() for n in range(1, 6)] == [1, 3, 9, 20, 20]


def test_retry_policy_decides_what_is_retried() -> None:
    """Retries stop at maximum_attempts and for non-retryable error types."""
    policy = RetryPolicy(maximum_attempts=3, non_retryable_error_types=(KeyError,))
    assert policy.retries(ValueError(), 1) and policy.retries(ValueError(), 2)
    assert not policy.retries(ValueError(), 3)
    assert not policy.retries(KeyError(), 1)
    assert not policy.retries(NonRetryableError("no"), 1)


def test_retry_policy_rejects_nonsense() -> None:
    """A policy with fewer than one attempt or a shrinking back-off is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(maximum_attempts=0)
    with pytest.raises(ValueError, match="backoff_coefficient"):
        RetryPolicy(backoff_coefficient=0.5)
