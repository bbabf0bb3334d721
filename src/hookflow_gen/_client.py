"""Run handles, and the runtime that module-level calls use.

``Workflow.start``, ``notify`` and ``cancel`` act on the *current runtime*:
the one ``hookflow_gen.django`` builds from settings when Django is ready,
or one a test installs with ``use_runtime``.

The ``a``-prefixed twins (``Workflow.astart``, ``RunHandle.aresult``,
``anotify``) are for async views: they run the same synchronous code through
``asgiref``'s ``sync_to_async(thread_sensitive=True)``, as Django recommends
for ORM work, so each call uses the thread that owns the request's database
connection and ``transaction.on_commit`` hooks behave as in a sync view.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from asgiref.sync import sync_to_async

from ._codec import adapter_for, decode
from ._journal import StepRecord
from ._scheduler import InlineScheduler
from ._store import RunState, RunStatus
from ._updates import Update, UpdateState, UpdateStatus
from ._workflow import Workflow, get_workflow
from .exceptions import (
    ConfigurationError,
    HookflowError,
    RunCancelled,
    RunNotFinished,
    UnknownRunError,
    UpdateRejected,
    UpdateRunFinished,
    UpdateTimeout,
    WorkflowFailed,
)

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "RunHandle",
    "anotify",
    "astart",
    "cancel",
    "current_runtime",
    "get_run",
    "notify",
    "start",
    "use_runtime",
]

R = TypeVar("R")
T = TypeVar("T")
Q = TypeVar("Q")
A = TypeVar("A")

#: The first pause between two reads of an update's answer; it doubles up to ``poll``.
_FIRST_POLL = 0.005

_runtime: Runtime | None = None


def current_runtime() -> Runtime:
    """The runtime in use.

    Raises:
        ConfigurationError: none is set up (``hookflow_gen.django`` is not in
            ``INSTALLED_APPS``, or Django is not set up yet).
    """
    if _runtime is None:
        raise ConfigurationError(
            "hookflow_gen has no runtime yet: add 'hookflow_gen.django' to INSTALLED_APPS and "
            "call django.setup() (manage.py does), or install one with use_runtime() in tests"
        )
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install ``runtime`` as the current one (the Django app does this on ready)."""
    global _runtime
    _runtime = runtime


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Generator[Runtime, None, None]:
    """Make ``runtime`` current inside the block, then restore the previous one."""
    global _runtime
    previous, _runtime = _runtime, runtime
    try:
        yield runtime
    finally:
        _runtime = previous


def start(workflow: Workflow[Any, R], payload: object, *, run_id: str | None) -> RunHandle[R]:
    """Start a run on the current runtime: what ``Workflow.start`` calls.

    Raises:
        HookflowError: ``run_id`` names an existing run of another workflow.
    """
    runtime = current_runtime()
    run, _ = runtime.start_run(workflow, payload, run_id=run_id)
    if run.workflow != workflow.name:
        raise HookflowError(
            f"run {run.run_id!r} exists already, for workflow {run.workflow!r}, "
            f"not {workflow.name!r}"
        )
    return RunHandle(run.run_id, workflow, runtime)


async def astart(
    workflow: Workflow[Any, R], payload: object, *, run_id: str | None
) -> RunHandle[R]:
    """``start`` for async code: what ``Workflow.astart`` awaits."""
    return await sync_to_async(start, thread_sensitive=True)(workflow, payload, run_id=run_id)


class RunHandle(Generic[R]):
    """A run, as seen from outside: its id, status and typed result.

    Attributes:
        run_id: the run's id.
        workflow: its workflow.
    """

    __slots__ = ("_runtime", "run_id", "workflow")

    def __init__(self, run_id: str, workflow: Workflow[Any, R], runtime: Runtime) -> None:
        self.run_id: str = run_id
        self.workflow: Workflow[Any, R] = workflow
        self._runtime = runtime

    def __repr__(self) -> str:
        return f"<RunHandle {self.workflow.name!r} {self.run_id}>"

    def state(self) -> RunState:
        """The stored run, fresh from the store."""
        run = self._runtime.store.get_run(self.run_id)
        if run is None:
            raise UnknownRunError(f"no run has id {self.run_id!r}")
        return run

    def steps(self) -> list[StepRecord]:
        """The run's journal so far: one record per step reached, in order."""
        return self._runtime.store.steps(self.run_id)

    @property
    def status(self) -> RunStatus:
        """running, completed, failed, cancelled or continued (read fresh each time).

        The status of this run id itself; ``latest()`` is the run that goes
        on after ``continue_as_new``.
        """
        return self.state().status

    def latest(self) -> RunState:
        """The last run of this run's continue-as-new chain (this run if it did not continue)."""
        return self._follow(self.state())

    def _follow(self, run: RunState) -> RunState:
        store = self._runtime.store
        while run.status is RunStatus.CONTINUED and run.continued_as is not None:
            successor = store.get_run(run.continued_as)
            if successor is None:
                raise UnknownRunError(
                    f"run {run.run_id} continued as {run.continued_as!r}, which no longer exists"
                )
            run = successor
        return run

    def custom_status(self, model: type[T]) -> T | None:
        """The latest ``ctx.set_status`` of the run, validated as ``model``; None if never set.

        Read fresh each time, from the last run of the continue-as-new chain
        (a new run keeps the status until its workflow sets one).

        Raises:
            PayloadValidationError: the stored status does not fit ``model``.
        """
        return self._status_of(self.latest(), model)

    async def acustom_status(self, model: type[T]) -> T | None:
        """``custom_status`` for async code (read through ``sync_to_async``, thread-sensitive).

        Raises:
            PayloadValidationError: the stored status does not fit ``model``.
        """
        run = await sync_to_async(self.latest, thread_sensitive=True)()
        return self._status_of(run, model)

    def _status_of(self, run: RunState, model: type[T]) -> T | None:
        if run.custom_status is None:
            return None
        value: T | None = decode(
            adapter_for(model | None),
            run.custom_status,
            what=f"the custom status of run {run.run_id}",
        )
        return value

    def result(self, *, wait: float = 0.0, poll: float = 0.05) -> R:
        """The typed result; waits up to ``wait`` seconds for the run to finish.

        A run that continued as new is followed to the last run of its chain,
        whose result this is.

        Raises:
            RunNotFinished: still running after ``wait`` seconds.
            WorkflowFailed: the run failed (``.error`` says why).
            RunCancelled: the run was cancelled.
        """
        clock = self._runtime.clock
        deadline = clock.monotonic() + wait
        run = self.latest()
        while not run.status.finished and clock.monotonic() < deadline:
            clock.sleep(poll)
            run = self._latest_from(run.run_id)
        return self._outcome(run)

    async def aresult(self, *, wait: float = 0.0, poll: float = 0.05) -> R:
        """``result`` for async code: polls without blocking the event loop.

        Each read of the run goes through ``sync_to_async`` (thread-sensitive);
        between reads the coroutine sleeps with ``asyncio.sleep``, so a long
        ``wait`` holds neither the event loop nor the thread Django keeps for
        synchronous database work.

        Raises:
            RunNotFinished: still running after ``wait`` seconds.
            WorkflowFailed: the run failed (``.error`` says why).
            RunCancelled: the run was cancelled.
        """
        # Like ``result``, the last run of a continue-as-new chain.
        read = sync_to_async(self._latest_from, thread_sensitive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        run = await read(self.run_id)
        while not run.status.finished and loop.time() < deadline:
            await asyncio.sleep(poll)
            run = await read(run.run_id)
        return self._outcome(run)

    def _latest_from(self, run_id: str) -> RunState:
        run = self._runtime.store.get_run(run_id)
        if run is None:
            raise UnknownRunError(f"no run has id {run_id!r}")
        return self._follow(run)

    def _outcome(self, run: RunState) -> R:
        if run.status is RunStatus.COMPLETED:
            value: R = decode(
                self.workflow.result_adapter,
                run.result or "null",
                what=f"the result of run {self.run_id}",
            )
            return value
        if run.status is RunStatus.FAILED:
            assert run.error is not None
            raise WorkflowFailed(self.run_id, run.error)
        if run.status is RunStatus.CANCELLED:
            raise RunCancelled(f"run {run.run_id} was cancelled")
        raise RunNotFinished(f"run {self.run_id} is still running")

    def cancel(self) -> None:
        """Cancel the run (and its children)."""
        self._runtime.cancel(self.run_id)

    # -- updates ---------------------------------------------------------------------

    def update(
        self,
        update: Update[Q, A],
        request: Q,
        *,
        timeout: float = 30.0,
        update_id: str | None = None,
        poll: float = 0.5,
    ) -> A:
        """Send an update to the run and wait for its typed answer.

        The request is validated as the update's request type and stored
        before anything else happens; the workflow receives it at its next
        ``ctx.receive(update)`` (an update sent earlier is kept until then).
        A run that continued as new is followed to the live end of its chain,
        which gets the update, as ``result()`` follows it; an update still
        unreceived when its run continues goes on to the next run. Between
        reads of the answer the caller sleeps, from 5 ms doubling up to
        ``poll`` seconds. Calling again with the same ``update_id`` (after an
        ``UpdateTimeout``, or from a retried request) sends nothing new and
        waits for the same answer.

        Args:
            update: the update's definition, shared with the workflow.
            request: the request.
            timeout: how long to wait for the answer, in seconds.
            update_id: the update's id, unique within the run (default: a new one).
            poll: the longest pause between two reads of the answer.

        Raises:
            PayloadValidationError: the request does not fit; nothing was sent.
            UpdateRejected: the workflow refused it (``.reason`` says why).
            UpdateTimeout: no answer within ``timeout`` (``.update_id`` to wait again).
            UpdateRunFinished: the run (the last of its chain) had ended, or
                ended without answering.
            UpdateError: ``update_id`` was used for another update of this run.
            UnknownRunError: no run has this id.
            HookflowError: called inside ``transaction.atomic()`` with a
                scheduler whose ticks run elsewhere (they could not see it).
        """
        update_id = update_id if update_id is not None else uuid.uuid4().hex
        runtime = self._runtime
        holder = self._send_update(update, request, update_id).run_id
        clock = runtime.clock
        deadline = clock.monotonic() + timeout
        pause = min(_FIRST_POLL, poll)
        while True:
            holder, state = self._update_state(holder, update_id)
            if state is not None:
                return self._update_outcome(update, state)
            if clock.monotonic() >= deadline:
                raise self._update_timeout(update, update_id, timeout)
            clock.sleep(min(pause, max(deadline - clock.monotonic(), 0.0)))
            pause = min(pause * 2, poll)
            if isinstance(runtime.scheduler, InlineScheduler):
                # In-process runs (the testing kit): what became due meanwhile runs now.
                runtime.scheduler.drain()

    async def aupdate(
        self,
        update: Update[Q, A],
        request: Q,
        *,
        timeout: float = 30.0,
        update_id: str | None = None,
        poll: float = 0.5,
    ) -> A:
        """``update`` for async code: polls with ``asyncio.sleep`` between reads.

        Raises:
            PayloadValidationError: the request does not fit; nothing was sent.
            UpdateRejected: the workflow refused it (``.reason`` says why).
            UpdateTimeout: no answer within ``timeout`` (``.update_id`` to wait again).
            UpdateRunFinished: the run (the last of its chain) had ended, or
                ended without answering.
            UpdateError: ``update_id`` was used for another update of this run.
            UnknownRunError: no run has this id.
            HookflowError: called inside ``transaction.atomic()`` with a
                scheduler whose ticks run elsewhere (they could not see it).
        """
        update_id = update_id if update_id is not None else uuid.uuid4().hex
        send = sync_to_async(self._send_update, thread_sensitive=True)
        holder = (await send(update, request, update_id)).run_id
        read = sync_to_async(self._update_state, thread_sensitive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = min(_FIRST_POLL, poll)
        while True:
            holder, state = await read(holder, update_id)
            if state is not None:
                return self._update_outcome(update, state)
            if loop.time() >= deadline:
                raise self._update_timeout(update, update_id, timeout)
            await asyncio.sleep(min(pause, max(deadline - loop.time(), 0.0)))
            pause = min(pause * 2, poll)

    def _send_update(
        self, update: Update[Any, Any], request: object, update_id: str
    ) -> UpdateState:
        runtime = self._runtime
        in_transaction = getattr(runtime.store, "in_transaction", None)
        if (
            not isinstance(runtime.scheduler, InlineScheduler)
            and callable(in_transaction)
            and in_transaction()
        ):
            # The update would commit only with the caller's transaction, and the
            # run stay locked by it: no worker could answer before it ends.
            raise HookflowError(
                f"update {update.name!r} was sent inside transaction.atomic(); its answer is "
                "written by a worker once the update is committed, so send it outside the "
                "transaction (or with transaction.on_commit)"
            )
        return runtime.send_update(self.run_id, update, request, update_id)

    def _update_state(self, run_id: str, update_id: str) -> tuple[str, UpdateState | None]:
        """Where the update is now, and its state once settled or once it can be no more.

        ``run_id`` is the run that had the update at the last read; an update
        handed on to the next run of a continue-as-new chain is followed
        there. The state is None while the update waits for its answer.
        """
        store = self._runtime.store
        while True:
            state = store.get_update(run_id, update_id)
            if state is None or state.status.settled:
                return run_id, state
            if state.status is UpdateStatus.PENDING:
                run = store.get_run(run_id)
                if run is not None and not run.status.finished:
                    return run_id, None
                # Ended: read once more, for an answer (or a hand-over) written
                # just before the end.
                state = store.get_update(run_id, update_id) or state
                if state.status is not UpdateStatus.CONTINUED:
                    return run_id, state
            run = store.get_run(run_id)
            if run is None or run.continued_as is None:
                return run_id, state
            run_id = run.continued_as

    def _update_outcome(self, update: Update[Any, A], state: UpdateState) -> A:
        if state.status is UpdateStatus.ANSWERED:
            value: A = decode(
                update.answer_adapter,
                state.answer or "null",
                what=f"the answer to update {update.name!r}",
            )
            return value
        if state.status is UpdateStatus.REJECTED:
            reason = state.reason or ""
            raise UpdateRejected(
                f"run {state.run_id} rejected update {update.name!r} ({state.update_id}): {reason}",
                run_id=state.run_id,
                update_id=state.update_id,
                reason=reason,
            )
        run = self._runtime.store.get_run(state.run_id)
        status = run.status.value if run is not None else "gone"
        raise UpdateRunFinished(
            f"run {state.run_id} is {status} without answering update {update.name!r} "
            f"({state.update_id})",
            run_id=state.run_id,
            update_id=state.update_id,
        )

    def _update_timeout(
        self, update: Update[Any, Any], update_id: str, timeout: float
    ) -> UpdateTimeout:
        return UpdateTimeout(
            f"run {self.run_id} did not answer update {update.name!r} ({update_id}) within "
            f"{timeout:g} s; it stays accepted: call update again with update_id={update_id!r} "
            "to go on waiting",
            run_id=self.run_id,
            update_id=update_id,
        )


@overload
def get_run(run_id: str, /) -> RunHandle[Any]: ...
@overload
def get_run(workflow: Workflow[Any, R], run_id: str, /) -> RunHandle[R]: ...
def get_run(
    workflow_or_id: Workflow[Any, Any] | str, run_id: str | None = None, /
) -> RunHandle[Any]:
    """The handle of an existing run: ``get_run(checkout, run_id)`` is a ``RunHandle[Receipt]``.

    ``get_run(run_id)`` alone finds the workflow from the stored run, and
    types the result as ``Any``.

    Raises:
        UnknownRunError: no run has that id.
        HookflowError: the run belongs to another workflow than the one given.
    """
    if isinstance(workflow_or_id, str):
        if run_id is not None:
            raise TypeError("get_run takes (run_id) or (workflow, run_id)")
        expected: Workflow[Any, Any] | None = None
        run_id = workflow_or_id
    else:
        if run_id is None:
            raise TypeError("get_run(workflow, run_id) needs the run id too")
        expected = workflow_or_id
    runtime = current_runtime()
    run = runtime.store.get_run(run_id)
    if run is None:
        raise UnknownRunError(f"no run has id {run_id!r}")
    if expected is None:
        return RunHandle(run.run_id, get_workflow(run.workflow), runtime)
    if run.workflow != expected.name:
        raise HookflowError(
            f"run {run_id!r} is a run of workflow {run.workflow!r}, not {expected.name!r}"
        )
    return RunHandle(run.run_id, expected, runtime)


def notify(key: str, payload: object) -> int:
    """Send an event: every run waiting on ``key`` receives ``payload``.

    If none waits yet, the event is kept for the first step that waits on
    ``key``. Returns the number of runs that received it now.

    Raises:
        PayloadValidationError: the payload does not fit a waiting step's
            model; nothing was delivered.
    """
    return current_runtime().notify(key, payload)


async def anotify(key: str, payload: object) -> int:
    """``notify`` for async code (run through ``sync_to_async``, thread-sensitive).

    Raises:
        PayloadValidationError: the payload does not fit a waiting step's
            model; nothing was delivered.
    """
    return await sync_to_async(notify, thread_sensitive=True)(key, payload)


def cancel(run_id: str) -> None:
    """Cancel a run (and its children).

    Raises:
        UnknownRunError: no run has that id.
    """
    current_runtime().cancel(run_id)
