"""Stepping the raw workflow generator by hand: a context, typed answers, the result.

A workflow called directly (``checkout(ctx, order)``) returns its generator.
``next`` gives the first step request, ``send`` answers a step and gives the
next one, ``throw`` fails a step; the generator's ``StopIteration`` carries
the result. These helpers fill the gaps the generator protocol leaves:

- ``context``: the ``Context`` to call the workflow with, in one line.
- ``answer``: ``gen.send`` takes ``object`` (the send type of ``Flow[R]``),
  so a checker accepts any value there; ``answer(charge_card)(value)``
  holds the value to ``charge_card``'s return type.
- ``step_failed``: the ``StepFailed`` to ``throw`` in, as the engine builds it.
- ``finish``: send the last answer and return the workflow's typed result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from datetime import datetime
from typing import Any, TypeVar, overload

from .._context import Context, RunInfo
from .._journal import ErrorInfo
from .._steps import Step
from ..exceptions import HookflowError, StepFailed, WorkflowDefinitionError
from ._env import EPOCH

__all__ = ["answer", "context", "finish", "step_failed"]

T = TypeVar("T")
R = TypeVar("R")


def context(
    *,
    run_id: str = "test-run",
    workflow_name: str = "test",
    now: datetime | Callable[[], datetime] = EPOCH,
    started_at: datetime | None = None,
    parent_run_id: str | None = None,
    replaying: bool = False,
) -> Context:
    """A ``Context`` for calling a workflow function by hand.

    Args:
        run_id: the run id (it also seeds ``ctx.uuid4()`` and ``ctx.random()``,
            so the same id gives the same values, as on a replay).
        workflow_name: what ``ctx.workflow_name`` says.
        now: what ``ctx.now()`` returns: an aware datetime, or a function
            called each time (to move the workflow clock during a test).
        started_at: the run's start time (default: ``now``'s first value).
        parent_run_id: set for a child run.
        replaying: what ``ctx.is_replaying`` says.

    Raises:
        WorkflowDefinitionError: a naive datetime was given.
    """
    clock: Callable[[], datetime] = now if callable(now) else (lambda: now)
    first = clock()
    start = started_at if started_at is not None else first
    for what, value in (("now", first), ("started_at", start)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise WorkflowDefinitionError(
                f"context({what}=...) needs an aware datetime, got naive {value.isoformat()}; "
                "use datetime(..., tzinfo=UTC)"
            )
    info = RunInfo(
        run_id=run_id, workflow_name=workflow_name, started_at=start, parent_run_id=parent_run_id
    )
    return Context(info, clock=clock, replaying=lambda: replaying)


@overload
def answer(fn: Callable[..., Awaitable[T]], /) -> Callable[[T], T]: ...
@overload
def answer(fn: Callable[..., T], /) -> Callable[[T], T]: ...
def answer(fn: Callable[..., Any], /) -> Callable[[Any], Any]:
    """A typed identity for the value that answers a step of ``fn``.

    ``gen.send(answer(charge_card)(Charge(charge_id="ch_1")))`` sends the
    value unchanged; mypy and pyright report a value that is not what
    ``charge_card`` returns (for an ``async def`` step, what it awaits to).
    Pass a model class for an event: ``answer(Approval)(Approval(...))``.
    """

    def identity(value: Any) -> Any:
        return value

    return identity


def step_failed(
    step: Step[Any] | str,
    error: BaseException | str,
    *,
    position: int = 0,
    attempts: int = 1,
) -> StepFailed:
    """The ``StepFailed`` the engine throws into a workflow when ``step`` fails.

    ``gen.throw(step_failed(step, ValueError("card declined")))`` is what a
    real run does after the step's last attempt: the workflow's ``except
    StepFailed`` sees ``error_type`` ``"builtins.ValueError"`` and the message.

    Args:
        step: the step request (as yielded) or its name.
        error: the exception the step raised, or a message.
        position: the step's journal position, as ``StepFailed.position``.
        attempts: how many times it was tried.
    """
    exc = error if isinstance(error, BaseException) else Exception(error)
    name = step if isinstance(step, str) else step.name
    return StepFailed(
        step_name=name, position=position, error=ErrorInfo.from_exception(exc), attempts=attempts
    )


def finish(gen: Generator[Any, Any, R], value: object = None) -> R:
    """Send ``value`` (the last step's answer) and return the workflow's result.

    Raises:
        HookflowError: the workflow asked for another step instead of returning.
        Exception: whatever the workflow raised.
    """
    try:
        request = gen.send(value)
    except StopIteration as stop:
        result: R = stop.value
        return result
    what = request.describe() if isinstance(request, Step) else repr(request)
    raise HookflowError(f"the workflow did not finish: it asks for {what}")
