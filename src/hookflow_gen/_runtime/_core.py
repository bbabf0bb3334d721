"""The runtime: ``tick`` drives a run's workflow against its stored journal.

A tick locks the run, replays its journal once into a live generator, and
then keeps going: it settles what is due (sleeps that ended, buffered events,
timeouts), claims a ready step with a lease, commits, runs the step function
*without* holding the lock, and locks again to checkpoint the result and
claim the next step, in the same transaction (one commit per step). When time
must pass (a sleep, an event, a retry back-off) it records the run's next
wake-up and hands it to the scheduler.

Deliveries may be duplicated, concurrent or late: a tick only ever does what
is due, and a step is run only by the holder of its lease, so extra ticks do
nothing but look. A tick that dies mid-step loses nothing: the step's lease
lapses and it is claimed again (at most one extra run of a non-atomic step).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from .._clock import Clock, SystemClock
from .._codec import adapter_for, decode, encode
from .._context import RunInfo
from .._engine import Completed, Failed, Pending, Replay, Waiting
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._scheduler import Scheduler
from .._steps import CallStep, EventStep, InvokeStep, RetryPolicy, RunStep, SleepStep
from .._store import RunState, RunStatus, Store
from .._workflow import Workflow, get_workflow
from ..exceptions import (
    NonDeterminismError,
    PayloadValidationError,
    RetryAfter,
    UnknownRunError,
)
from ._decided import start_next_child, store_decided
from ._execute import (
    CallDispatcher,
    CallExecutor,
    Fatal,
    Outcome,
    StepExecutor,
    StepInfo,
    StillRunning,
    http_call,
)

__all__ = ["Runtime", "TickReport", "waiting_children"]

log = logging.getLogger("hookflow_gen")

_ANY = adapter_for(Any)

_PENDING = StepStatus.PENDING


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did (for logs, tests and the worker's output)."""

    run_id: str
    status: RunStatus
    steps_run: int
    wake_at: datetime | None


class Runtime:
    """Runs workflows durably on a ``Store`` and a ``Scheduler``.

    Args:
        store: where runs and journals live.
        scheduler: how wake-ups are delivered.
        clock: the time source (a fake one in tests).
        budget: how long one tick may keep running steps before it yields.
        lease: how long a claimed step may run before another worker may
            claim it again; keep it above your slowest step.
        default_retry: the retry policy of steps that set none.
        warm_runs: how many live generators to keep between ticks, so a
            run's next tick skips its replay.
        call_executor: makes ``call`` steps' HTTP requests.
        call_dispatcher: hands ``call`` steps to another process instead;
            by default the scheduler, if it is a ``CallDispatcher``.
        thread_exit: called at the end of each thread a step runs on (one
            with a timeout); the Django app closes its database connections.
    """

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
        self._warm: collections.OrderedDict[str, Replay] = collections.OrderedDict()
        self._warm_max = warm_runs
        self.executor: StepExecutor = StepExecutor(call_executor, thread_exit=thread_exit)
        bind = getattr(scheduler, "bind", None)
        if callable(bind):
            bind(self)

    # -- starting, notifying, cancelling ----------------------------------------

    def start_run(
        self,
        workflow: Workflow[Any, Any],
        payload: object,
        *,
        run_id: str | None = None,
        parent: tuple[str, int] | None = None,
    ) -> tuple[RunState, bool]:
        """Create a run and schedule its first tick; (run, created).

        Raises:
            PayloadValidationError: the payload does not fit the workflow.
        """
        payload_json = encode(
            workflow.payload_adapter, payload, what=f"the payload of workflow {workflow.name!r}"
        )
        now = self.clock.now()
        state = RunState(
            run_id=run_id or uuid.uuid4().hex,
            workflow=workflow.name,
            payload=payload_json,
            created_at=now,
            parent_run_id=parent[0] if parent else None,
            parent_position=parent[1] if parent else None,
            wake_at=now,
            wake_seq=1,
        )
        with self.store.atomic():
            run, created = self.store.create_run(state)
            if created:
                self.scheduler.wake(self.store, run)
        return run, created

    def notify(self, key: str, payload: object) -> int:
        """Deliver an event to every run waiting on ``key``; buffer it if none waits.

        Returns how many runs received it. The payload is validated against
        each waiting step's model first: if it does not fit, nothing changes
        and ``PayloadValidationError`` is raised.
        """
        data = encode(_ANY, payload, what=f"the event for key {key!r}")
        delivered = 0
        with self.store.atomic():
            waiters = self.store.event_waiters(key)
            for run_id, position in waiters:
                run = self.store.lock_run(run_id)
                if run is None or run.status.finished:
                    continue
                replay = self._replay_for(run)
                waiting = replay.advance()
                store_decided(self, run_id, replay, partial(self.store.save_step, run_id))
                self._keep_warm(run.run_id, replay)
                step = _pending_at(waiting, position)
                if not isinstance(step, EventStep):
                    continue  # the journal moved on since the waiter list was read
                event = decode(step.event_adapter, data, what=f"the event for key {key!r}")
                record = replay.records[position]
                done = dataclasses.replace(
                    record,
                    status=StepStatus.COMPLETED,
                    result=encode(step.adapter, event, what=f"the event for key {key!r}"),
                    completed_at=self.clock.now(),
                    wake_at=None,
                )
                self.store.save_step(run_id, done)
                self._wake(run, self.clock.now())
                delivered += 1
            if not delivered:
                self.store.add_event(key, data)
        return delivered

    def cancel(self, run_id: str) -> RunState:
        """Cancel a run (and its children); a finished run is left as it is.

        Raises:
            UnknownRunError: no run has that id.
        """
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run has id {run_id!r}")
            if run.status.finished:
                return run
            run = self._finish(run, RunStatus.CANCELLED, error=None)
            children = waiting_children(self.store, run_id)
        replay = self._warm.pop(run_id, None)
        if replay is not None:
            replay.close()
        for child in children:
            self.cancel(child)
        return run

    # -- the tick ---------------------------------------------------------------

    def tick(self, run_id: str) -> TickReport:
        """Do everything that is due for the run, within the time budget.

        Raises:
            UnknownRunError: no run has that id.
        """
        deadline = self.clock.monotonic() + self.budget.total_seconds()
        replay: Replay | None = None
        outcome: Outcome | None = None
        # Until when this tick may trust its own view of the journal without
        # reading it again: it held the lease on the only step the workflow
        # waited on (a margin of a tenth of the lease covers clock skew).
        trusted_until: datetime | None = None
        steps_run = 0
        try:
            while True:
                with self.store.atomic(), _Writes(self.store, run_id) as writes:
                    run = self.store.lock_run(run_id)
                    if run is None:
                        raise UnknownRunError(f"no run has id {run_id!r}")
                    if run.status.finished:
                        replay = None  # nothing more to replay: let it go
                        return TickReport(run_id, run.status, steps_run, None)
                    if replay is None:
                        replay = self._replay_for(run)
                    elif trusted_until is None or self.clock.now() >= trusted_until:
                        for record in self.store.steps(run_id, replay.position):
                            replay.settle(record)
                    trusted_until = None
                    if outcome is not None:
                        self._checkpoint(run, replay, outcome, writes)
                        outcome = None
                    run, claimed = self._drive(run, replay, deadline, writes)
                    if claimed is not None and _is_atomic(claimed):
                        # Exactly once: the function's writes and its checkpoint
                        # commit together, under the run's lock.
                        replay.settle(claimed.record)
                        done = self._execute(run, claimed, atomic=True)
                        self._checkpoint(run, replay, done, writes)
                        steps_run += 1
                        continue
                if claimed is None:
                    if run.status.finished:
                        replay = None  # a finished run is not kept warm
                    return TickReport(run_id, run.status, steps_run, run.wake_at)
                if self._dispatches(claimed):
                    # In flight: its answer arrives through complete_step. Look for
                    # other ready steps (a gather's other branches) meanwhile.
                    outcome = self._dispatch(run, claimed)
                    continue
                outcome = self._execute(run, claimed)
                if claimed.alone and claimed.lease_until is not None:
                    trusted_until = claimed.lease_until - self.lease / 10
                steps_run += 1
        except BaseException:
            replay = None  # its state may not match the store any more
            raise
        finally:
            if replay is not None:
                self._keep_warm(run_id, replay)

    def _replay_for(self, run: RunState) -> Replay:
        replay = self._warm.pop(run.run_id, None)
        if replay is not None:
            for record in self.store.steps(run.run_id, replay.position):
                replay.settle(record)
            return replay
        workflow = get_workflow(run.workflow)
        info = RunInfo(
            run_id=run.run_id,
            workflow_name=run.workflow,
            started_at=run.created_at or self.clock.now(),
            parent_run_id=run.parent_run_id,
        )
        return Replay(workflow, run.payload, info, self.store.steps(run.run_id))

    def _keep_warm(self, run_id: str, replay: Replay) -> None:
        if self._warm_max <= 0:
            return
        self._warm[run_id] = replay
        self._warm.move_to_end(run_id)
        while len(self._warm) > self._warm_max:
            _, old = self._warm.popitem(last=False)
            old.close()

    def _drive(
        self, run: RunState, replay: Replay, deadline: float, writes: _Writes
    ) -> tuple[RunState, _Claim | None]:
        """Advance the workflow as far as possible under the lock; maybe claim a step."""
        store = self.store
        while True:
            now = self.clock.now()
            try:
                decision = replay.advance()
                store_decided(self, run.run_id, replay, writes.add)
            except NonDeterminismError as exc:
                log.error("run %s: %s", run.run_id, exc)
                return self._finish(
                    run, RunStatus.FAILED, error=ErrorInfo.from_exception(exc)
                ), None
            if isinstance(decision, Completed):
                return self._finish(run, RunStatus.COMPLETED, result=decision.result), None
            if isinstance(decision, Failed):
                return self._finish(run, RunStatus.FAILED, error=decision.error), None
            progressed = False
            ready: list[tuple[Pending, StepRecord]] = []
            timers: list[datetime] = []
            leases: list[datetime] = []
            for pending in decision.pending:
                record = pending.record
                if record is None:
                    record = self._begin(run, pending, now)
                    replay.settle(record)
                if record.status is not _PENDING:
                    replay.settle(record)
                    progressed = True
                    continue
                due = record.wake_at
                kind = pending.step.kind
                if kind in ("sleep", "event"):
                    if due is not None and due <= now:
                        done = dataclasses.replace(
                            record, status=StepStatus.COMPLETED, result="null", completed_at=now
                        )
                        store.save_step(run.run_id, done)
                        replay.settle(done)
                        progressed = True
                    elif due is not None:
                        timers.append(due)
                elif kind == "invoke" and record.key is None:  # a child to retry
                    if due is not None and due > now:
                        timers.append(due)
                    else:
                        replay.settle(start_next_child(self, run, pending, record, writes.add))
                elif kind in ("run", "call"):
                    if record.lease_until is not None and record.lease_until > now:
                        leases.append(record.lease_until)
                    elif due is not None and due > now:
                        timers.append(due)  # waiting out a retry back-off
                    else:
                        ready.append((pending, record))
            if progressed:
                continue
            claimed: _Claim | None = None
            if ready and self.clock.monotonic() < deadline:
                pending, record = ready.pop(0)
                claimed = self._claim(
                    pending, record, now, writes, alone=len(decision.pending) == 1
                )
                replay.settle(claimed.record)
                if claimed.record_owner is not None and claimed.lease_until is not None:
                    leases.append(claimed.lease_until)
            if ready:
                timers.append(now)  # more ready steps: another worker (or tick) may help
            wake_at = min(timers, default=None)
            if self.scheduler.lease_wakeups and leases:
                wake_at = min(wake_at or leases[0], *leases)
            return self._set_wake(run, wake_at, now), claimed

    def _begin(self, run: RunState, pending: Pending, now: datetime) -> StepRecord:
        """First time the workflow reaches this step: record it as pending (or settled)."""
        step = pending.step
        record = StepRecord(
            position=pending.position,
            kind=step.kind,
            name=step.name,
            status=_PENDING,
            attempts=0,
            started_at=now,
        )
        if isinstance(step, SleepStep):
            wake = step.until if step.until is not None else now + (step.duration or timedelta(0))
            record = dataclasses.replace(record, wake_at=wake)
        elif isinstance(step, EventStep):
            record = dataclasses.replace(
                record,
                key=step.key,
                wake_at=now + step.timeout if step.timeout is not None else None,
            )
            buffered = self.store.take_event(step.key)
            if buffered is not None:
                record = self._event_record(record, step, buffered, now)
        elif isinstance(step, InvokeStep):
            child_id = step.run_id or f"{run.run_id}-{pending.position}"
            child, _ = self.start_run(
                step.workflow, step.payload, run_id=child_id, parent=(run.run_id, pending.position)
            )
            record = dataclasses.replace(record, key=child.run_id)
        if step.kind not in ("run", "call"):
            # A run or call step is saved when claimed: one write, not two.
            self.store.save_step(run.run_id, record)
        return record

    def _event_record(
        self, record: StepRecord, step: EventStep[Any], data: str, now: datetime
    ) -> StepRecord:
        try:
            event = decode(step.event_adapter, data, what=f"the event for key {step.key!r}")
            result = encode(step.adapter, event, what=f"the event for key {step.key!r}")
        except PayloadValidationError as exc:
            return dataclasses.replace(
                record,
                status=StepStatus.FAILED,
                error=ErrorInfo.from_exception(exc),
                attempts=1,
                completed_at=now,
            )
        return dataclasses.replace(
            record, status=StepStatus.COMPLETED, result=result, attempts=1, completed_at=now
        )

    def _claim(
        self, pending: Pending, record: StepRecord, now: datetime, writes: _Writes, *, alone: bool
    ) -> _Claim:
        if _is_atomic(pending):
            # Saved by its checkpoint, in the same transaction as the function's writes.
            claim = dataclasses.replace(record, attempts=record.attempts + 1, wake_at=None)
            return _Claim(pending, claim, None, None, alone)
        owner = uuid.uuid4().hex
        lease_until = now + self._lease_for(pending.step)
        claim = dataclasses.replace(
            record,
            attempts=record.attempts + 1,
            wake_at=None,
            lease_until=lease_until,
            lease_owner=owner,
        )
        writes.add(claim)
        return _Claim(pending, claim, owner, lease_until, alone)

    def _lease_for(self, step: Any) -> timedelta:
        timeout: timedelta | None = getattr(step, "timeout", None)
        if self.call_dispatcher is not None and isinstance(step, CallStep):
            return max(self.call_dispatcher.call_lease, self.lease)
        if timeout is not None and timeout * 2 > self.lease:
            return timeout * 2
        return self.lease

    def _execute(self, run: RunState, claim: _Claim, *, atomic: bool = False) -> Outcome:
        """Run one attempt of the claimed step; never raises for the step's own errors."""
        info = _step_info(run, claim)
        owner = claim.record_owner
        try:
            value = self.executor.attempt(
                claim.pending.step, info, self.store.atomic if atomic else None
            )
        except StillRunning:
            raise
        except Exception as exc:
            return Outcome(claim.pending, owner, exc=exc)
        return Outcome(claim.pending, owner, value=value)

    def _dispatches(self, claim: _Claim) -> bool:
        return (
            self.call_dispatcher is not None
            and claim.record_owner is not None
            and isinstance(claim.pending.step, CallStep)
        )

    def _dispatch(self, run: RunState, claim: _Claim) -> Outcome | None:
        """Hand a claimed call to the dispatcher: None once in flight, else its failure."""
        assert self.call_dispatcher is not None and claim.record_owner is not None
        step = claim.pending.step
        assert isinstance(step, CallStep)
        info = _step_info(run, claim)
        try:
            self.call_dispatcher.dispatch_call(info, claim.record_owner, step)
        except Exception as exc:
            # Counted as a failed attempt: the retry policy's back-off then
            # schedules another try, where an exception here would leave the
            # step leased with no request out and nothing to wake the run.
            log.warning("run %s: could not dispatch call %r: %s", run.run_id, step.name, exc)
            return Outcome(claim.pending, claim.record_owner, exc=exc)
        return None

    def complete_step(
        self,
        run_id: str,
        position: int,
        owner: str,
        answer: Callable[[CallStep[Any]], object],
    ) -> bool:
        """Record the answer of a dispatched ``call`` step, then tick the run.

        ``answer`` turns the step into its result (``call_response``) or
        raises the attempt's error, which the step's retry policy handles as
        for any step. The answer is dropped when ``owner`` no longer holds
        the step (a stale or duplicate answer); the run is ticked either way,
        so an answer whose first delivery failed after its checkpoint still
        moves the run on.

        Returns:
            Whether the answer was recorded.

        Raises:
            UnknownRunError: no run has that id.
        """
        accepted = False
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run has id {run_id!r}")
            if run.status.finished:
                return False
            replay = self._replay_for(run)
            try:
                decision = replay.advance()
                store_decided(self, run_id, replay, partial(self.store.save_step, run_id))
            except NonDeterminismError:
                decision = None  # the tick below fails the run and says why
            except BaseException:
                replay.close()
                raise
            pending = next(
                (
                    p
                    for p in (decision.pending if isinstance(decision, Waiting) else ())
                    if p.position == position and isinstance(p.step, CallStep)
                ),
                None,
            )
            if pending is not None:
                step = pending.step
                assert isinstance(step, CallStep)
                try:
                    value = answer(step)
                    result = encode(step.adapter, value, what=f"the result of step {step.name!r}")
                    outcome = Outcome(pending, owner, value=result)
                except PayloadValidationError as exc:
                    outcome = Outcome(pending, owner, exc=Fatal(str(exc)))
                except Exception as exc:
                    outcome = Outcome(pending, owner, exc=exc)
                accepted = self._checkpoint(run, replay, outcome)
            if decision is not None:
                self._keep_warm(run_id, replay)
            else:
                replay.close()
        self.tick(run_id)
        return accepted

    def _checkpoint(
        self, run: RunState, replay: Replay, outcome: Outcome, writes: _Writes | None = None
    ) -> bool:
        """Record a step's outcome, if this worker still holds the step; whether it did."""
        position = outcome.pending.position
        current = replay.records.get(position)
        if current is None or current.status is not _PENDING:
            return False  # settled meanwhile (cancelled, or another worker finished it)
        if outcome.owner is not None and current.lease_owner != outcome.owner:
            log.warning(
                "run %s: the lease on step %r lapsed before it finished; its result is dropped",
                run.run_id,
                current.name,
            )
            return False
        now = self.clock.now()
        released: dict[str, Any] = {"lease_until": None, "lease_owner": None}
        if outcome.exc is None:
            record = dataclasses.replace(
                current,
                status=StepStatus.COMPLETED,
                result=outcome.value,
                completed_at=now,
                **released,
            )
        else:
            exc = outcome.exc
            policy = self._policy(run, outcome.pending.step)
            error = ErrorInfo.from_exception(exc)
            if policy.retries(exc, current.attempts):
                delay = exc.delay if isinstance(exc, RetryAfter) else policy.delay(current.attempts)
                record = dataclasses.replace(current, error=error, wake_at=now + delay, **released)
                log.info(
                    "run %s: step %r attempt %d failed (%s); retrying in %s",
                    run.run_id,
                    current.name,
                    current.attempts,
                    error.message,
                    delay,
                )
            else:
                record = dataclasses.replace(
                    current, status=StepStatus.FAILED, error=error, completed_at=now, **released
                )
        if writes is None:
            self.store.save_step(run.run_id, record)
        else:
            writes.add(record)
        replay.settle(record)
        return True

    def _policy(self, run: RunState, step: Any) -> RetryPolicy:
        own: RetryPolicy | None = getattr(step, "retry", None)
        if own is not None:
            return own
        workflow = get_workflow(run.workflow)
        return workflow.retry or self.default_retry

    # -- run state ----------------------------------------------------------------

    def _set_wake(self, run: RunState, wake_at: datetime | None, now: datetime) -> RunState:
        current = run.wake_at
        if wake_at is None:
            if current is None:
                return run
            run = dataclasses.replace(run, wake_at=None)
            self.store.save_run(run)
            return run
        if current is not None and now < current <= wake_at:
            # An earlier wake-up is already set: a tick that comes early finds
            # nothing due and sets the next one. Keeping it saves a write (and,
            # on QStash, a message) per step.
            return run
        return self._wake(run, wake_at)

    def _wake(self, run: RunState, at: datetime) -> RunState:
        run = dataclasses.replace(run, wake_at=at, wake_seq=run.wake_seq + 1)
        self.store.save_run(run)
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
        run = dataclasses.replace(
            run, status=status, result=result, error=error, finished_at=now, wake_at=None
        )
        self.store.save_run(run)
        self._warm.pop(run.run_id, None)
        if run.parent_run_id is not None and run.parent_position is not None:
            self._settle_parent(run, now)
        if status is RunStatus.FAILED and error is not None:
            self.store.on_commit(lambda: self._on_failure(run, error))
        return run

    def _settle_parent(self, child: RunState, now: datetime) -> None:
        assert child.parent_run_id is not None and child.parent_position is not None
        parent = self.store.lock_run(child.parent_run_id)
        if parent is None or parent.status.finished:
            return
        records = self.store.steps(parent.run_id, child.parent_position)
        if not records or records[0].position != child.parent_position:
            return
        record = records[0]
        if record.status is not _PENDING:
            return
        if child.status is RunStatus.COMPLETED:
            done = dataclasses.replace(
                record,
                status=StepStatus.COMPLETED,
                result=child.result,
                completed_at=now,
                attempts=max(record.attempts, 1),
            )
        else:
            error = child.error or ErrorInfo(
                type="hookflow_gen.exceptions.RunCancelled",
                message=f"child run {child.run_id} was cancelled",
                mro=("hookflow_gen.exceptions.RunCancelled",),
            )
            done = dataclasses.replace(
                record,
                status=StepStatus.FAILED,
                error=error,
                completed_at=now,
                attempts=max(record.attempts, 1),
            )
        self.store.save_step(parent.run_id, done)
        self._wake(parent, now)

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
        """Close warm generators."""
        while self._warm:
            _, replay = self._warm.popitem()
            replay.close()


class _Writes:
    """Step records a tick writes in one transaction, sent as one statement at its end.

    A step's checkpoint and the claim of the next one go out together: one
    round trip less per step. Nothing in the transaction reads them back
    from the store (the live replay holds them), and on an exception they
    are dropped with the transaction they belonged to.
    """

    __slots__ = ("records", "run_id", "store")

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.records: dict[int, StepRecord] = {}

    def __enter__(self) -> _Writes:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None and self.records:
            self.store.save_steps(self.run_id, list(self.records.values()))
        self.records.clear()

    def add(self, record: StepRecord) -> None:
        """Write ``record`` at the end of the transaction (the last one per position wins)."""
        self.records[record.position] = record


@dataclass(frozen=True, slots=True)
class _Claim:
    pending: Pending
    record: StepRecord
    record_owner: str | None
    lease_until: datetime | None
    #: The workflow waits on this step alone (not a gather's branch), so
    #: while the lease holds nobody else can change the run's journal.
    alone: bool = False


def waiting_children(store: Store, run_id: str) -> list[str]:
    """The ids of the child runs that the run's pending ``invoke`` steps wait for."""
    return [
        record.key
        for record in store.steps(run_id)
        if record.kind == "invoke" and record.status is _PENDING and record.key
    ]


def _step_info(run: RunState, claim: _Claim) -> StepInfo:
    return StepInfo(
        run_id=run.run_id,
        workflow_name=run.workflow,
        step_name=claim.pending.step.name,
        position=claim.pending.position,
        attempt=claim.record.attempts,
    )


def _is_atomic(claim: _Claim | Pending) -> bool:
    pending = claim.pending if isinstance(claim, _Claim) else claim
    return isinstance(pending.step, RunStep) and pending.step.atomic


def _pending_at(decision: Any, position: int) -> Any:
    if isinstance(decision, Waiting):
        for pending in decision.pending:
            if pending.position == position:
                return pending.step
    return None
