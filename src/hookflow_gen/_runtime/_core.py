"""The tick, claims and checkpoints, and the run lifecycle behind ``Runtime``.

A tick locks the run, replays its journal once into a live generator, and
then keeps going: it settles what is due (sleeps that ended, buffered events,
timeouts, cancellation), claims a ready step with a lease, commits, runs the
step function *without* holding the lock, and locks again to checkpoint the
result and claim the next step, in the same transaction (one commit per
step). An ``atomic`` step is claimed the same way and then run *under* the
lock, in the transaction that checkpoints it. When time must pass it records
the run's next wake-up and hands it to the scheduler.

Every transaction leaves a running run guarded (``_transitions``): a
wake-up, a step under a live lease, or a registered wait. Deliveries may be
duplicated, concurrent or late: a tick only ever does what is due, and a step
is run only by the holder of its lease. A lease that lapses counts as a
failed attempt; an error that recurs on every tick fails the run after a
bounded number of tries, with the error shown.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from .._codec import encode
from .._engine import Completed, ContinuedAsNew, Decision, Failed, Pending, Replay, Waiting
from .._flow import FlowGate
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._steps import CallStep, EventStep, InvokeStep, ReplyStep, RunStep, SleepStep
from .._store import RunState, RunStatus, Store
from ..exceptions import (
    NonDeterminismError,
    PayloadValidationError,
    UnknownRunError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
)
from . import _transitions as T
from ._base import TickReport, keeps_wake
from ._decided import save_decided, start_next_child, store_decided
from ._events import EventsMixin
from ._execute import (
    Fatal,
    Outcome,
    StepInfo,
    StillRunning,
)
from ._lifecycle import LifecycleMixin
from ._observe import TickSpan
from ._poison import PoisonMixin
from ._updates import UpdatesMixin

__all__ = ["Runtime", "waiting_children"]

log = logging.getLogger("hookflow_gen")
_PENDING = StepStatus.PENDING


_HOUR = timedelta(hours=1)


class _LeaseLapsed(Exception):
    """The worker running an attempt stopped before it finished (its lease lapsed)."""


class Runtime(EventsMixin, LifecycleMixin, PoisonMixin, UpdatesMixin):
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
        max_tick_failures: ticks in a row that may raise (a checkpoint the
            database refuses, ...) before the run fails with the error.
        suspend_for: how long a run whose workflow this code does not know
            waits before it is tried again.
    """

    # -- the tick ------------------------------------------------------------------------

    def tick(self, run_id: str, *, fresh: RunState | None = None) -> TickReport:
        """Do everything that is due for the run, within the time budget.

        Args:
            run_id: the run to tick.
            fresh: the run as a worker's claim just read it, where the claim
                also found that it has no journal yet. Its first step may
                then be claimed in one guarded write, with nothing read;
                if the run changed meanwhile, the tick reads it as usual.

        Raises:
            UnknownRunError: no run has that id.
        """
        tracer = self.tracer
        if tracer is None:
            return self._tick(run_id, None, fresh)
        span = tracer.tick(run_id)
        if span is None:  # nothing records spans now
            return self._tick(run_id, None, fresh)
        try:
            report = self._tick(run_id, span, fresh)
        except BaseException as exc:
            span.end(None, 0, exc)
            raise
        span.end(report.status, report.steps_run, None)
        return report

    def _tick(self, run_id: str, span: TickSpan | None, fresh: RunState | None) -> TickReport:
        deadline = self.clock.monotonic() + self.budget.total_seconds()
        replay: Replay | None = None
        outcome: Outcome | None = None
        atomic: _Claim | None = None
        gated: _Claim | None = None
        # Until when this tick may trust its own view of the journal without
        # reading it again: it held the lease on the only step the workflow
        # waited on (a margin of a tenth of the lease covers clock skew).
        trusted_until: datetime | None = None
        # The run's wake_seq as this tick last read or wrote it: another
        # writer's change of the run (a cancellation delivered, a wake-up)
        # bumps it, and then the journal is read again.
        seen_seq: int | None = None
        # A checkpoint the workflow already went past outside the lock
        # (``_checkpoint_unlocked``), to write under it.
        carried: _Carried | None = None
        guarded: _WriteGuarded | None = getattr(self.store, "write_guarded", None)
        steps_run = 0
        # Set once a transaction of this tick commits; an error after that (a
        # hook's, such as a publish) is not the tick's to count.
        committed = _Flag()
        begun: tuple[Replay, RunState, _Claim] | None = None
        run: RunState | None
        claimed: _Claim | None
        try:
            if fresh is not None and guarded is not None:
                if span is not None:
                    span.begin(fresh)
                begun = self._begin_unlocked(fresh, deadline, committed)
            while True:
                if begun is not None:
                    # A new run's first tick went out as one guarded write.
                    replay, run, claimed = begun
                    begun = None
                    seen_seq = run.wake_seq
                else:
                    with self.store.atomic(), _Writes(self.store, run_id) as writes:
                        committed.value = False
                        self.store.on_commit(committed.set)
                        run = self.store.lock_run(run_id)
                        if run is None:
                            raise UnknownRunError(f"no run has id {run_id!r}")
                        if span is not None:
                            span.begin(run)
                        if run.status.finished:
                            self._warm.drop(run_id)
                            replay = None
                            return TickReport(run_id, run.status, steps_run, None)
                        # Nobody else can have changed the journal: this worker held
                        # the lease on the only step the workflow waited on, and no
                        # other writer touched the run (a cancellation delivered
                        # meanwhile, a wake-up, bumps its wake_seq).
                        trusted = (
                            trusted_until is not None
                            and run.wake_seq == seen_seq
                            and self.clock.now() < trusted_until
                        )
                        if carried is not None:
                            if replay is not None and (trusted or self._still_held(run, carried)):
                                self._write_carried(run, carried, writes)
                            elif replay is not None:
                                replay.discard()  # went past a step it no longer holds
                                replay = None
                            carried = None
                        if replay is None:
                            replay, run = self._replay_or_settle(run)
                            if replay is None:
                                return TickReport(run_id, run.status, steps_run, run.wake_at)
                        elif not trusted:
                            replay.catch_up(self.store.steps(run_id, replay.position))
                        trusted_until = None
                        if outcome is not None:
                            self._checkpoint(run, replay, outcome, writes)
                            outcome = None
                            if gated is not None:
                                self._release(gated)
                                gated = None
                        if atomic is not None:
                            claim, atomic = atomic, None
                            if _holds(replay, claim):
                                # Exactly once: the function's writes and its checkpoint
                                # commit together, under the run's lock.
                                done = self._execute(run, claim, span, atomic=True)
                                self._checkpoint(run, replay, done, writes)
                                steps_run += 1
                            if claim.gates:
                                self._release(claim)
                        run, claimed = self._drive(run, replay, deadline, writes)
                        seen_seq = run.wake_seq
                if claimed is None:
                    if run.status.finished:
                        replay = None  # a finished run is not kept warm
                    return TickReport(run_id, run.status, steps_run, run.wake_at)
                if claimed.alone and claimed.lease_until is not None:
                    trusted_until = claimed.lease_until - self.lease / 10
                if claimed.pending.step.kind == "run" and _is_atomic(claimed.pending):
                    atomic = claimed  # run in the next transaction, under the lock
                    continue
                if self._dispatches(claimed):
                    # In flight: its answer arrives through complete_step. Look for
                    # other ready steps (a gather's other branches) meanwhile.
                    trusted_until = None
                    outcome = self._dispatch(run, claimed)
                    if outcome is None:
                        self._hold_call(run_id, claimed)
                    continue
                outcome = self._execute(run, claimed, span)
                steps_run += 1
                if claimed.gates:
                    gated = claimed  # its slot is given back with its checkpoint
                    continue
                while guarded is not None and claimed.alone and outcome.exc is None:
                    # The hot path: checkpoint and claim the next step in one
                    # guarded statement, without taking the run's lock.
                    committed.value = False
                    next_step = self._checkpoint_unlocked(
                        run, replay, outcome, deadline, guarded=guarded, committed=committed
                    )
                    if next_step is None:
                        break  # not for this path: the next transaction does it
                    if isinstance(next_step, _Ended):
                        replay = None  # a finished run is not kept warm
                        return TickReport(run_id, next_step.run.status, steps_run, None)
                    if isinstance(next_step, _Lost):
                        replay.discard()  # the outcome is checkpointed from the store's view
                        replay = None
                        break
                    outcome = None
                    if isinstance(next_step, _Carried):
                        carried = next_step
                        break
                    claimed = next_step
                    assert claimed.lease_until is not None
                    trusted_until = claimed.lease_until - self.lease / 10
                    outcome = self._execute(run, claimed, span)
                    steps_run += 1
        except StillRunning as exc:
            replay = None
            log.warning("run %s: %s; it keeps its lease until it ends", run_id, exc)
            return TickReport(run_id, RunStatus.RUNNING, steps_run, None)
        except BaseException as exc:
            replay = None  # its state may not match the store any more
            if isinstance(exc, Exception) and not committed.value and self._counts(exc):
                self._tick_failed(run_id, exc, outcome)
            raise
        finally:
            if replay is not None:
                self._warm.put(run_id, replay)

    def _counts(self, exc: Exception) -> bool:
        """Whether a tick's exception counts toward failing the run (not a lost connection)."""
        if isinstance(exc, UnknownRunError):
            return False
        transient = getattr(self.store, "is_transient", None)
        return not (callable(transient) and transient(exc))

    def _replay_or_settle(self, run: RunState) -> tuple[Replay | None, RunState]:
        """The run's live replay; or None when it cannot have one, the run dealt with."""
        try:
            replay = self._replay_for(run)
        except UnknownWorkflowError as exc:
            if run.cancel_requested:
                return None, self._finish(run, RunStatus.CANCELLED, error=None)
            # Maybe a deploy in progress: another worker may know it, or the next
            # deploy brings it back. Tried again with a back-off, up to hourly.
            delay = min(self.suspend_for * 2**run.tick_failures, max(self.suspend_for, _HOUR))
            log.error("run %s: %s; tried again in %s", run.run_id, exc, delay)
            run = T.suspend(run, ErrorInfo.from_exception(exc), self.clock.now() + delay)
            self._save_woken(run)
            return None, run
        except PayloadValidationError as exc:
            log.error("run %s: its stored payload no longer fits: %s", run.run_id, exc)
            return None, self._finish(run, RunStatus.FAILED, error=ErrorInfo.from_exception(exc))
        if run.tick_failures or run.error is not None:
            run = dataclasses.replace(run, tick_failures=0, error=None)
            self.store.save_run(run)
        return replay, run

    def _drive(
        self, run: RunState, replay: Replay, deadline: float, writes: _Writes
    ) -> tuple[RunState, _Claim | None]:
        """Advance the workflow as far as possible under the lock; maybe claim a step."""
        store = self.store
        status_dirty = False
        while True:
            now = self.clock.now()
            try:
                decision = replay.advance()
                store_decided(self, run.run_id, replay, writes.add)
            except NonDeterminismError as exc:
                log.error("run %s: %s", run.run_id, exc)
                error = ErrorInfo.from_exception(exc)
                return self._finish(run, RunStatus.FAILED, error=error), None
            status = replay.status
            if status is not None and status != run.custom_status:
                # Saved by this transaction's next write of the run, below.
                run = dataclasses.replace(run, custom_status=status)
                status_dirty = True
            if isinstance(decision, ContinuedAsNew):
                replay.discard()
                return self._continue_as_new(run, decision.payload), None
            if isinstance(decision, Completed):
                return self._finish(run, RunStatus.COMPLETED, result=decision.result), None
            if isinstance(decision, Failed):
                if decision.error.is_cancellation:
                    return self._finish(run, RunStatus.CANCELLED, error=None), None
                return self._finish(run, RunStatus.FAILED, error=decision.error), None
            if run.cancel_requested:
                run = self._deliver_cancel(run, replay, decision, now, writes)
                status_dirty = False  # saved with it
                continue
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
                kind = record.kind
                if kind in ("sleep", "event"):
                    if due is not None and due <= now:
                        done = T.complete(record, "null", now)
                        store.save_step(run.run_id, done)
                        self._observe_settled(run, done)
                        replay.settle(done)
                        progressed = True
                    elif due is not None:
                        timers.append(due)
                elif kind == "invoke" and record.key is None:  # a child to retry
                    if due is not None and due > now:
                        timers.append(due)
                    else:
                        replay.settle(start_next_child(self, run, pending, record, writes.add))
                elif kind == "invoke":
                    if due is None or due <= now:
                        # A timed look (an adopted run), or a look on waking (the
                        # child's end could not settle this step: a sweep woke it).
                        checked = self._check_child(run, record, now, poll=due is not None)
                        replay.settle(checked)
                        if checked.status is not _PENDING:
                            progressed = True
                        elif checked.wake_at is not None:
                            timers.append(checked.wake_at)
                    else:
                        timers.append(due)
                elif record.lease_until is not None and record.lease_until > now:
                    leases.append(record.lease_until)
                elif T.lapsed(record, now) and not self._may_retry(run, pending, record):
                    failed = T.fail(record, _lapsed_error(record), now)
                    writes.add(failed)
                    self._observe_settled(run, failed)
                    replay.settle(failed)
                    progressed = True
                elif due is not None and due > now:
                    timers.append(due)  # waiting out a retry back-off
                else:
                    ready.append((pending, record))
            if progressed:
                continue
            claimed: _Claim | None = None
            gate: FlowGate | None = None
            while ready and claimed is None and self.clock.monotonic() < deadline:
                pending, record = ready.pop(0)
                alone = len(decision.pending) == 1
                if pending.step.flow is None:
                    claimed = self._claim(run, pending, record, now, writes, alone=alone)
                else:
                    try:
                        claimed, retry_at, gate = self._claim_gated(
                            run, pending, record, now, writes, alone=alone
                        )
                    except WorkflowDefinitionError as exc:
                        # A key that cannot be computed fails the step, as its
                        # function's own error would: the workflow may catch it.
                        failed = T.fail(record, ErrorInfo.from_exception(exc), now)
                        writes.add(failed)
                        replay.settle(failed)
                        progressed = True
                        break
                    if retry_at is not None:
                        timers.append(retry_at)  # denied a slot: wait, no attempt spent
                        continue
                assert claimed is not None
                replay.settle(claimed.record)
                if claimed.lease_until is not None:
                    leases.append(claimed.lease_until)
            if progressed:
                continue
            if ready:
                timers.append(now)  # more ready steps: another worker (or tick) may help
                if gate is None:
                    gate = _first_gate(ready)
            wake_at = min(timers, default=None)
            if self.scheduler.lease_wakeups and leases:
                wake_at = min(wake_at or leases[0], *leases)
            unsaved = run
            run = self._set_wake(run, wake_at, now, gate=gate)
            current = [replay.records.get(p.position) for p in decision.pending]
            if T.unguarded(run, (r for r in current if r is not None), now):
                # Never expected: every path above guards the run. A wake-up
                # keeps it from being stranded should one be missed.
                log.error("run %s: nothing would wake it; waking it at the lease's end", run.run_id)
                run = self._wake(run, now + self.lease)
            if status_dirty and run is unsaved:
                store.save_run(run)  # a new custom status, with this checkpoint
            return run, claimed

    def _deliver_cancel(
        self, run: RunState, replay: Replay, decision: Waiting, now: datetime, writes: _Writes
    ) -> RunState:
        """Settle every step the workflow waits on as cancelled: ``Cancelled`` is thrown there."""
        children: list[str] = []
        for pending in decision.pending:
            record = pending.record or StepRecord(
                position=pending.position,
                kind=pending.step.kind,
                name=pending.step.name,
                status=_PENDING,
                attempts=0,
                started_at=now,
            )
            if record.status is not _PENDING:
                continue
            if record.kind == "invoke" and record.key:
                children.append(record.key)
            cancelled = T.cancel_step(record, now)
            writes.add(cancelled)
            self._observe_settled(run, cancelled)
            replay.settle(cancelled)
        run = dataclasses.replace(run, cancel_requested=False)
        self.store.save_run(run)
        for child in children:
            # After the commit: locking a child while holding its parent could
            # deadlock with the child's own end, which locks its parents.
            self.store.on_commit(functools.partial(self._cancel_quietly, child))
        return run

    def _may_retry(self, run: RunState, pending: Pending, record: StepRecord) -> bool:
        """A lapsed lease is a failed attempt: may the step be tried again?"""
        policy = self._policy(run, pending.step)
        lost = _LeaseLapsed()
        if policy.retries(lost, record.attempts):
            log.warning(
                "run %s: attempt %d of step %r stopped before it finished; trying again",
                run.run_id,
                record.attempts,
                record.name,
            )
            return True
        return False

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
            record = self._begin_wait(record, step, now)
        elif isinstance(step, InvokeStep):
            record = self._begin_child(run, record, step, now)
        elif isinstance(step, ReplyStep):
            record = self._begin_reply(run.run_id, record, step, now)
        if step.kind not in ("run", "call"):
            # A run or call step is saved when claimed: one write, not two.
            self.store.save_step(run.run_id, record)
            if record.status is not _PENDING:
                self._observe_settled(run, record)
        return record

    def _claim(
        self,
        run: RunState,
        pending: Pending,
        record: StepRecord,
        now: datetime,
        writes: _Writes,
        *,
        alone: bool,
        owner: str | None = None,
        gates: tuple[FlowGate, ...] = (),
    ) -> _Claim:
        lease = self._lease_for(pending.step)
        if T.lapsed(record, now) and record.lease_until is not None:
            # The lapsed attempt is tried again (``_may_retry`` said so): keep it.
            error = _lapsed_error(record, retried=True)
            retried = T.lapsed_attempt(record, error, record.lease_until - lease)
            self._observe_failed(run, record, error, retried, record.lease_until)
            record = retried
        owner = owner or secrets.token_hex(16)
        lease_until = now + lease
        claim = T.claim(record, owner, lease_until)
        writes.add(claim)
        return _Claim(pending, claim, owner, lease_until, alone, now, gates)

    def _claim_gated(
        self,
        run: RunState,
        pending: Pending,
        record: StepRecord,
        now: datetime,
        writes: _Writes,
        *,
        alone: bool,
    ) -> tuple[_Claim | None, datetime | None, FlowGate | None]:
        """Claim a flow-controlled step if its keys have room: (claim, retry at, gate).

        Denied, the step is left as it is (no attempt spent) and the answer
        says when a slot may be free at the latest; the run is also woken
        sooner, when a holder of the key settles its step (``_release``).
        """
        step = pending.step
        assert isinstance(step, RunStep) and step.flow is not None
        gates = step.flow.gates(step.args, step.kwargs)
        owner = secrets.token_hex(16)
        retry_at = self.store.take_flow_slot(gates, run.run_id, pending.position, owner, now)
        if retry_at is not None:
            log.info(
                "run %s: step %r waits for a slot of %s until %s at the latest",
                run.run_id,
                step.name,
                ", ".join(repr(g.key) for g in gates),
                retry_at.isoformat(timespec="milliseconds"),
            )
            return None, max(retry_at, now), gates[0]
        claim = self._claim(
            run, pending, record, now, writes, alone=alone, owner=owner, gates=gates
        )
        return claim, None, None

    def _release(self, claim: _Claim) -> None:
        """The claimed flow-controlled step settled: wake a run waiting for each of its keys.

        Under the keys' locks, so a run that is denied a slot concurrently is
        either seen here or sees the slot free. The runs are woken after the
        commit, each in its own transaction (never holding this run's lock).
        """
        gates = claim.gates
        woken = self.store.release_flow_slot([g.key for g in gates], self.clock.now())
        for run_id, gate in zip(woken, gates, strict=False):
            self.store.on_commit(functools.partial(self._wake_for_slot, run_id, gate))

    def _wake_for_slot(self, run_id: str, gate: FlowGate) -> None:
        """Wake a run for a free slot; one that ended meanwhile passes it to the next waiter.

        Each look is its own transaction: a run's lock is never taken while
        a key's lock is held (ticks take them the other way round).
        """
        woken: str | None = run_id
        try:
            while woken is not None:
                with self.store.atomic():
                    run = self.store.lock_run(woken)
                    if run is not None and not run.status.finished:
                        self._save_woken(T.wake(run, self.clock.now()), gate)
                        return
                with self.store.atomic():
                    passed = self.store.release_flow_slot([gate.key], self.clock.now())
                woken = passed[0] if passed else None
        except Exception:
            # Not stranded: a waiting run's own wake-up is set for the latest
            # time a slot may be free.
            log.exception("run %s: could not be woken for a free slot", woken)

    def _lease_for(self, step: Any) -> timedelta:
        # A dispatched call is claimed for the usual lease, and held for the
        # call's own lease only once it was handed over (``_hold_call``): a
        # process that dies in between leaves a lease that lapses soon.
        timeout: timedelta | None = getattr(step, "timeout", None)
        if timeout is not None and timeout * 2 > self.lease:
            return timeout * 2
        return self.lease

    def _execute(
        self, run: RunState, claim: _Claim, span: TickSpan | None, *, atomic: bool = False
    ) -> Outcome:
        """Run one attempt of the claimed step; never raises for the step's own errors."""
        tracer = self.tracer
        if tracer is None or span is None:
            return self._attempt(run, claim, atomic)
        with tracer.attempt(run, claim.record, claim.pending.position) as attempt:
            outcome = self._attempt(run, claim, atomic)
            attempt.settle(outcome.exc)
        return outcome

    def _attempt(self, run: RunState, claim: _Claim, atomic: bool) -> Outcome:
        info = _step_info(run, claim)
        owner = claim.record_owner
        savepoint = self.store.atomic if atomic else None
        started = claim.claimed_at
        try:
            value = self.executor.attempt(claim.pending.step, info, savepoint)
        except StillRunning:
            raise
        except Exception as exc:
            return Outcome(claim.pending, owner, exc=exc, started_at=started)
        return Outcome(claim.pending, owner, value=value, started_at=started)

    def _hold_call(self, run_id: str, claim: _Claim) -> None:
        """A call is handed over: keep its lease for as long as the call may take."""
        assert self.call_dispatcher is not None
        position = claim.pending.position
        until = self.clock.now() + max(self.call_dispatcher.call_lease, self.lease)
        with self.store.atomic():
            if self.store.lock_run(run_id) is None:
                return
            records = self.store.steps(run_id, position)
            if not records or records[0].position != position:
                return
            record = records[0]
            if record.status is _PENDING and record.lease_owner == claim.record_owner:
                self.store.save_step(run_id, dataclasses.replace(record, lease_until=until))

    def _dispatches(self, claim: _Claim) -> bool:
        return self.call_dispatcher is not None and isinstance(claim.pending.step, CallStep)

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
            return Outcome(claim.pending, claim.record_owner, exc=exc, started_at=claim.claimed_at)
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
            try:
                replay = self._replay_for(run)
            except (UnknownWorkflowError, PayloadValidationError):
                replay = None  # the tick below deals with the run
            decision: Decision | None = None
            if replay is not None:
                try:
                    decision = replay.advance()
                    store_decided(self, run_id, replay, partial(self.store.save_step, run_id))
                except NonDeterminismError:
                    decision = None  # the tick below fails the run and says why
            pending = next(
                (
                    p
                    for p in (decision.pending if isinstance(decision, Waiting) else ())
                    if p.position == position and isinstance(p.step, CallStep)
                ),
                None,
            )
            if pending is not None and replay is not None:
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
                if accepted:
                    # Guarded until the tick below takes over. No message is
                    # needed: this delivery is not answered until that tick ends.
                    self.store.save_run(T.wake(run, self.clock.now()))
            if replay is not None:
                if decision is not None:
                    self._warm.put(run_id, replay)
                else:
                    replay.discard()
        self.tick(run_id)
        return accepted

    def _checkpoint_unlocked(
        self,
        run: RunState,
        replay: Replay,
        outcome: Outcome,
        deadline: float,
        *,
        guarded: _WriteGuarded,
        committed: _Flag,
    ) -> _Claim | _Carried | _Ended | _Lost | None:
        """Checkpoint a step the workflow waited on alone, and claim the next, unlocked.

        When the workflow's next request is a fresh ``run`` or ``call`` step
        that needs nothing else (no flow control, no wake-up to move, no
        status to save), both records go out in one guarded statement
        (``GuardedWrites``): written only while this worker still holds the
        step and no cancellation is asked for. When the workflow returns
        instead, the checkpoint and the run's end go out in one guarded
        statement the same way (``_end_unlocked``).

        Returns the new claim; or ``_Ended`` when the run ended; or
        ``_LOST`` when the guard failed (the replay went past what the store
        says: discard it); or the checkpoint, ``_Carried``, when the
        workflow went on to something the locked path must do; or None when
        nothing was done.
        """
        position = outcome.pending.position
        current = replay.records.get(position)
        owner = outcome.owner
        if (
            owner is None
            or current is None
            or current.status is not _PENDING
            or current.lease_owner != owner
        ):
            return None
        now = self.clock.now()
        done = T.complete(current, outcome.value, now)
        replay.settle(done)
        try:
            decision = replay.advance()
        except NonDeterminismError:
            return _Carried(done, owner, ())  # the locked path fails the run
        carried = _Carried(done, owner, tuple(replay.take_writes()))
        if isinstance(decision, Completed) and not carried.decided:
            return self._end_unlocked(
                run, replay, carried, result=decision.result, guarded=guarded, committed=committed
            )
        if (
            carried.decided
            or run.cancel_requested
            or not isinstance(decision, Waiting)
            or len(decision.pending) != 1
            or (replay.status is not None and replay.status != run.custom_status)
        ):
            return carried
        pending = decision.pending[0]
        step = pending.step
        if not self._takes_hot_path(pending, deadline):
            return carried
        # The run's wake-up must stay as it is (``_set_wake`` would not write):
        # with lease wake-ups, one due before the new lease ends; else none.
        due = now + self._lease_for(step) if self.scheduler.lease_wakeups else None
        if not keeps_wake(run.wake_at, due, now):
            return carried
        writes = _Writes(self.store, run.run_id)
        claim = self._claim(run, pending, self._begin(run, pending, now), now, writes, alone=True)
        if not guarded(run.run_id, done, owner, [claim.record]):
            log.info(
                "run %s: step %r changed hands meanwhile; reading it again", run.run_id, done.name
            )
            return _LOST
        committed.set()
        replay.settle(claim.record)
        self._observe_completed(run, done)  # no transaction is open: told at once
        return claim

    def _begin_unlocked(
        self, fresh: RunState, deadline: float, committed: _Flag
    ) -> tuple[Replay, RunState, _Claim] | None:
        """A new run's first tick without its locked transaction; None where it cannot be.

        ``fresh`` is the run as a worker's claim read it, with no journal
        yet: the workflow is replayed from nothing, and when its first
        request is a ``run`` or ``call`` step the hot path could take (see
        ``_checkpoint_unlocked``), the run's new wake-up and the step's
        claim go out in one guarded write (``GuardedWrites.begin_guarded``),
        written only if the run is still as the claim read it and still
        has no step. Anything else (a sleep first, a status, a cancellation,
        a scheduler whose wake-up joins the transaction) is left to the
        locked path, which reads the run again.
        """
        begin = getattr(self.store, "begin_guarded", None)
        if (
            begin is None
            or getattr(self.scheduler, "transactional_wake", True)
            or fresh.status is not RunStatus.RUNNING
            or fresh.cancel_requested
            or fresh.tick_failures
            or fresh.error is not None
        ):
            return None
        run_id = fresh.run_id
        self._warm.drop(run_id)
        try:
            replay = self._new_replay(fresh, journal=[])
        except (UnknownWorkflowError, PayloadValidationError):
            return None  # the locked path deals with the run
        try:
            decision = replay.advance()
        except NonDeterminismError:
            replay.discard()
            return None
        if not isinstance(decision, Waiting):
            replay.discard()
            return None
        pending = decision.pending[0]
        if (
            len(decision.pending) != 1
            or replay.take_writes()
            or replay.status is not None
            or not self._takes_hot_path(pending, deadline)
        ):
            replay.discard()
            return None
        now = self.clock.now()
        writes = _Writes(self.store, run_id)
        claim = self._claim(
            fresh, pending, self._begin(fresh, pending, now), now, writes, alone=True
        )
        due = claim.lease_until if self.scheduler.lease_wakeups else None
        run = fresh
        if not keeps_wake(fresh.wake_at, due, now):
            run = (
                T.wake(fresh, due) if due is not None else dataclasses.replace(fresh, wake_at=None)
            )
        if not begin(run, fresh.wake_seq, claim.record):
            log.info("run %s: it changed since it was claimed; reading it again", run_id)
            replay.discard()
            return None
        committed.set()
        if run is not fresh:
            self.scheduler.wake(self.store, run)
        replay.settle(claim.record)
        return replay, run, claim

    def _end_unlocked(
        self,
        run: RunState,
        replay: Replay,
        carried: _Carried,
        *,
        result: str,
        guarded: _WriteGuarded,
        committed: _Flag,
    ) -> _Carried | _Ended | _Lost:
        """The workflow returned after the step ``carried`` checkpoints: end the run, unlocked.

        Written only if, besides the step's guard, no other writer changed
        the run since this tick's view of it (its ``wake_seq``) and no run
        waits on it; a child run, whose parent waits, always ends under the
        lock, which settles the parent's step.
        """
        if run.parent_run_id is not None or run.cancel_requested:
            return carried
        status = replay.status
        if status is not None and status != run.custom_status:
            run = dataclasses.replace(run, custom_status=status)
        now = self.clock.now()
        ended = T.finish(run, RunStatus.COMPLETED, now, result=result)
        if not guarded(run.run_id, carried.done, carried.owner, [], finish=ended):
            log.info("run %s: it changed meanwhile; reading it again to end it", run.run_id)
            return _LOST
        committed.set()
        self._warm.drop(run.run_id)
        # No transaction is open: the observer is told at once.
        self._observe_completed(run, carried.done)
        self._observe_finished(ended, now)
        return _Ended(ended)

    def _takes_hot_path(self, pending: Pending, deadline: float) -> bool:
        """Whether a step is claimed by a guarded write: a fresh ``run`` or ``call`` step alone.

        Not one that needs the lock: flow control, an ``atomic`` step, a
        call handed to a dispatcher; and not past the tick's budget.
        """
        step = pending.step
        return not (
            pending.record is not None
            or step.kind not in ("run", "call")
            or step.flow is not None
            or _is_atomic(pending)
            or (self.call_dispatcher is not None and isinstance(step, CallStep))
            or self.clock.monotonic() >= deadline
        )

    def _still_held(self, run: RunState, carried: _Carried) -> bool:
        """Whether the step ``carried`` checkpoints is still pending under this worker's lease."""
        position = carried.done.position
        for record in self.store.steps(run.run_id, position):
            return (
                record.position == position
                and record.status is _PENDING
                and record.lease_owner == carried.owner
            )
        return False

    def _write_carried(self, run: RunState, carried: _Carried, writes: _Writes) -> None:
        writes.add(carried.done)
        self._observe_completed(run, carried.done)
        save_decided(self, run.run_id, carried.decided, writes.add)

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
        if outcome.exc is None:
            record = T.complete(current, outcome.value, now)
            self._observe_completed(run, record)
        else:
            record = self._failed_attempt(
                run, outcome.pending, current, outcome.exc, now, attempt_started=outcome.started_at
            )
        if writes is None:
            self.store.save_step(run.run_id, record)
        else:
            writes.add(record)
        replay.settle(record)
        return True


class _Flag:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True


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
class _Carried:
    """A step's checkpoint that the live replay went past before it was written."""

    done: StepRecord
    #: The lease owner that must still hold the step for it to be written.
    owner: str
    #: The engine's own records decided on the way (``store_decided``).
    decided: tuple[StepRecord, ...]


class _Lost:
    """The guarded write found the step changed (see ``_checkpoint_unlocked``)."""


@dataclass(frozen=True, slots=True)
class _Ended:
    """The guarded write ended the run (``_end_unlocked``): ``run`` as it was saved."""

    run: RunState


class _WriteGuarded(Protocol):
    """``GuardedWrites.write_guarded``, bound to the store."""

    def __call__(
        self,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool: ...


_LOST = _Lost()


@dataclass(frozen=True, slots=True)
class _Claim:
    pending: Pending
    record: StepRecord
    record_owner: str | None
    lease_until: datetime | None
    #: The workflow waits on this step alone (not a gather's branch), so
    #: while the lease holds nobody else can change the run's journal.
    alone: bool = False
    #: When it was claimed: the attempt's start.
    claimed_at: datetime | None = None
    #: The flow-control keys whose slots the claim holds.
    gates: tuple[FlowGate, ...] = ()


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


def _holds(replay: Replay, claim: _Claim) -> bool:
    record = replay.records.get(claim.pending.position)
    return (
        record is not None
        and record.status is _PENDING
        and record.lease_owner == claim.record_owner
    )


def _first_gate(ready: list[tuple[Pending, StepRecord]]) -> FlowGate | None:
    """The first gate of the ready steps left for the next tick (its wake-up carries it)."""
    for pending, _ in ready:
        step = pending.step
        if isinstance(step, RunStep) and step.flow is not None:
            try:
                return step.flow.gates(step.args, step.kwargs)[0]
            except WorkflowDefinitionError:
                return None
    return None


def _is_atomic(pending: Pending) -> bool:
    return isinstance(pending.step, RunStep) and pending.step.atomic


def _lapsed_error(record: StepRecord, *, retried: bool = False) -> ErrorInfo:
    left = "it is tried again" if retried else "no attempts are left"
    exc = _LeaseLapsed(
        f"attempt {record.attempts} of step {record.name!r} stopped before it finished "
        f"(its worker died or hung past the lease), and {left}"
    )
    return ErrorInfo.from_exception(exc)
