"""The run lifecycle: start, cancel, resume, continue-as-new, and child runs of ``invoke``."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import datetime
from functools import partial
from typing import Any

from .._codec import decode, encode
from .._engine import Failed
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._steps import InvokeStep
from .._store import RunState, RunStatus
from .._workflow import Workflow
from ..exceptions import (
    HookflowError,
    InvalidIdError,
    PayloadValidationError,
    UnknownRunError,
)
from . import _transitions as T
from ._base import RuntimeBase, check_id, tell
from ._observe import RunStarted
from ._updates import hand_on_updates

__all__ = ["LifecycleMixin"]

log = logging.getLogger("hookflow_gen")
_PENDING = StepStatus.PENDING


def _cancelled(record: StepRecord) -> bool:
    return record.error is not None and record.error.is_cancellation


class LifecycleMixin(RuntimeBase):
    """Starting, cancelling and resuming runs, for ``Runtime``."""

    # -- starting ------------------------------------------------------------------

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
            InvalidIdError: ``run_id`` cannot be stored.
        """
        if run_id is not None:
            check_id(run_id, "run_id")
        what = f"the payload of workflow {workflow.name!r}"
        payload_json = encode(workflow.payload_adapter, payload, what=what)
        # Decoded once more, as every tick will: a payload built without
        # validation (``model_construct``) is refused here, not at its first tick.
        decode(workflow.payload_adapter, payload_json, what=what)
        now = self.clock.now()
        tracer = self.tracer
        state = RunState(
            run_id=run_id or uuid.uuid4().hex,
            workflow=workflow.name,
            payload=payload_json,
            created_at=now,
            parent_run_id=parent[0] if parent else None,
            parent_position=parent[1] if parent else None,
            wake_at=now,
            wake_seq=1,
            traceparent=tracer.inject() if tracer is not None else None,
        )
        in_transaction = getattr(self.store, "in_transaction", None)
        if (
            not getattr(self.scheduler, "transactional_wake", True)
            and callable(in_transaction)
            and not in_transaction()
        ):
            # The insert is the whole start, one autocommitted statement: the
            # scheduler has nothing to add in its transaction.
            run, created = self.store.create_run(state)
            if created:
                self._observe_started(run, now)  # no transaction is open: told at once
            return run, created
        with self.store.atomic():
            run, created = self.store.create_run(state)
            if created:
                self.scheduler.wake(self.store, run)
                self._observe_started(run, now)
        return run, created

    def _observe_started(self, run: RunState, now: datetime) -> None:
        """Tell the observer, once the transaction commits, that ``run`` was created."""
        observer = self.observer
        if observer is not None and observer.wants(RunStarted):
            event = RunStarted(
                run_id=run.run_id,
                workflow=run.workflow,
                created_at=now,
                parent_run_id=run.parent_run_id,
            )
            self.store.on_commit(partial(tell, observer, event))

    # -- cancel and resume -------------------------------------------------------------

    def cancel(self, run_id: str) -> RunState:
        """Cancel a run: ``Cancelled`` is thrown into its workflow at its current ``yield``.

        The workflow may catch it and run cleanup steps; the run's children
        are cancelled too. The run is ticked here at once, so a workflow
        without cleanup is cancelled when this returns. A finished run is
        left as it is.

        Raises:
            UnknownRunError: no run has that id.
        """
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run has id {run_id!r}")
            while run.status is RunStatus.CONTINUED and run.continued_as is not None:
                # A chain is cancelled at its live end: the old ids stay usable.
                successor = self.store.lock_run(run.continued_as)
                if successor is None:
                    break
                run = successor
            run_id = run.run_id
            if run.status.finished:
                return run
            run = T.request_cancel(run, self.clock.now())
            self.store.save_run(run)
            self.scheduler.wake(self.store, run)
        try:
            self.tick(run_id)
        except Exception:
            log.exception("run %s: the tick after cancel failed; its wake-up retries it", run_id)
        return self.store.get_run(run_id) or run

    def resume(self, run_id: str) -> RunState:
        """Run a failed run again, from where it failed, with the current code.

        The steps that failed it are tried again with a fresh retry budget
        (a run that failed on a replay error or a tick error just runs
        again); its previous error is kept in ``past_errors``.

        Raises:
            UnknownRunError: no run has that id.
            HookflowError: the run has not failed.
        """
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run has id {run_id!r}")
            if run.status is not RunStatus.FAILED:
                raise HookflowError(
                    f"run {run_id} is {run.status.value}; only a failed run can be resumed"
                )
            now = self.clock.now()
            failed_at = self._failed_at(run)
            if failed_at is not None:
                for record in self.store.steps(run_id, failed_at):
                    if record.status is StepStatus.FAILED and not _cancelled(record):
                        retry = dataclasses.replace(
                            record, status=_PENDING, completed_at=None, wake_at=now, attempts=0
                        )
                        self.store.save_step(run_id, retry)
            run = T.resume(run, now)
            self.store.save_run(run)
            self.scheduler.wake(self.store, run)
        log.info("run %s resumed", run_id)
        return run

    # -- continue-as-new -----------------------------------------------------------------

    def _continue_as_new(self, run: RunState, payload: str) -> RunState:
        """End ``run`` as continued and create the run that goes on, in this transaction.

        The new run's id is derived from the chain (``next_run_id``), so a
        retried tick finds the run it made, never a second one; it is due at
        once. A parent waiting on ``run`` is pointed at the new run, so the
        chain's end settles the parent's ``invoke`` step; updates ``run`` was
        sent and never received go on to the new run (``hand_on_updates``).
        """
        now = self.clock.now()
        next_id = T.next_run_id(run)
        created_run, created = self.store.create_run(T.successor(run, next_id, payload, now))
        if not created and created_run.continued_from != run.run_id:
            error = ErrorInfo(
                type="hookflow_gen.exceptions.HookflowError",
                message=f"run {run.run_id} could not continue as new: the id {next_id!r} "
                f"is taken by another run (of workflow {created_run.workflow!r})",
                mro=("hookflow_gen.exceptions.HookflowError",),
            )
            return self._finish(run, RunStatus.FAILED, error=error)
        ended = T.continue_as(run, next_id, now)
        self.store.save_run(ended)
        hand_on_updates(self.store, run, next_id)
        self._warm.drop(run.run_id)
        self._observe_finished(ended, now)
        for parent_id, position in self.store.waiters("invoke", run.run_id):
            # The lock order of parent and child, as a child's end takes it.
            parent = self.store.lock_run(parent_id)
            if parent is None or parent.status.finished:
                continue
            records = self.store.steps(parent_id, position)
            if records and records[0].position == position and records[0].key == run.run_id:
                self.store.save_step(parent_id, dataclasses.replace(records[0], key=next_id))
        if created:
            self.scheduler.wake(self.store, created_run)
            self._observe_started(created_run, now)
        log.info("run %s continued as %s", run.run_id, next_id)
        return ended

    def _failed_at(self, run: RunState) -> int | None:
        """Where the failed run's workflow failed now: the start of its last request."""
        try:
            replay = self._new_replay(run)
        except Exception:
            return None
        try:
            decision = replay.advance()
        except Exception:
            return None
        finally:
            replay.discard()
        return replay.failed_at if isinstance(decision, Failed) else None

    def _cancel_quietly(self, run_id: str) -> None:
        try:
            self.cancel(run_id)
        except Exception:
            log.exception("run %s: could not be cancelled with its parent", run_id)

    def _begin_child(
        self, run: RunState, record: StepRecord, step: InvokeStep[Any], now: datetime
    ) -> StepRecord:
        child_id = step.run_id or f"{run.run_id}-{record.position}"
        try:
            check_id(child_id, f"the run id of invoke step {step.name!r}")
            child, created = self.start_run(
                step.workflow, step.payload, run_id=child_id, parent=(run.run_id, record.position)
            )
        except (InvalidIdError, PayloadValidationError) as exc:
            return dataclasses.replace(
                T.fail(record, ErrorInfo.from_exception(exc), now), attempts=1
            )
        record = dataclasses.replace(record, key=child.run_id)
        if created:
            return record  # its end settles this step (same commit: nothing to race)
        if child.workflow != step.workflow.name:
            error = ErrorInfo(
                type="hookflow_gen.exceptions.HookflowError",
                message=f"run {child.run_id!r} exists already, for workflow {child.workflow!r}, "
                f"not {step.workflow.name!r}",
                mro=("hookflow_gen.exceptions.HookflowError",),
            )
            return dataclasses.replace(T.fail(record, error, now), attempts=1)
        # An existing run: it may end before this commit, unseen; look again later too.
        return self._child_outcome(record, child, now)

    def _check_child(
        self, run: RunState, record: StepRecord, now: datetime, *, poll: bool
    ) -> StepRecord:
        """Settle an invoke step from its child if the child ended.

        With ``poll`` (an invoke that adopted an existing run, which may end
        unseen) a running child is looked at again a lease later.
        """
        child = self.store.get_run(record.key) if record.key else None
        if child is not None and not child.status.finished and not poll:
            return record
        if child is None:
            error = ErrorInfo(
                type="hookflow_gen.exceptions.UnknownRunError",
                message=f"child run {record.key!r} no longer exists",
                mro=("hookflow_gen.exceptions.UnknownRunError",),
            )
            checked = dataclasses.replace(T.fail(record, error, now), attempts=1)
        else:
            checked = self._child_outcome(record, child, now)
        if checked != record:
            self.store.save_step(run.run_id, checked)
            self._observe_settled(run, checked)
        return checked
