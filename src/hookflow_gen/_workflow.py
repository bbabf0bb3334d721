"""``@workflow``: turns a generator function into a registered ``Workflow``."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import TypeAdapter

from ._codec import adapter_for, encode
from ._schedule import Schedule
from ._steps import Flow, RetryPolicy
from .exceptions import (
    DuplicateWorkflowError,
    HookflowError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
)

if TYPE_CHECKING:
    from ._client import RunHandle
    from ._context import Context
    from ._journal import ErrorInfo

__all__ = [
    "Workflow",
    "get_workflow",
    "registered_schedules",
    "registered_workflows",
    "workflow",
]

M = TypeVar("M")
R = TypeVar("R")

FailureHandler = Callable[[str, Any, "ErrorInfo"], object]
"""``on_failure(run_id, payload, error)``: called once when a run fails for good.

``error`` is the run's recorded error. When an uncaught step failure ended
the run it is the ``StepFailed``, and ``error.original`` is the step
function's own exception (its ``type``, e.g. ``"builtins.ValueError"``, and
``message``); ``error.caused_by(ValueError)`` looks through the chain.
"""


class Workflow(Generic[M, R]):
    """A registered workflow: a generator function plus its name and options.

    Calling it (``checkout(ctx, order)``) returns the raw generator, so a
    test can step it by hand; ``start`` runs it durably.

    Attributes:
        name: the stable name runs are stored under.
        fn: the generator function.
        payload_adapter: validates and (de)serialises the payload.
        result_adapter: validates and (de)serialises the result.
        retry: default retry policy for this workflow's steps.
        on_failure: called with (run id, payload, error) when a run fails.
        schedules: the cron schedules that start runs of it, each with its
            name set.
    """

    __slots__ = (
        "__wrapped__",
        "fn",
        "name",
        "on_failure",
        "payload_adapter",
        "result_adapter",
        "retry",
        "schedules",
    )

    def __init__(
        self,
        fn: Callable[[Context, M], Flow[R]],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        on_failure: FailureHandler | None = None,
        schedule: str | Schedule[M] | Sequence[Schedule[M]] | None = None,
    ) -> None:
        if not inspect.isgeneratorfunction(fn):
            what = getattr(fn, "__qualname__", repr(fn))
            raise WorkflowDefinitionError(
                f"@workflow needs a generator function, and {what} is not one: a workflow "
                "yields its steps, e.g. `charge = yield from ctx.run('charge', charge_card, 7)`; "
                "one with no steps (yet) starts with `yield from ()`"
            )
        self.fn: Callable[[Context, M], Flow[R]] = fn
        self.__wrapped__: Callable[[Context, M], Flow[R]] = fn
        self.name: str = name or fn.__name__
        self.retry: RetryPolicy | None = retry
        self.on_failure: FailureHandler | None = on_failure
        adapters = _adapters(fn)
        self.payload_adapter: TypeAdapter[Any] = adapters[0]
        self.result_adapter: TypeAdapter[Any] = adapters[1]
        self.schedules: tuple[Schedule[M], ...] = self._resolve_schedules(schedule)

    def _resolve_schedules(
        self, schedule: str | Schedule[M] | Sequence[Schedule[M]] | None
    ) -> tuple[Schedule[M], ...]:
        """The schedules, checked (cron, payload, names) and named."""
        if schedule is None:
            return ()
        given: list[object]
        if isinstance(schedule, str):
            given = [Schedule(schedule, None)]
        elif isinstance(schedule, Schedule):
            given = [schedule]
        else:
            given = list(schedule)
        resolved: list[Schedule[M]] = []
        for item in given:
            if not isinstance(item, Schedule):
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: a schedule is a cron string or a Schedule, "
                    f"not {item!r}"
                )
            if item.name is None and len(given) > 1:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r} has {len(given)} schedules: give each a name "
                    "(Schedule(cron, payload, name=...))"
                )
            typed = typing.cast("Schedule[M]", item)
            named = dataclasses.replace(typed, name=typed.name or self.name)
            try:
                named.check()
            except WorkflowDefinitionError as exc:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}, schedule {named.name!r}: {exc}"
                ) from None
            try:
                encode(self.payload_adapter, named.payload, what="the schedule's payload")
            except HookflowError as exc:
                hint = ""
                if isinstance(schedule, str):
                    hint = (
                        "; a schedule given as a cron string starts runs with the payload "
                        "None: pass schedule=Schedule(cron, payload) instead"
                    )
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}, schedule {named.name!r}: {exc}{hint}"
                ) from None
            resolved.append(named)
        names = [item.name for item in resolved]
        if len(set(names)) != len(names):
            raise WorkflowDefinitionError(f"workflow {self.name!r}: two schedules share a name")
        return tuple(resolved)

    def __call__(self, ctx: Context, payload: M) -> Flow[R]:
        """The raw generator, for stepping by hand with ``next``/``send``/``throw``."""
        return self.fn(ctx, payload)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"

    def start(self, payload: M, *, run_id: str | None = None) -> RunHandle[R]:
        """Start a durable run with ``payload``; returns its handle at once.

        The payload is validated first (``PayloadValidationError`` if it does
        not fit). With ``run_id`` given and a run of that id already there,
        the existing run's handle is returned (idempotent start). Inside a
        database transaction the run is handed to the scheduler only once
        the transaction commits.
        """
        from ._client import start

        return start(self, payload, run_id=run_id)

    async def astart(self, payload: M, *, run_id: str | None = None) -> RunHandle[R]:
        """``start`` for async views: ``handle = await checkout.astart(order)``.

        The same validation, idempotency and on-commit hand-off as ``start``;
        the database work runs in Django's thread for synchronous code
        (``sync_to_async(thread_sensitive=True)``).
        """
        from ._client import astart

        return await astart(self, payload, run_id=run_id)


def _adapters(fn: Callable[..., Any]) -> tuple[TypeAdapter[Any], TypeAdapter[Any]]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"cannot read the annotations of workflow {fn.__qualname__}: {exc}"
        ) from exc
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise WorkflowDefinitionError(
            f"workflow {fn.__qualname__} must take exactly (ctx, payload), "
            f"it takes {len(params)} parameter(s)"
        )
    payload_type: Any = hints.get(params[1].name, Any)
    result_type: Any = Any
    returns = hints.get("return")
    if returns is not None:
        origin = typing.get_origin(returns)
        if origin in (collections.abc.Generator, typing.Generator):
            result_type = typing.get_args(returns)[2]
        else:
            raise WorkflowDefinitionError(
                f"workflow {fn.__qualname__} should be annotated `-> Flow[ResultType]`, "
                f"not `-> {returns!r}`"
            )
    return adapter_for(payload_type), adapter_for(result_type)


_registry: dict[str, Workflow[Any, Any]] = {}


def _register(wf: Workflow[Any, Any]) -> None:
    existing = _registry.get(wf.name)
    if existing is not None and not _same_function(existing.fn, wf.fn):
        raise DuplicateWorkflowError(
            f"two workflows are named {wf.name!r}: {_where(existing.fn)} and {_where(wf.fn)}; "
            "pass @workflow(name=...) to tell them apart"
        )
    for other in _registry.values():
        if other.name == wf.name:
            continue
        clash = {str(s.name) for s in other.schedules} & {str(s.name) for s in wf.schedules}
        if clash:
            raise DuplicateWorkflowError(
                f"workflows {other.name!r} and {wf.name!r} both have a schedule named "
                f"{sorted(clash)[0]!r}; pass Schedule(..., name=...) to tell them apart"
            )
    _registry[wf.name] = wf


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # The same function defined again: a module imported twice or reloaded.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def get_workflow(name: str) -> Workflow[Any, Any]:
    """The workflow registered under ``name``; ``UnknownWorkflowError`` if none."""
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownWorkflowError(
            f"no workflow is registered as {name!r} (registered: {known})"
        ) from None


def registered_workflows() -> dict[str, Workflow[Any, Any]]:
    """A copy of the registry: name to workflow."""
    return dict(_registry)


def registered_schedules() -> list[tuple[Workflow[Any, Any], Schedule[Any]]]:
    """Every registered workflow's schedules, as (workflow, schedule), by schedule name."""
    found = [(wf, schedule) for wf in _registry.values() for schedule in wf.schedules]
    return sorted(found, key=lambda pair: str(pair[1].name))


@overload
def workflow(fn: Callable[[Context, M], Flow[R]], /) -> Workflow[M, R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    on_failure: FailureHandler | None = None,
    schedule: str | None = None,
) -> Callable[[Callable[[Context, M], Flow[R]]], Workflow[M, R]]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    on_failure: FailureHandler | None = None,
    schedule: Schedule[M] | Sequence[Schedule[M]],
) -> Callable[[Callable[[Context, M], Flow[R]]], Workflow[M, R]]: ...
def workflow(
    fn: Callable[[Context, M], Flow[R]] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    on_failure: FailureHandler | None = None,
    schedule: str | Schedule[M] | Sequence[Schedule[M]] | None = None,
) -> Workflow[M, R] | Callable[[Callable[[Context, M], Flow[R]]], Workflow[M, R]]:
    """Make a generator function a durable workflow, bare or with options.

    Args:
        fn: the workflow function ``(ctx: Context, payload: M) -> Flow[R]``.
        name: the stable name runs are stored under (default: the
            function's ``__name__``). Renaming breaks runs in flight.
        retry: the default retry policy for the workflow's steps.
        on_failure: ``on_failure(run_id, payload, error)``, called once when
            a run fails for good (e.g. to alert or clean up).
        schedule: start a run on every tick of a cron schedule: a cron
            string (the runs' payload is None), a ``Schedule(cron, payload)``
            or a list of named ``Schedule``s. The expression and payload are
            checked here (``WorkflowDefinitionError``); the worker (database
            scheduler) or ``manage.py hookflow qstash-schedules`` (QStash)
            starts the runs, one per tick.
    """

    def decorate(func: Callable[[Context, M], Flow[R]]) -> Workflow[M, R]:
        wf = Workflow(func, name=name, retry=retry, on_failure=on_failure, schedule=schedule)
        _register(wf)
        return wf

    if fn is not None:
        return decorate(fn)
    return decorate
