"""Running a claimed step: its function (sync or async) or its HTTP call.

``StepInfo``/``current_step`` tell a step function which step it is; the
``CallDispatcher`` protocol lets a scheduler (QStash) make ``call`` steps'
requests instead of a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import httpx
import pydantic

from .._codec import adapter_for, encode
from .._engine import Pending
from .._steps import CallStep, LeafStep, RunStep
from ..exceptions import NonRetryableError, PayloadValidationError

__all__ = [
    "CallDispatcher",
    "CallExecutor",
    "Fatal",
    "Outcome",
    "StepExecutor",
    "StepInfo",
    "StillRunning",
    "call_response",
    "current_step",
    "http_call",
]

_ANY = adapter_for(Any)


@dataclass(frozen=True, slots=True)
class StepInfo:
    """About the step being run, for step functions: ``current_step()``.

    Attributes:
        run_id: the run.
        workflow_name: its workflow.
        step_name: the step.
        position: the step's journal position.
        attempt: 1 on the first try, 2 on the first retry, ...
        idempotency_key: stable across retries and redeliveries of this step;
            pass it to APIs that deduplicate (payment providers, ...).
    """

    run_id: str
    workflow_name: str
    step_name: str
    position: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """``"<run id>:<position>"``: the same on every attempt of this step."""
        return f"{self.run_id}:{self.position}"


_current_step: contextvars.ContextVar[StepInfo] = contextvars.ContextVar("hookflow_step")


def current_step() -> StepInfo:
    """The step being run; only inside a step function.

    Raises:
        LookupError: called outside a step function.
    """
    try:
        return _current_step.get()
    except LookupError:
        raise LookupError("current_step() is only available inside a step function") from None


class HTTPStatusError(Exception):
    """A ``call`` step got a non-2xx answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Fatal(NonRetryableError):
    """A failure no retry can fix (e.g. a result that does not fit its type)."""


@dataclass(slots=True)
class Outcome:
    """What one attempt of a step came to: its result JSON or its exception."""

    pending: Pending
    owner: str | None
    value: str | None = None  # result JSON on success
    exc: BaseException | None = None
    started_at: datetime | None = None  # when the attempt was claimed, if known


CallExecutor = Callable[[CallStep[Any], timedelta | None], dict[str, Any]]


@runtime_checkable
class CallDispatcher(Protocol):
    """Hands ``call`` steps' requests to someone else (QStash), so no worker waits.

    A scheduler that has these members is used as the runtime's dispatcher:
    a claimed ``call`` step is passed to ``dispatch_call`` and stays pending
    under its lease until the answer comes back through
    ``Runtime.complete_step`` with the same ``owner``.
    """

    #: How long a dispatched call may stay in flight (the request, its
    #: retries and the delivery of its answer) before it may be claimed again.
    call_lease: timedelta

    def dispatch_call(self, info: StepInfo, owner: str, step: CallStep[Any]) -> None:
        """Send the request; raise if it could not be handed over."""
        ...


def http_call(step: CallStep[Any], timeout: timedelta | None) -> dict[str, Any]:
    """Make a ``call`` step's request with httpx; the response as a plain dict."""
    body = step.body
    content: bytes | str | None = None
    json_body: Any = None
    if isinstance(body, (bytes, str)):
        content = body
    elif body is not None:
        json_body = _ANY.dump_python(body, mode="json")
    seconds = timeout.total_seconds() if timeout else 30.0
    response = httpx.request(
        step.method,
        step.url,
        headers=dict(step.headers),
        content=content,
        json=json_body,
        timeout=seconds,
    )
    return call_response(step, response.status_code, dict(response.headers), response.text)


def call_response(
    step: CallStep[Any], status: int, headers: dict[str, str], text: str
) -> dict[str, Any]:
    """Turn an HTTP answer into a ``CallResponse`` dict, or raise for a non-2xx one.

    Under ``raise_for_status=False`` a non-2xx answer is a value too, its
    body kept as text.
    """
    if not 200 <= status < 300 and not step.raise_for_status:
        lower = {name.lower(): value for name, value in headers.items()}
        return {"status": status, "headers": lower, "body": text}
    if not 200 <= status < 300:
        error = HTTPStatusError(status, text)
        if status == 429 or status >= 500:
            raise error
        raise NonRetryableError(str(error)) from error
    body: Any = text
    if step.response_model is not str:
        try:
            body = _ANY.validate_json(text) if text else None
        except pydantic.ValidationError as exc:
            raise NonRetryableError(f"call {step.name!r}: the answer is not JSON: {exc}") from exc
    lower = {name.lower(): value for name, value in headers.items()}
    return {"status": status, "headers": lower, "body": body}


class StillRunning(Exception):
    """A timed-out attempt could not be stopped: it keeps its lease until it ends."""


class _StepTimeout(BaseException):
    """Raised inside a step's thread to stop an attempt that ran out of time.

    A ``BaseException``, so the step's own ``except Exception`` does not
    swallow it.
    """


class StepExecutor:
    """Runs step functions and ``call`` requests, one attempt at a time.

    - A step with no timeout runs on the calling thread.
    - An ``atomic`` step runs on the calling thread too, inside ``savepoint``
      (the tick's transaction, on the tick's own connection), and its result
      is encoded inside it: a result that does not validate, or an attempt
      that overran its timeout, rolls its writes back with it. A sync
      function cannot be interrupted there, so the timeout is checked when
      it returns.
    - A step with a timeout runs on a thread of its own, started at once
      (never queued behind other steps, so an attempt that is recorded as
      timed out never starts later). When the time is up the thread is
      interrupted (a ``BaseException`` raised at its next Python line), and
      the attempt is recorded only once the thread has ended. A thread that
      cannot be interrupted (blocked in C code) raises ``StillRunning``: the
      runtime then keeps the step's lease, so its retry never overlaps it.
    - An ``async def`` step runs in ``asyncio.run`` under ``asyncio.wait_for``
      (cancelled at its timeout); called from inside a running event loop it
      runs on a thread of its own, with the caller's context variables.

    Args:
        call_executor: makes ``call`` steps' HTTP requests.
        thread_exit: called at the end of every thread this executor starts
            (the Django app closes that thread's database connections there).
        grace: seconds an interrupted thread gets to end.
    """

    def __init__(
        self,
        call_executor: CallExecutor,
        *,
        thread_exit: Callable[[], None] | None = None,
        grace: float = 2.0,
    ) -> None:
        self.call_executor = call_executor
        self.thread_exit = thread_exit
        self.grace = grace
        #: What an attempt calls: ``call`` unless replaced (the testing kit
        #: routes stubbed steps here).
        self.route: Callable[..., Any] = self.call

    def attempt(
        self,
        step: LeafStep,
        info: StepInfo,
        savepoint: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> str:
        """Run one attempt; the result as JSON.

        Raises:
            Fatal: the result does not fit the step's type.
            StillRunning: a timed-out attempt could not be stopped.
            Exception: whatever the step raised (its retry policy decides).
        """
        token = _current_step.set(info)
        try:
            if savepoint is not None:
                started = time.monotonic()
                with savepoint():
                    value = self.route(step, timeout=None)
                    _check_time(step, time.monotonic() - started)
                    return _encode(step, value)
            return _encode(step, self.route(step, timeout=_seconds(_timeout_of(step))))
        finally:
            _current_step.reset(token)

    def call(self, step: LeafStep, *, timeout: float | None) -> Any:
        """Call the step's function (or make its request) once; its raw value."""
        if isinstance(step, CallStep):
            return self.call_executor(step, step.timeout)
        assert isinstance(step, RunStep)
        fn: Callable[..., Any] = step.fn
        if inspect.iscoroutinefunction(fn):
            return self._run_async(fn(*step.args, **step.kwargs), timeout)
        if timeout is None:
            return fn(*step.args, **step.kwargs)
        return self._run_on_thread(step.name, lambda: fn(*step.args, **step.kwargs), timeout)

    def _run_async(self, coro: Any, timeout: float | None) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(bounded())
        # Inside an event loop (an async view): a loop of its own on a thread.
        return self._run_on_thread("async step", lambda: asyncio.run(bounded()), None)

    def _run_on_thread(self, name: str, fn: Callable[[], Any], timeout: float | None) -> Any:
        box: dict[str, Any] = {}
        context = contextvars.copy_context()

        def target() -> None:
            try:
                box["value"] = context.run(fn)
            except _StepTimeout:
                box["timed_out"] = True
            except BaseException as exc:
                box["error"] = exc
            finally:
                if self.thread_exit is not None:
                    # Cleanup must not mask the attempt's own outcome.
                    with contextlib.suppress(Exception):
                        self.thread_exit()

        thread = threading.Thread(target=target, name=f"hookflow-step {name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            _interrupt(thread)
            thread.join(self.grace)
            if thread.is_alive():
                raise StillRunning(f"step {name!r} ran past its timeout and could not be stopped")
            raise TimeoutError(f"step {name!r} took longer than {timeout:g}s")
        if box.get("timed_out"):
            raise TimeoutError(f"step {name!r} took longer than {timeout or 0:g}s")
        if "error" in box:
            raise box["error"]
        return box.get("value")


def _timeout_of(step: LeafStep) -> timedelta | None:
    timeout: timedelta | None = getattr(step, "timeout", None)
    return timeout


def _seconds(timeout: timedelta | None) -> float | None:
    return timeout.total_seconds() if timeout is not None else None


def _check_time(step: LeafStep, elapsed: float) -> None:
    limit = _seconds(_timeout_of(step))
    if limit is not None and elapsed > limit:
        raise TimeoutError(
            f"step {step.name!r} took {elapsed:.3g}s, longer than its {limit:g}s timeout; "
            "its writes were rolled back"
        )


def _encode(step: LeafStep, value: object) -> str:
    try:
        return encode(step.adapter, value, what=f"the result of step {step.name!r}")
    except PayloadValidationError as exc:
        raise Fatal(str(exc)) from exc


def _interrupt(thread: threading.Thread) -> None:
    """Raise ``_StepTimeout`` in ``thread`` at its next Python line."""
    ident = thread.ident
    if ident is None:  # pragma: no cover - a started thread has an ident
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(_StepTimeout)
    )
