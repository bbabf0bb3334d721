"""Events: ``notify``, and a run starting to wait on an event key.

Looking for waiters and buffering happen under a lock on the key, which a
run that starts to wait takes too: an event is never buffered while a run
is about to wait for it without seeing it.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from .._codec import adapter_for, decode, encode
from .._engine import Decision, Waiting
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._steps import EventStep, LeafStep
from ..exceptions import (
    InvalidIdError,
    PayloadValidationError,
)
from . import _transitions as T
from ._base import RuntimeBase, check_id

__all__ = ["EventsMixin"]

log = logging.getLogger("hookflow_gen")
_ANY = adapter_for(Any)
_PENDING = StepStatus.PENDING


def _event_lock(key: str) -> str:
    return f"event:{key}"


#: The name of the lock on an event key (``Store.lock_key``), for updates too.
event_lock = _event_lock


def _pending_at(decision: Decision, position: int) -> LeafStep | None:
    if isinstance(decision, Waiting):
        for pending in decision.pending:
            if pending.position == position:
                return pending.step
    return None


class EventsMixin(RuntimeBase):
    """``notify`` and event waits, for ``Runtime``."""

    # -- events ----------------------------------------------------------------------

    def notify(self, key: str, payload: object) -> int:
        """Deliver an event to every run waiting on ``key``; buffer it if none waits.

        Returns how many runs received it. The payload is validated against
        each waiting step's model first: if it does not fit, nothing changes
        and ``PayloadValidationError`` is raised. A waiting run whose code no
        longer replays is skipped (and woken, so its tick fails it visibly).

        Looking for waiters and buffering happen under a lock on the key,
        which a run that starts to wait takes too: an event is never buffered
        while a run is about to wait for it without seeing it.

        Raises:
            InvalidIdError: the key cannot be stored.
            PayloadValidationError: the payload does not fit a waiting step.
        """
        check_id(key, "the event key")
        data = encode(_ANY, payload, what=f"the event for key {key!r}")
        for _ in range(3):
            with self.store.atomic():
                self.store.lock_key(_event_lock(key))
                waiters = self.store.waiters("event", key)
                if not waiters:
                    self.store.add_event(key, data)
                    return 0
            targets: list[tuple[str, int, EventStep[Any]]] = []
            for run_id, position in waiters:
                step = self._event_step_at(run_id, position)
                if step is not None:
                    decode(step.event_adapter, data, what=f"the event for key {key!r}")
                    targets.append((run_id, position, step))
            delivered = sum(self._deliver(run_id, p, step, data) for run_id, p, step in targets)
            if delivered:
                return delivered
            # Every waiter moved on meanwhile: look again, and buffer if none is left.
        return 0

    def _event_step_at(self, run_id: str, position: int) -> EventStep[Any] | None:
        """The event step a waiting run is blocked on at ``position``, if it still is."""
        run = self.store.get_run(run_id)
        if run is None or run.status.finished:
            return None
        replay = self._warm.take(run_id)
        try:
            with self.store.atomic():
                if replay is None:
                    replay = self._new_replay(run)
                else:
                    replay.catch_up(self.store.steps(run_id, replay.position))
            decision = replay.advance()
            if replay.take_writes():
                # It decided records of its own (a race's winner): they are stored
                # by the run's next tick, which decides them again under the lock.
                replay.discard()
                replay = None
                self._wake_now(run_id)
                return None
        except Exception as exc:
            log.warning("run %s no longer replays, so it gets no event: %s", run_id, exc)
            if replay is not None:
                replay.discard()
            self._wake_now(run_id)
            return None
        self._warm.put(run_id, replay)
        step = _pending_at(decision, position)
        return step if isinstance(step, EventStep) else None

    def _deliver(self, run_id: str, position: int, step: EventStep[Any], data: str) -> bool:
        with self.store.atomic():
            run = self.store.lock_run(run_id)
            if run is None or run.status.finished:
                return False
            records = self.store.steps(run_id, position)
            if not records or records[0].position != position:
                return False
            record = records[0]
            if record.status is not _PENDING or record.kind != "event":
                return False
            what = f"the event for key {record.key!r}"
            result = encode(step.adapter, decode(step.event_adapter, data, what=what), what=what)
            now = self.clock.now()
            done = dataclasses.replace(T.complete(record, result, now), attempts=1)
            self.store.save_step(run_id, done)
            self._observe_settled(run, done)
            self._wake(run, now)
        return True

    def _wake_now(self, run_id: str) -> None:
        try:
            with self.store.atomic():
                run = self.store.lock_run(run_id)
                if run is not None and not run.status.finished:
                    self._wake(run, self.clock.now())
        except Exception:
            log.exception("run %s: could not be woken", run_id)

    def _begin_wait(self, record: StepRecord, step: EventStep[Any], now: datetime) -> StepRecord:
        try:
            key = check_id(step.key, f"the key of event step {step.name!r}")
        except InvalidIdError as exc:
            return T.fail(record, ErrorInfo.from_exception(exc), now)
        record = dataclasses.replace(
            record, key=key, wake_at=now + step.timeout if step.timeout is not None else None
        )
        # The same lock as notify's: a notify either sees this wait or has
        # buffered its event before the lookup below.
        self.store.lock_key(_event_lock(key))
        buffered = self.store.take_event(key)
        if buffered is None:
            return record
        try:
            event = decode(step.event_adapter, buffered, what=f"the event for key {key!r}")
            result = encode(step.adapter, event, what=f"the event for key {key!r}")
        except PayloadValidationError as exc:
            return dataclasses.replace(
                T.fail(record, ErrorInfo.from_exception(exc), now), attempts=1
            )
        return dataclasses.replace(T.complete(record, result, now), attempts=1)
