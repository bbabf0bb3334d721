"""Updates: accepting one for a run, and recording the workflow's reply.

Sending an update is one transaction: lock the run, refuse it if the run has
ended, store the update's row, then, under the same lock on the event key
that a run starting to wait takes, either settle the ``receive`` step the
run waits on or buffer the request as an event. The lock order (run, then
key) is the tick's own, so the two never deadlock, and an update is never
buffered while the run is about to wait for it without seeing it.

An update for a run that continued as new goes to the live end of its
chain, whose runs are locked in the chain's order (as ``cancel`` locks them).
One a run was sent and never received when it continues goes on with the
chain: ``hand_on_updates``, in the transaction that ends the run.

A ``reply`` step is recorded the moment the workflow reaches it, under the
run's lock, in the transaction that writes the answer to the update's row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Any, cast

from .._codec import decode, encode
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._steps import ReplyStep
from .._store import RunState, RunStatus, Store
from .._updates import Update, UpdateState, UpdateStatus, update_key
from ..exceptions import (
    UnknownRunError,
    UpdateError,
    UpdateRunFinished,
    WorkflowDefinitionError,
)
from . import _transitions as T
from ._base import RuntimeBase, check_id
from ._events import event_lock

__all__ = ["UpdatesMixin", "hand_on_updates"]

log = logging.getLogger("hookflow_gen")
_PENDING = StepStatus.PENDING


class UpdatesMixin(RuntimeBase):
    """``send_update`` and ``reply`` steps, for ``Runtime``."""

    def send_update(
        self, run_id: str, update: Update[Any, Any], request: object, update_id: str
    ) -> UpdateState:
        """Accept an update for the run (idempotent per ``update_id``); its stored state.

        The request is validated first: one that does not fit changes nothing.
        A run that continued as new is followed to the live end of its chain,
        which gets the update (the returned state's ``run_id`` names it). An
        update id already used in the chain from ``run_id`` on returns that
        update as it stands, whether or not the run has ended since.

        Raises:
            PayloadValidationError: the request does not fit the update's type.
            InvalidIdError: ``update_id`` cannot be stored.
            UnknownRunError: no run has that id.
            UpdateRunFinished: the run (the chain's last run) has ended, and
                never got this update.
            UpdateError: the id was used for another update or request.
        """
        check_id(update_id, "the update id")
        what = f"the request of update {update.name!r}"
        request_json = encode(update.request_adapter, request, what=what)
        decode(update.request_adapter, request_json, what=what)  # as the workflow will
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run has id {run_id!r}")
            while True:
                existing = self.store.get_update(run.run_id, update_id)
                if existing is not None and existing.status is not UpdateStatus.CONTINUED:
                    if existing.name != update.name or existing.request != request_json:
                        raise UpdateError(
                            f"update id {update_id!r} of run {existing.run_id} was used for "
                            f"{existing.name!r} with request {existing.request}, not "
                            f"{update.name!r} with {request_json}; give each update its own id",
                            run_id=existing.run_id,
                            update_id=update_id,
                        )
                    return existing
                if run.status is not RunStatus.CONTINUED or run.continued_as is None:
                    break
                # The chain goes on: the update is for its live end. Locked in the
                # chain's order, as ``cancel`` and a continuing tick lock it.
                successor = self.store.lock_run(run.continued_as)
                if successor is None:
                    break
                run = successor
            if run.status.finished:
                chain = "" if run.run_id == run_id else f" (the last run of {run_id}'s chain)"
                raise UpdateRunFinished(
                    f"run {run.run_id}{chain} is {run.status.value}; "
                    f"it takes no update {update.name!r}",
                    run_id=run.run_id,
                    update_id=update_id,
                )
            now = self.clock.now()
            state = UpdateState(
                run_id=run.run_id,
                update_id=update_id,
                name=update.name,
                request=request_json,
                created_at=now,
            )
            self.store.add_update(state)
            # A ``Received`` as JSON, built around the request's validated JSON.
            envelope = (
                f'{{"id":{json.dumps(update_id)},"name":{json.dumps(update.name)},'
                f'"request":{request_json}}}'
            )
            key = update_key(run.run_id, update.name)
            self.store.lock_key(event_lock(key))
            waiting = self._waiting_receive(run.run_id, key)
            if waiting is None:
                self.store.add_event(key, envelope)
            else:
                done = dataclasses.replace(T.complete(waiting, envelope, now), attempts=1)
                self.store.save_step(run.run_id, done)
                self._wake(run, now)
        return state

    def _waiting_receive(self, run_id: str, key: str) -> StepRecord | None:
        """The run's oldest pending ``receive`` step on ``key``, if it waits on one."""
        for waiter_id, position in self.store.waiters("event", key):
            if waiter_id != run_id:
                continue  # never expected: the key names the run
            records = self.store.steps(run_id, position)
            if records and records[0].position == position and records[0].status is _PENDING:
                return records[0]
        return None

    def _begin_reply(
        self, run_id: str, record: StepRecord, step: ReplyStep, now: datetime
    ) -> StepRecord:
        """Record a reply step and, in the same transaction, the update's answer."""
        record = dataclasses.replace(record, key=step.update_id, attempts=1)
        current = self.store.get_update(run_id, step.update_id)
        if current is None:
            # Delivered without a stored update (a raw notify, a resumed copy of
            # the journal): there is nobody to answer, and nothing to answer twice.
            log.info("run %s: update %r has no stored row to answer", run_id, step.update_id)
            return T.complete(record, "null", now)
        if current.status.settled:
            exc = WorkflowDefinitionError(
                f"update {step.update_id!r} ({step.name!r}) was {current.status.value} already; "
                "an update is answered once"
            )
            return T.fail(record, ErrorInfo.from_exception(exc), now)
        self.store.save_update(
            dataclasses.replace(
                current,
                status=UpdateStatus.REJECTED if step.rejected else UpdateStatus.ANSWERED,
                answer=step.answer,
                reason=step.reason,
                answered_at=now,
            )
        )
        return T.complete(record, "null", now)


def hand_on_updates(store: Store, run: RunState, next_run_id: str) -> None:
    """Give the next run of the chain the updates ``run`` was sent and never received.

    Called in the transaction that ends ``run`` as continued, under its
    lock. A pending update whose request is still buffered on ``run``'s
    key gets a row of its own on the next run (same id and request) and
    its request is buffered there, in the order sent; its row on ``run``
    becomes ``continued``. An update ``run`` received and did not answer
    stays pending: its caller learns that the run ended without answering.
    """
    pending = store.pending_updates(run.run_id)
    if not pending:
        return
    by_id = {state.update_id: state for state in pending}
    for name in dict.fromkeys(state.name for state in pending):
        key = update_key(run.run_id, name)
        store.lock_key(event_lock(key))
        moved: list[str] = []
        while (envelope := store.take_event(key)) is not None:
            moved.append(envelope)
        if not moved:
            continue
        next_key = update_key(next_run_id, name)
        store.lock_key(event_lock(next_key))
        for envelope in moved:
            store.add_event(next_key, envelope)
            update_id = _envelope_id(envelope)
            state = by_id.get(update_id) if update_id is not None else None
            if state is None or state.name != name:
                continue  # sent by a raw notify on the key: kept, nobody to answer
            if store.get_update(next_run_id, state.update_id) is None:
                store.add_update(dataclasses.replace(state, run_id=next_run_id))
            store.save_update(dataclasses.replace(state, status=UpdateStatus.CONTINUED))
            log.info(
                "run %s: update %r (%s) handed on to %s",
                run.run_id,
                state.update_id,
                name,
                next_run_id,
            )


def _envelope_id(envelope: str) -> str | None:
    """The update id in a buffered request (a ``Received`` as JSON), if it has one."""
    try:
        data: object = json.loads(envelope)
    except ValueError:
        return None
    if isinstance(data, dict):
        found: object = cast("dict[str, object]", data).get("id")
        if isinstance(found, str):
            return found
    return None
