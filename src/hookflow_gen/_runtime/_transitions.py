"""Every legal change of a step record and of a run, as one named function each.

The runtime never edits a ``StepRecord`` or ``RunState`` field by hand: it
calls one of these and writes what they return, in the transaction that
decided it. That keeps the write set of each transition in one place, and
the run invariant checkable in one place (``unguarded``):

    a RUNNING run always has a wake-up set, a step under a live lease, or a
    registered wait (an event step, or an invoke step whose child runs),
    written in the same commit that made it needed.

    A CONTINUED run (ended by ``continue_as_new``) names in ``continued_as``
    the run that goes on in its place, which exists and names it back in
    ``continued_from``, one generation later: both written in one commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import datetime

from .._journal import (
    CANCELLED,
    MAX_ATTEMPT_MESSAGE,
    Attempt,
    ErrorInfo,
    StepRecord,
    StepStatus,
    storable,
)
from .._store import RunState, RunStatus

__all__ = [
    "cancel_step",
    "cancelled_error",
    "claim",
    "complete",
    "continue_as",
    "fail",
    "finish",
    "guarded_by",
    "lapsed",
    "lapsed_attempt",
    "next_run_id",
    "request_cancel",
    "resume",
    "retry_later",
    "successor",
    "suspend",
    "tick_failed",
    "unguarded",
    "wake",
]

_PENDING = StepStatus.PENDING

# -- steps ---------------------------------------------------------------------


def claim(record: StepRecord, owner: str, lease_until: datetime) -> StepRecord:
    """A worker takes the step: one more attempt, under a lease only ``owner`` holds."""
    # Built field by field, not with ``dataclasses.replace``: this and
    # ``complete`` run once per step, and replace costs several times more.
    return StepRecord(
        record.position,
        record.kind,
        record.name,
        record.status,
        record.result,
        record.error,
        record.attempts + 1,
        record.completed_at,
        None,
        record.key,
        record.started_at,
        lease_until,
        owner,
        record.past_attempts,
    )


def lapsed(record: StepRecord, now: datetime) -> bool:
    """True for a claimed step whose lease ran out: the attempt's worker died (or hung)."""
    return (
        record.status is _PENDING
        and record.lease_owner is not None
        and record.lease_until is not None
        and record.lease_until <= now
    )


def complete(record: StepRecord, result: str | None, now: datetime) -> StepRecord:
    """The step settled with ``result`` (JSON)."""
    return StepRecord(
        record.position,
        record.kind,
        record.name,
        StepStatus.COMPLETED,
        result,
        record.error,
        record.attempts,
        now,
        record.wake_at,
        record.key,
        record.started_at,
        None,
        None,
        record.past_attempts,
    )


def retry_later(
    record: StepRecord,
    error: ErrorInfo,
    at: datetime,
    *,
    started: datetime | None = None,
    now: datetime | None = None,
) -> StepRecord:
    """A failed attempt, to be tried again at ``at``; the error is kept for display.

    With ``now`` the attempt (claimed at ``started``, failed at ``now``) joins
    the step's ``past_attempts``, so each retried attempt keeps its times.
    """
    past = record.past_attempts
    if now is not None:
        past = (*past, _attempt(record, error, started, now, at))
    return dataclasses.replace(
        record, error=error, wake_at=at, lease_until=None, lease_owner=None, past_attempts=past
    )


def lapsed_attempt(record: StepRecord, error: ErrorInfo, started: datetime | None) -> StepRecord:
    """A lapsed attempt to be tried again at once: it joins ``past_attempts``."""
    assert record.lease_until is not None
    ended = record.lease_until
    past = (*record.past_attempts, _attempt(record, error, started, ended, ended))
    return dataclasses.replace(record, error=error, past_attempts=past)


def _attempt(
    record: StepRecord,
    error: ErrorInfo,
    started: datetime | None,
    ended: datetime,
    retry_at: datetime | None,
) -> Attempt:
    if started is None:
        # Not known (a dispatched call's answer): the previous attempt's retry time.
        previous = record.past_attempts[-1] if record.past_attempts else None
        started = previous.retry_at if previous is not None else record.started_at
    return Attempt(
        attempt=max(record.attempts, 1),
        started_at=started,
        ended_at=ended,
        error_type=error.type,
        message=storable(error.message, MAX_ATTEMPT_MESSAGE),
        retry_at=retry_at,
    )


def fail(record: StepRecord, error: ErrorInfo, now: datetime) -> StepRecord:
    """The step failed for good."""
    return dataclasses.replace(
        record,
        status=StepStatus.FAILED,
        error=error,
        completed_at=now,
        wake_at=None,
        lease_until=None,
        lease_owner=None,
    )


def cancelled_error(message: str = "the run was cancelled") -> ErrorInfo:
    """The recorded error of a step settled by a cancellation."""
    return ErrorInfo(type=CANCELLED, message=message, mro=(CANCELLED,))


def cancel_step(record: StepRecord, now: datetime) -> StepRecord:
    """Settle a pending step because its run was cancelled (``Cancelled`` is thrown there)."""
    return fail(record, cancelled_error(), now)


# -- runs ----------------------------------------------------------------------


def wake(run: RunState, at: datetime) -> RunState:
    """Set the run's next wake-up (a new sequence number, for its delivery)."""
    return dataclasses.replace(run, wake_at=at, wake_seq=run.wake_seq + 1)


def finish(
    run: RunState,
    status: RunStatus,
    now: datetime,
    *,
    result: str | None = None,
    error: ErrorInfo | None = None,
) -> RunState:
    """The run reached a final state: nothing wakes it any more."""
    return dataclasses.replace(
        run,
        status=status,
        result=result,
        error=error,
        finished_at=now,
        wake_at=None,
        cancel_requested=False,
        tick_failures=0,
    )


#: The longest run id the store keeps (``_base.MAX_ID``; repeated to avoid a cycle).
_MAX_ID = 255
_CONTINUED = "-continued-"


def next_run_id(run: RunState) -> str:
    """The id of the run that continues ``run``: the chain's first id, ``-continued-<n>``.

    Derived from stored facts alone (the id and the generation), so a tick
    that is retried after a crash computes the same id, and the store's
    unique key never lets a chain fork. An id too long to take the suffix
    is cut and given a hash of itself, so it stays unique and within 255.
    """
    generation = run.generation + 1
    if run.generation == 0:
        root = run.run_id
        if len(root) + len(_CONTINUED) + 10 > _MAX_ID:
            digest = hashlib.blake2b(root.encode(), digest_size=8).hexdigest()
            root = f"{root[: _MAX_ID - len(_CONTINUED) - 10 - 17]}-{digest}"
    else:
        root = run.run_id.removesuffix(f"{_CONTINUED}{run.generation}")
    return f"{root}{_CONTINUED}{generation}"


def successor(run: RunState, run_id: str, payload: str, now: datetime) -> RunState:
    """The run that continues ``run`` with ``payload``: an empty journal, due now.

    It keeps the chain's parent (a child run stays its parent's child), the
    trace its runs' spans belong to, the custom status until its own
    workflow sets one, and a cancellation asked
    for while the old run was ending, which its first tick delivers.
    """
    return RunState(
        run_id=run_id,
        workflow=run.workflow,
        payload=payload,
        created_at=now,
        parent_run_id=run.parent_run_id,
        parent_position=run.parent_position,
        wake_at=now,
        wake_seq=1,
        cancel_requested=run.cancel_requested,
        custom_status=run.custom_status,
        continued_from=run.run_id,
        generation=run.generation + 1,
        traceparent=run.traceparent,
    )


def continue_as(run: RunState, next_run_id: str, now: datetime) -> RunState:
    """The run ended by ``continue_as_new``: ``next_run_id`` goes on in its place."""
    return dataclasses.replace(finish(run, RunStatus.CONTINUED, now), continued_as=next_run_id)


def suspend(run: RunState, error: ErrorInfo, at: datetime) -> RunState:
    """The run cannot be ticked here now (its workflow is unknown to this code).

    It stays running, shows ``error``, and is tried again at ``at`` (the
    count of tries sets the back-off): a deploy that brings the workflow
    back resumes it without anyone's help.
    """
    return dataclasses.replace(wake(run, at), error=error, tick_failures=run.tick_failures + 1)


def tick_failed(run: RunState, error: ErrorInfo, at: datetime) -> RunState:
    """A tick raised: count it, show the error, try again at ``at``."""
    return dataclasses.replace(wake(run, at), error=error, tick_failures=run.tick_failures + 1)


def request_cancel(run: RunState, now: datetime) -> RunState:
    """Ask for the run to be cancelled at its next tick, due now."""
    return dataclasses.replace(wake(run, now), cancel_requested=True)


def resume(run: RunState, now: datetime) -> RunState:
    """A failed run runs again from where it failed; its error joins its history."""
    history = run.past_errors + ((run.error,) if run.error is not None else ())
    return dataclasses.replace(
        wake(run, now),
        status=RunStatus.RUNNING,
        error=None,
        result=None,
        finished_at=None,
        tick_failures=0,
        past_errors=history,
    )


# -- the invariant -----------------------------------------------------------------


def guarded_by(record: StepRecord, now: datetime) -> bool:
    """True if this pending step alone keeps its run from being stranded."""
    if record.status is not _PENDING:
        return False
    if record.kind in ("run", "call"):
        return record.lease_until is not None and record.lease_until > now
    if record.kind == "event":
        return True  # a registered wait: notify wakes the run
    if record.kind == "invoke":
        return record.key is not None  # the child's end settles it
    return False  # a sleep is guarded by the run's wake-up only


def unguarded(run: RunState, pending: Iterable[StepRecord], now: datetime) -> bool:
    """True if the run, left as it is, would never be ticked again."""
    if run.status is not RunStatus.RUNNING or run.wake_at is not None:
        return False
    return not any(guarded_by(record, now) for record in pending)
