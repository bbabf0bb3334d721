"""What every part of the runtime shares: its settings, replays, wake-ups, run ends."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from .._clock import Clock, SystemClock
from .._codec import decode
from .._context import RunInfo
from .._engine import Pending, Replay
from .._flow import FlowGate
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._scheduler import Scheduler
from .._steps import RetryPolicy
from .._store import RunState, RunStatus, Store
from .._workflow import get_workflow
from ..exceptions import (
    InvalidIdError,
    RetryAfter,
)
from . import _transitions as T
from ._execute import (
    CallDispatcher,
    CallExecutor,
    StepExecutor,
    http_call,
)
from ._observe import (
    Observer,
    RunFinished,
    StepCompleted,
    StepFailed,
    Tracer,
)
from ._warm import WarmCache

__all__ = ["MAX_ID", "RuntimeBase", "TickReport", "check_id", "keeps_wake", "tell"]

log = logging.getLogger("hookflow_gen")
_PENDING = StepStatus.PENDING
#: The longest run id or event key the store keeps.
MAX_ID = 255


def keeps_wake(current: datetime | None, wake_at: datetime | None, now: datetime) -> bool:
    """Whether a run whose wake-up is ``current`` needs no write to be due by ``wake_at``.

    None needs none when none is set. Otherwise an earlier wake-up still
    ahead is kept: a tick that comes early finds nothing due and sets the
    next one, which saves a write (and, on QStash, a message) per step.
    """
    if wake_at is None:
        return current is None
    return current is not None and now < current <= wake_at


def check_id(value: object, what: str) -> str:
    """``value`` if it can be stored as a run id or event key.

    Raises:
        InvalidIdError: not a string, empty, over 255 characters, or with a NUL.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise InvalidIdError(f"{what} must not be empty")
    if len(value) > MAX_ID:
        raise InvalidIdError(f"{what} is {len(value)} characters long; at most {MAX_ID} fit")
    if "\x00" in value:
        raise InvalidIdError(f"{what} holds a NUL character")
    return value


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did (for logs, tests and the worker's output)."""

    run_id: str
    status: RunStatus
    steps_run: int
    wake_at: datetime | None


def tell(observer: Observer, event: Any) -> None:
    """Hand ``event`` to ``observer``; what it raises is logged: the change is committed."""
    try:
        observer.observe(event)
    except Exception:
        log.exception("an observer of hookflow_gen raised on %s", type(event).__name__)


def _child_error(child: RunState) -> ErrorInfo:
    return child.error or ErrorInfo(
        type="hookflow_gen.exceptions.RunCancelled",
        message=f"child run {child.run_id} was cancelled",
        mro=("hookflow_gen.exceptions.RunCancelled",),
    )


class RuntimeBase:
    """What every part of ``Runtime`` shares; the arguments are ``Runtime``'s."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        clock: Clock | None = None,
        budget: timedelta = timedelta(seconds=10),
        lease: timedelta = timedelta(minutes=5),
        default_retry: RetryPolicy | None = None,
        warm_runs: int = 256,
        call_executor: CallExecutor = http_call,
        call_dispatcher: CallDispatcher | None = None,
        thread_exit: Callable[[], None] | None = None,
        max_tick_failures: int = 5,
        suspend_for: timedelta = timedelta(minutes=1),
        observer: Observer | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.clock: Clock = clock or SystemClock()
        self.budget = budget
        self.lease = lease
        self.default_retry: RetryPolicy = default_retry or RetryPolicy()
        self.call_executor = call_executor
        if call_dispatcher is None and isinstance(scheduler, CallDispatcher):
            call_dispatcher = scheduler
        self.call_dispatcher = call_dispatcher
        self.max_tick_failures = max_tick_failures
        self.suspend_for = suspend_for
        self.observer = observer
        self.tracer = tracer
        self._warm = WarmCache(warm_runs)
        self.executor: StepExecutor = StepExecutor(call_executor, thread_exit=thread_exit)
        bind = getattr(scheduler, "bind", None)
        if callable(bind):
            bind(self)

    def _replay_for(self, run: RunState) -> Replay:
        replay = self._warm.take(run.run_id)
        if replay is not None:
            replay.catch_up(self.store.steps(run.run_id, replay.position))
            return replay
        return self._new_replay(run)

    def _new_replay(self, run: RunState, journal: list[StepRecord] | None = None) -> Replay:
        """A replay of ``run`` from its first step: its stored journal, or ``journal``."""
        workflow = get_workflow(run.workflow)
        info = RunInfo(
            run_id=run.run_id,
            workflow_name=run.workflow,
            started_at=run.created_at or self.clock.now(),
            parent_run_id=run.parent_run_id,
            continued_from=run.continued_from,
        )
        if journal is None:
            journal = self.store.steps(run.run_id)
        return Replay(workflow, run.payload, info, journal)

    def _policy(self, run: RunState, step: Any) -> RetryPolicy:
        own: RetryPolicy | None = getattr(step, "retry", None)
        if own is not None:
            return own
        workflow = get_workflow(run.workflow)
        return workflow.retry or self.default_retry

    def _failed_attempt(
        self,
        run: RunState,
        pending: Pending,
        current: StepRecord,
        exc: BaseException,
        now: datetime,
        *,
        error: ErrorInfo | None = None,
        attempt_started: datetime | None = None,
    ) -> StepRecord:
        policy = self._policy(run, pending.step)
        error = error or ErrorInfo.from_exception(exc)
        if policy.retries(exc, current.attempts):
            delay = exc.delay if isinstance(exc, RetryAfter) else policy.delay(current.attempts)
            log.info(
                "run %s: step %r attempt %d failed (%s); retrying in %s",
                run.run_id,
                current.name,
                current.attempts,
                error.message,
                delay,
            )
            record = T.retry_later(current, error, now + delay, started=attempt_started, now=now)
        else:
            record = T.fail(current, error, now)
        self._observe_failed(run, current, error, record, now)
        return record

    # -- events, told after their commit -------------------------------------------------

    def _observe_completed(self, run: RunState, record: StepRecord) -> None:
        """Tell the observer that ``record`` completed, once this transaction commits."""
        observer = self.observer
        if observer is None or not observer.wants(StepCompleted):
            return
        event = StepCompleted(
            run_id=run.run_id,
            workflow=run.workflow,
            step_name=record.name,
            kind=record.kind,
            position=record.position,
            attempt=record.attempts,
            started_at=record.started_at,
            completed_at=record.completed_at or self.clock.now(),
            result=record.result,
        )
        self.store.on_commit(partial(tell, observer, event))

    def _observe_settled(self, run: RunState, record: StepRecord) -> None:
        """Tell the observer how a step that settled outside an attempt (a wait, a child) ended."""
        if self.observer is None:
            return
        if record.status is StepStatus.COMPLETED:
            self._observe_completed(run, record)
        elif record.status is StepStatus.FAILED and record.error is not None:
            now = record.completed_at or self.clock.now()
            self._observe_failed(run, record, record.error, record, now)

    def _observe_failed(
        self,
        run: RunState,
        current: StepRecord,
        error: ErrorInfo,
        record: StepRecord,
        now: datetime,
    ) -> None:
        observer = self.observer
        if observer is None or not observer.wants(StepFailed):
            return
        retrying = record.status is _PENDING
        event = StepFailed(
            run_id=run.run_id,
            workflow=run.workflow,
            step_name=current.name,
            kind=current.kind,
            position=current.position,
            attempt=max(current.attempts, 1),
            error=error,
            will_retry=retrying,
            retry_at=(record.wake_at or now) if retrying else None,
            failed_at=now,
        )
        self.store.on_commit(partial(tell, observer, event))

    # -- run state ----------------------------------------------------------------------

    def _set_wake(
        self,
        run: RunState,
        wake_at: datetime | None,
        now: datetime,
        *,
        gate: FlowGate | None = None,
    ) -> RunState:
        if keeps_wake(run.wake_at, wake_at, now):
            return run
        if wake_at is None:
            run = dataclasses.replace(run, wake_at=None)
            self.store.save_run(run)
            return run
        if gate is not None:
            return self._save_woken(T.wake(run, wake_at), gate)
        return self._wake(run, wake_at)

    def _wake(self, run: RunState, at: datetime) -> RunState:
        return self._save_woken(T.wake(run, at))

    def _save_woken(self, run: RunState, gate: FlowGate | None = None) -> RunState:
        """Save a woken run and hand its wake-up to the scheduler.

        With ``gate`` (the run's next step is flow-controlled) a scheduler
        that can gate deliveries itself (``wake_gated``, QStash's flow
        control) is told the key and its limits.
        """
        self.store.save_run(run)
        wake_gated = getattr(self.scheduler, "wake_gated", None) if gate is not None else None
        if wake_gated is not None:
            wake_gated(self.store, run, gate)
        else:
            self.scheduler.wake(self.store, run)
        return run

    def _finish(
        self,
        run: RunState,
        status: RunStatus,
        *,
        result: str | None = None,
        error: ErrorInfo | None = None,
    ) -> RunState:
        now = self.clock.now()
        run = T.finish(run, status, now, result=result, error=error)
        self.store.save_run(run)
        self._warm.drop(run.run_id)
        self._settle_waiters(run, now)
        self._observe_finished(run, now)
        if status is RunStatus.FAILED and error is not None:
            self.store.on_commit(lambda: self._on_failure(run, error))
        return run

    def _observe_finished(self, run: RunState, now: datetime) -> None:
        """Tell the observer, once the transaction commits, that ``run`` ended."""
        observer = self.observer
        if observer is not None and observer.wants(RunFinished):
            event = RunFinished(
                run_id=run.run_id,
                workflow=run.workflow,
                status=run.status,
                finished_at=now,
                result=run.result,
                error=run.error,
            )
            self.store.on_commit(partial(tell, observer, event))

    def _settle_waiters(self, child: RunState, now: datetime) -> None:
        """Settle every pending invoke step waiting on the finished ``child``.

        Locks each parent while holding the child (the one lock order of
        parent and child): a parent's tick never locks a child's row.
        """
        for parent_id, position in self.store.waiters("invoke", child.run_id):
            parent = self.store.lock_run(parent_id)
            if parent is None or parent.status.finished:
                continue
            records = self.store.steps(parent_id, position)
            if not records or records[0].position != position:
                continue
            record = records[0]
            if record.status is not _PENDING or record.key != child.run_id:
                continue
            settled = self._child_outcome(record, child, now)
            self.store.save_step(parent_id, settled)
            self._observe_settled(parent, settled)
            self._wake(parent, now)

    def _child_outcome(self, record: StepRecord, child: RunState, now: datetime) -> StepRecord:
        # A child retried under a policy keeps the parent step's attempt count.
        attempts = max(record.attempts, 1)
        if child.status is RunStatus.CONTINUED:
            # The chain goes on: its live end is the child now.
            end = self._chain_end(child)
            record = dataclasses.replace(record, key=end.run_id)
            child = end
        if child.status is RunStatus.COMPLETED:
            return dataclasses.replace(T.complete(record, child.result, now), attempts=attempts)
        if child.status.finished:
            error = _child_error(child)
            return dataclasses.replace(T.fail(record, error, now), attempts=attempts)
        return dataclasses.replace(record, wake_at=now + self.lease)

    def _chain_end(self, run: RunState) -> RunState:
        """The last run of ``run``'s continue-as-new chain (``run`` itself if none follows)."""
        while run.status is RunStatus.CONTINUED and run.continued_as is not None:
            successor = self.store.get_run(run.continued_as)
            if successor is None:
                break
            run = successor
        return run

    def _on_failure(self, run: RunState, error: ErrorInfo) -> None:
        try:
            workflow = get_workflow(run.workflow)
        except LookupError:
            return
        if workflow.on_failure is None:
            return
        try:
            payload = decode(workflow.payload_adapter, run.payload, what="payload")
            workflow.on_failure(run.run_id, payload, error)
        except Exception:
            log.exception("run %s: the on_failure handler raised", run.run_id)

    def close(self) -> None:
        """Discard the warm generators (nothing they yield is carried out)."""
        self._warm.clear()

    def tick(self, run_id: str, *, fresh: RunState | None = None) -> TickReport:
        """Do everything that is due for the run (``Runtime.tick``)."""
        raise NotImplementedError
