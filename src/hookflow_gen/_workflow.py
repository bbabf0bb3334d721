"""``@workflow``: turns a generator function into a registered ``Workflow``."""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import TypeAdapter

from ._codec import adapter_for
from ._steps import Flow, RetryPolicy
from .exceptions import (
    DuplicateWorkflowError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
)

if TYPE_CHECKING:
    from ._client import RunHandle
    from ._context import Context
    from ._journal import ErrorInfo

__all__ = ["Workflow", "get_workflow", "registered_workflows", "workflow"]

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
    """

    __slots__ = (
        "__wrapped__",
        "fn",
        "name",
        "on_failure",
        "payload_adapter",
        "result_adapter",
        "retry",
    )

    def __init__(
        self,
        fn: Callable[[Context, M], Flow[R]],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        on_failure: FailureHandler | None = None,
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


@overload
def workflow(fn: Callable[[Context, M], Flow[R]], /) -> Workflow[M, R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    on_failure: FailureHandler | None = None,
) -> Callable[[Callable[[Context, M], Flow[R]]], Workflow[M, R]]: ...
def workflow(
    fn: Callable[[Context, M], Flow[R]] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    on_failure: FailureHandler | None = None,
) -> Workflow[M, R] | Callable[[Callable[[Context, M], Flow[R]]], Workflow[M, R]]:
    """Make a generator function a durable workflow, bare or with options.

    Args:
        fn: the workflow function ``(ctx: Context, payload: M) -> Flow[R]``.
        name: the stable name runs are stored under (default: the
            function's ``__name__``). Renaming breaks runs in flight.
        retry: the default retry policy for the workflow's steps.
        on_failure: ``on_failure(run_id, payload, error)``, called once when
            a run fails for good (e.g. to alert or clean up).
    """

    def decorate(func: Callable[[Context, M], Flow[R]]) -> Workflow[M, R]:
        wf = Workflow(func, name=name, retry=retry, on_failure=on_failure)
        _register(wf)
        return wf

    if fn is not None:
        return decorate(fn)
    return decorate
