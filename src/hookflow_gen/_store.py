"""The seam between the runtime and persistence: ``Store``, and an in-memory one.

The runtime talks to storage through ``Store`` only. The Django ORM store
(``hookflow_gen.django``) is the durable one; ``MemoryStore`` keeps runs in
process memory, for tests and the testing kit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from ._journal import ErrorInfo, StepRecord, StepStatus
from ._updates import UpdateState, UpdateStatus

if TYPE_CHECKING:
    from ._flow import FlowGate

__all__ = ["GuardedWrites", "MemoryStore", "RunState", "RunStatus", "Store"]


class RunStatus(StrEnum):
    """Where a run stands."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Ended by ``ctx.continue_as_new``: ``RunState.continued_as`` names the
    #: run that goes on in its place (final for this run, not for the chain).
    CONTINUED = "continued"

    @property
    def finished(self) -> bool:
        """True for the final states (``continued`` too: this run does nothing more)."""
        return self is not RunStatus.RUNNING


@dataclass(frozen=True, slots=True)
class RunState:
    """A run, as stored.

    Attributes:
        run_id: unique id.
        workflow: the registered workflow name.
        payload: the payload as JSON text.
        status: running, completed, failed or cancelled.
        created_at: when it was started.
        result: the result as JSON text, once completed.
        error: the error that ended it, once failed.
        finished_at: when it reached a final state.
        parent_run_id: for a child run, the parent's id.
        parent_position: for a child run, the parent's invoke step position.
        wake_at: when the run is next due for a tick (None: nothing is timed;
            it waits for an event, a child or a running step).
        wake_seq: bumped each time a wake-up is scheduled; a QStash message
            carries it to tell stale deliveries apart.
        cancel_requested: ``cancel`` was called; the next tick throws
            ``Cancelled`` into the workflow.
        tick_failures: ticks in a row that raised (reset by one that does
            not); the run fails when they reach the runtime's bound.
        past_errors: the errors the run failed with before each ``resume``.
        custom_status: the JSON of the latest ``ctx.set_status`` the run
            reached, saved with its checkpoints (None: never set).
        continued_from: the run this one continues (``ctx.continue_as_new``).
        continued_as: the run that continues this one, once it is ``continued``.
        generation: how many runs of its chain came before this one (0 for
            a run started otherwise than by ``continue_as_new``).
        traceparent: the W3C trace context the run was started in (with
            tracing on), the parent of its ticks' spans; else None.
    """

    run_id: str
    workflow: str
    payload: str
    status: RunStatus = RunStatus.RUNNING
    created_at: datetime | None = None
    result: str | None = None
    error: ErrorInfo | None = None
    finished_at: datetime | None = None
    parent_run_id: str | None = None
    parent_position: int | None = None
    wake_at: datetime | None = None
    wake_seq: int = 0
    cancel_requested: bool = False
    tick_failures: int = 0
    past_errors: tuple[ErrorInfo, ...] = ()
    custom_status: str | None = None
    continued_from: str | None = None
    continued_as: str | None = None
    generation: int = 0
    traceparent: str | None = None


class Store(Protocol):
    """Durable storage of runs, their journals and buffered events.

    Every method but ``atomic``, ``on_commit``, ``get_run`` and ``get_update`` is called
    inside ``atomic()``. ``lock_run`` must exclude other transactions that
    lock the same run until this one ends (``SELECT ... FOR UPDATE`` on
    PostgreSQL; SQLite's write lock, taken at ``BEGIN IMMEDIATE``).
    """

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """A transaction; nested calls make savepoints."""
        ...

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the outermost transaction commits (at once if none)."""
        ...

    def create_run(self, run: RunState) -> tuple[RunState, bool]:
        """Insert ``run``, or return the run already stored under its id; (run, created)."""
        ...

    def get_run(self, run_id: str) -> RunState | None:
        """The run, without locking it; None if unknown."""
        ...

    def lock_run(self, run_id: str) -> RunState | None:
        """The run, locked until the transaction ends; None if unknown."""
        ...

    def save_run(self, run: RunState) -> None:
        """Update a stored run (status, result, error, wake-up fields)."""
        ...

    def steps(self, run_id: str, from_position: int = 0) -> list[StepRecord]:
        """The run's journal from ``from_position`` on, ordered by position."""
        ...

    def save_step(self, run_id: str, record: StepRecord) -> None:
        """Insert or replace the record at ``record.position``."""
        ...

    def save_steps(self, run_id: str, records: Sequence[StepRecord]) -> None:
        """``save_step`` for several records of distinct positions, in one statement."""
        ...

    def add_event(self, key: str, payload: str) -> None:
        """Buffer an event that no run waits for yet."""
        ...

    def take_event(self, key: str) -> str | None:
        """Remove and return the oldest buffered event for ``key``."""
        ...

    def waiters(self, kind: str, key: str) -> list[tuple[str, int]]:
        """(run id, position) of running runs' pending ``kind`` steps on ``key``, oldest first.

        For ``"event"`` steps ``key`` is the event key; for ``"invoke"``
        steps, the child run's id.
        """
        ...

    def lock_key(self, key: str) -> None:
        """Exclude other transactions that lock ``key`` until this one ends.

        Serialises a run that starts waiting on an event key with ``notify``
        on that key (an advisory lock on PostgreSQL; SQLite's write lock and
        the memory store's lock already serialise every transaction).
        """
        ...

    def add_update(self, update: UpdateState) -> None:
        """Store a new update (its ``(run_id, update_id)`` is not stored yet)."""
        ...

    def get_update(self, run_id: str, update_id: str) -> UpdateState | None:
        """The run's update with that id, or None; callable outside ``atomic()`` too."""
        ...

    def save_update(self, update: UpdateState) -> None:
        """Record an update's answer, rejection or hand-over (its status and answer fields)."""

    def pending_updates(self, run_id: str) -> list[UpdateState]:
        """The run's updates that are still pending, oldest first."""
        ...

    def take_flow_slot(
        self, gates: Sequence[FlowGate], run_id: str, position: int, owner: str, now: datetime
    ) -> datetime | None:
        """Take a slot of every gate for the step ``owner`` is about to claim, or none.

        Locks each gate's key (``lock_key``, in the order given), then counts
        on each key the steps that hold a live lease (a lapsed lease holds
        no slot) and the attempts started in the rate's window. If every
        gate admits the step, its start is recorded on each key, it leaves
        the keys' waiting lists, and the answer is None. Otherwise nothing is
        recorded, the run joins the waiting list of each key whose
        concurrency was full, and the answer is when a slot may be free at
        the latest: the first live lease's end, or when the window admits a
        start again.
        """
        ...

    def release_flow_slot(self, keys: Sequence[str], now: datetime) -> list[str]:
        """A holder of these keys settled its step: which waiting runs to wake.

        Locks the keys, and takes the oldest waiting run off each key's list.
        """
        ...


class GuardedWrites(Protocol):
    """A store that can write a checkpoint and the next claim without a transaction."""

    def write_guarded(
        self,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        """Write ``guard`` and ``others`` at once, if ``owner`` still holds ``guard``'s step.

        Called outside ``atomic()``. Nothing is written unless, atomically
        with the writes, the run is running with no cancellation asked for
        and its step at ``guard.position`` is pending under ``owner``'s
        lease. Returns whether the records were written (and committed).

        With ``finish`` (the run in its final state) the run is saved as
        ``finish`` too, in the same commit, and the guard asks two things
        more: the stored run's ``wake_seq`` is still ``finish.wake_seq`` (no
        other writer changed it), and no running run waits on it with an
        ``invoke`` step (``waiters``), since those are settled under the lock.
        """
        ...

    def begin_guarded(self, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        """A new run's first tick: save ``run``'s wake-up and insert ``claim``, its first step.

        Called outside ``atomic()``. Nothing is written unless, atomically
        with the writes, the stored run is running with no cancellation
        asked for, its ``wake_seq`` is still ``seen_seq`` and it has no step
        yet. Only ``wake_at`` and ``wake_seq`` are taken from ``run`` (and a
        worker's claim on the run is cleared, as ``save_run`` does).
        Returns whether the records were written (and committed).
        """
        ...


class MemoryStore:
    """A ``Store`` in process memory: fast, not durable. For tests.

    One re-entrant lock stands for all transactions, so ``lock_run`` is
    trivially exclusive. Every change inside ``atomic`` is logged with how
    to undo it, so a block that raises rolls back just its own changes (a
    savepoint, when nested), in time proportional to what it changed.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._undo: list[Callable[[], object]] = []
        self.runs: dict[str, RunState] = {}
        self.journals: dict[str, dict[int, StepRecord]] = {}
        self.events: dict[str, list[str]] = {}
        self.updates: dict[tuple[str, str], UpdateState] = {}
        #: Per flow-control key: the starts, as (run id, position, owner, when).
        self.flow_starts: dict[str, tuple[tuple[str, int, str, datetime], ...]] = {}
        #: Per flow-control key: the waiting runs, oldest first.
        self.flow_waiters: dict[str, tuple[str, ...]] = {}
        self._commit_hooks: list[Callable[[], None]] = []

    @contextlib.contextmanager
    def atomic(self) -> Generator[None, None, None]:
        with self._lock:
            undo_mark, hooks_mark = len(self._undo), len(self._commit_hooks)
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                while len(self._undo) > undo_mark:
                    self._undo.pop()()
                del self._commit_hooks[hooks_mark:]
                raise
            self._depth -= 1
            if self._depth == 0:
                self._undo.clear()
                hooks, self._commit_hooks = self._commit_hooks, []
                for hook in hooks:
                    hook()

    def _put(self, mapping: dict[Any, Any], key: object, value: object) -> None:
        """``mapping[key] = value``, undoable."""
        if self._depth:
            if key in mapping:
                old = mapping[key]
                self._undo.append(lambda: mapping.__setitem__(key, old))
            else:
                self._undo.append(lambda: mapping.pop(key, None))
        mapping[key] = value

    def on_commit(self, fn: Callable[[], None]) -> None:
        if self._depth == 0:
            fn()
        else:
            self._commit_hooks.append(fn)

    def create_run(self, run: RunState) -> tuple[RunState, bool]:
        existing = self.runs.get(run.run_id)
        if existing is not None:
            return existing, False
        self._put(self.runs, run.run_id, run)
        self._put(self.journals, run.run_id, {})
        return run, True

    def get_run(self, run_id: str) -> RunState | None:
        return self.runs.get(run_id)

    def lock_run(self, run_id: str) -> RunState | None:
        return self.runs.get(run_id)

    def save_run(self, run: RunState) -> None:
        self._put(self.runs, run.run_id, run)

    def steps(self, run_id: str, from_position: int = 0) -> list[StepRecord]:
        journal = self.journals.get(run_id, {})
        return [journal[p] for p in sorted(journal) if p >= from_position]

    def save_step(self, run_id: str, record: StepRecord) -> None:
        if run_id not in self.journals:
            self._put(self.journals, run_id, {})
        self._put(self.journals[run_id], record.position, record)

    def save_steps(self, run_id: str, records: Sequence[StepRecord]) -> None:
        for record in records:
            self.save_step(run_id, record)

    def write_guarded(
        self,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        with self._lock:
            run = self.runs.get(run_id)
            held = self.journals.get(run_id, {}).get(guard.position)
            if (
                run is None
                or run.status is not RunStatus.RUNNING
                or run.cancel_requested
                or held is None
                or held.status is not StepStatus.PENDING
                or held.lease_owner != owner
            ):
                return False
            if finish is not None:
                if run.wake_seq != finish.wake_seq or self.waiters("invoke", run_id):
                    return False
                self.save_run(finish)
            self.save_steps(run_id, (*others, guard))
            return True

    def begin_guarded(self, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        with self._lock:
            stored = self.runs.get(run.run_id)
            if (
                stored is None
                or stored.status is not RunStatus.RUNNING
                or stored.cancel_requested
                or stored.wake_seq != seen_seq
                or self.journals.get(run.run_id)
            ):
                return False
            woken = dataclasses.replace(stored, wake_at=run.wake_at, wake_seq=run.wake_seq)
            self.save_run(woken)
            self.save_steps(run.run_id, (claim,))
            return True

    def add_event(self, key: str, payload: str) -> None:
        if key not in self.events:
            self._put(self.events, key, [])
        queue = self.events[key]
        queue.append(payload)
        if self._depth:
            self._undo.append(queue.pop)

    def take_event(self, key: str) -> str | None:
        queue = self.events.get(key)
        if not queue:
            return None
        payload = queue.pop(0)
        if self._depth:
            self._undo.append(lambda: queue.insert(0, payload))
        return payload

    def waiters(self, kind: str, key: str) -> list[tuple[str, int]]:
        waiters = [
            (run.created_at or datetime.min, run_id, record.position)
            for run_id, journal in self.journals.items()
            if (run := self.runs[run_id]).status is RunStatus.RUNNING
            for record in journal.values()
            if record.kind == kind and record.key == key and record.status is StepStatus.PENDING
        ]
        return [(run_id, position) for _, run_id, position in sorted(waiters)]

    def lock_key(self, key: str) -> None:
        pass  # one lock stands for every transaction already

    def add_update(self, update: UpdateState) -> None:
        self._put(self.updates, (update.run_id, update.update_id), update)

    def get_update(self, run_id: str, update_id: str) -> UpdateState | None:
        return self.updates.get((run_id, update_id))

    def save_update(self, update: UpdateState) -> None:
        self._put(self.updates, (update.run_id, update.update_id), update)

    def pending_updates(self, run_id: str) -> list[UpdateState]:
        return [  # a dict keeps insertion order: the order they were accepted
            update
            for (owner, _), update in self.updates.items()
            if owner == run_id and update.status is UpdateStatus.PENDING
        ]

    def take_flow_slot(
        self, gates: Sequence[FlowGate], run_id: str, position: int, owner: str, now: datetime
    ) -> datetime | None:
        retry_at: datetime | None = None
        full: list[str] = []
        for gate in gates:
            starts = self.flow_starts.get(gate.key, ())
            if gate.max_active is not None:
                leases = sorted(
                    until
                    for r, p, o, _ in starts
                    if (until := self._live_lease(r, p, o, now)) is not None
                )
                if len(leases) >= gate.max_active:
                    full.append(gate.key)
                    retry_at = max(retry_at or leases[0], leases[0])
            if gate.rate is not None and gate.period is not None:
                window = sorted(at for _, _, _, at in starts if at > now - gate.period)
                if len(window) >= gate.rate:
                    opens = window[len(window) - gate.rate] + gate.period
                    retry_at = max(retry_at or opens, opens)
        if retry_at is not None:
            for key in full:
                waiting = self.flow_waiters.get(key, ())
                if run_id not in waiting:
                    self._put(self.flow_waiters, key, (*waiting, run_id))
            return retry_at
        for gate in gates:
            keep = now - (gate.period or timedelta(0))
            kept = tuple(
                start
                for start in self.flow_starts.get(gate.key, ())
                if start[3] > keep or self._live_lease(start[0], start[1], start[2], now)
            )
            self._put(self.flow_starts, gate.key, (*kept, (run_id, position, owner, now)))
            waiting = self.flow_waiters.get(gate.key, ())
            if run_id in waiting:
                self._put(self.flow_waiters, gate.key, tuple(w for w in waiting if w != run_id))
        return None

    def _live_lease(self, run_id: str, position: int, owner: str, now: datetime) -> datetime | None:
        record = self.journals.get(run_id, {}).get(position)
        if (
            record is None
            or record.status is not StepStatus.PENDING
            or record.lease_owner != owner
            or record.lease_until is None
            or record.lease_until <= now
        ):
            return None
        return record.lease_until

    def release_flow_slot(self, keys: Sequence[str], now: datetime) -> list[str]:
        woken: list[str] = []
        for key in keys:
            waiting = self.flow_waiters.get(key, ())
            if waiting:
                self._put(self.flow_waiters, key, waiting[1:])
                woken.append(waiting[0])
        return woken
