"""The replay engine: pure, no I/O, no clock of its own.

Given a workflow, its payload and its run's journal, ``Replay`` drives a fresh
generator: recorded results are sent back in order (decoded exactly as fresh
ones), recorded failures are thrown in as ``StepFailed``, and the first step
without a settled record is returned as a ``Waiting`` decision. The runtime
then settles that step (runs it, waits for its timer or event) and calls
``settle`` and ``advance`` again: the generator stays alive, so nothing is
replayed twice within one wake-up.

Some records are the engine's own decisions rather than a step's outcome:
a race's winner (a ``race`` marker after its branches) and its cancelled
losers, and the ``patch`` markers of ``ctx.patched``. The engine adds them
to its journal and hands them out through ``take_writes``; whoever drives it
stores them with the step records it writes next, so a replay finds the same
decisions. They are derived from the journal alone, so a fresh execution
that never saw them being written makes them again identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, cast

import pydantic

from ._codec import decode, encode
from ._context import Context, RunInfo, StepTracker
from ._journal import ErrorInfo, StepRecord, StepStatus
from ._steps import (
    ContinueAsNewStep,
    GatherStep,
    InvokeStep,
    LeafStep,
    RaceStep,
    Step,
    Winner,
    is_step,
)
from ._workflow import Workflow
from .exceptions import (
    Cancelled,
    NonDeterminismError,
    PayloadValidationError,
    StepCancelled,
    StepFailed,
    WorkflowDefinitionError,
)

__all__ = ["Completed", "ContinuedAsNew", "Decision", "Failed", "Pending", "Replay", "Waiting"]


@dataclass(frozen=True, slots=True)
class Pending:
    """A step the workflow waits on.

    Attributes:
        position: its journal position.
        step: the request, as the workflow built it now.
        record: its pending record, or None if never reached before.
    """

    position: int
    step: LeafStep
    record: StepRecord | None
    background: bool = False


@dataclass(frozen=True, slots=True)
class Waiting:
    """The workflow is blocked on ``request``; ``pending`` are the steps to carry on.

    ``pending`` holds ``request``'s unsettled steps and, after them, the
    losers of races run with ``cancel_losers=False`` that have not settled
    yet (``Pending.background``): they keep running, nobody waits on them.
    """

    request: Step[Any]
    pending: tuple[Pending, ...]

    @property
    def branches(self) -> tuple[Pending, ...]:
        """The unsettled steps of ``request`` itself, without background ones."""
        return tuple(p for p in self.pending if not p.background)


@dataclass(frozen=True, slots=True)
class Completed:
    """The workflow returned; ``result`` is its JSON, ``value`` the decoded value."""

    result: str
    value: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """The workflow raised ``error`` (a step failure it did not catch, or its own)."""

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class ContinuedAsNew:
    """The workflow ended its run with ``ctx.continue_as_new``: a new run takes ``payload``."""

    payload: str


Decision: TypeAlias = Waiting | Completed | Failed | ContinuedAsNew

_PENDING = StepStatus.PENDING
_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED


class Replay:
    """One live execution of a workflow generator against its journal.

    Not thread-safe; one per run per wake-up (or kept warm across them).
    """

    __slots__ = (
        "_background",
        "_blocked",
        "_done",
        "_gen",
        "_last",
        "_now",
        "_records",
        "_replay_until",
        "_request_at",
        "_send",
        "_throw",
        "_tracker",
        "_writes",
        "context",
        "failed_at",
        "position",
        "workflow",
    )

    def __init__(
        self,
        workflow: Workflow[Any, Any],
        payload: str | bytes,
        info: RunInfo,
        journal: Iterable[StepRecord] = (),
    ) -> None:
        """Prepare the generator; nothing runs until ``advance``.

        Raises:
            PayloadValidationError: the payload does not fit the workflow's model.
        """
        self.workflow = workflow
        self._records: dict[int, StepRecord] = {record.position: record for record in journal}
        self._last = max(self._records, default=-1)
        # Positions below this were settled before this execution began: their
        # results are replayed, and `ctx.is_replaying` is true while they are.
        # Any record, settled or pending, means the code leading to it ran before.
        self._replay_until = self._last + 1
        self._now = info.started_at
        self.position = 0
        #: Where the request that the workflow failed on began (``resume``
        #: retries the failed steps from there); None until it fails.
        self.failed_at: int | None = None
        self._request_at = 0
        self._tracker = StepTracker()
        self._writes: list[StepRecord] = []
        self._background: dict[int, LeafStep] = {}
        self.context = Context(
            info,
            clock=self._clock,
            replaying=self._is_replaying,
            patches=self._patch,
            tracker=self._tracker,
        )
        value = decode(
            workflow.payload_adapter, payload, what=f"the payload of workflow {workflow.name!r}"
        )
        self._gen: Generator[Any, Any, Any] = workflow.fn(self.context, value)
        self._blocked: Step[Any] | None = None
        self._send: Any = None
        self._throw: BaseException | None = None
        self._done: Completed | Failed | ContinuedAsNew | None = None

    def _clock(self) -> datetime:
        return self._now

    def _is_replaying(self) -> bool:
        return self.position < self._replay_until

    @property
    def status(self) -> str | None:
        """The JSON of the latest ``ctx.set_status`` this execution reached (None: none yet)."""
        return self._tracker.status

    @property
    def records(self) -> dict[int, StepRecord]:
        """The journal as this execution knows it, by position."""
        return self._records

    def take_writes(self) -> list[StepRecord]:
        """The records the engine decided since the last call (race and patch markers).

        The caller stores them, in the transaction of the records it writes
        next; they are already part of this execution's journal.
        """
        writes, self._writes = self._writes, []
        return writes

    def _write(self, record: StepRecord) -> None:
        self._writes.append(record)
        self.settle(record)

    def _patch(self, patch_id: str, deprecated: bool) -> bool:
        """``ctx.patched``/``deprecate_patch``: decided by the record at this position."""
        position = self.position
        record = self._records.get(position)
        if record is not None:
            if record.kind == "patch" and record.name == patch_id:
                self.position = position + 1
                return True
            return False  # the run went past this point under the old code
        if deprecated:
            return True
        now = self._now
        self._write(
            StepRecord(
                position=position,
                kind="patch",
                name=patch_id,
                result="true",
                completed_at=now,
                started_at=now,
            )
        )
        self.position = position + 1
        return True

    def settle(self, record: StepRecord) -> None:
        """Add or replace the record at ``record.position`` (fresh results, new pending steps)."""
        self._records[record.position] = record
        self._last = max(self._last, record.position)

    def catch_up(self, records: Iterable[StepRecord]) -> None:
        """Settle records read back from the store, written by others since.

        Unlike ``settle`` (this execution's own results), steps settled
        elsewhere are replayed: ``ctx.is_replaying`` stays true until the
        workflow has passed them.
        """
        for record in records:
            self.settle(record)
            if record.position >= self._replay_until:
                self._replay_until = record.position + 1

    def advance(self) -> Decision:
        """Run the workflow as far as the journal allows.

        Raises:
            NonDeterminismError: the code asked for a different step than the
                journal records at some position, or finished before using
                every record.
        """
        if self._done is not None:
            return self._done
        gen = self._gen
        records = self._records
        tracker = self._tracker
        while True:
            request = self._blocked
            if request is None:
                tracker.live = True
                try:
                    if self._throw is not None:
                        exc, self._throw = self._throw, None
                        request = gen.throw(exc)
                    else:
                        value, self._send = self._send, None
                        request = gen.send(value)
                except StopIteration as stop:
                    tracker.live = False
                    if tracker.built:
                        return self._fail(_unyielded(tracker.built))
                    return self._finish(stop.value)
                except Cancelled as exc:
                    tracker.live = False
                    return self._fail(exc)
                except Exception as exc:
                    tracker.live = False
                    return self._fail(exc)
                tracker.live = False
                if not is_step(request):
                    self._throw = WorkflowDefinitionError(
                        f"workflow {self.workflow.name!r} yielded {request!r}; a workflow "
                        "yields steps built by its context: `x = yield from ctx.run(...)`"
                    )
                    continue
                if tracker.built:
                    _mark_yielded(tracker.built, request)
                if isinstance(request, ContinueAsNewStep):
                    return self._continue(request)
                self._blocked = request
                self._request_at = self.position
            position = self.position
            cls = request.__class__
            if cls is not GatherStep and cls is not RaceStep:  # one step: the common case
                leaf = cast("LeafStep", request)
                record = records.get(position)
                if record is None:
                    return self._wait(request, (Pending(position, leaf, None),))
                if record.kind != leaf.kind or record.name != leaf.name:
                    raise _mismatch(position, record, leaf)
                if record.status is _FAILED and leaf.__class__ is InvokeStep:
                    record = self._retry_child(leaf, record)
                if record.status is _PENDING:
                    return self._wait(request, (Pending(position, leaf, record),))
                self._blocked = None
                self.position = position + 1
                if record.completed_at is not None and record.completed_at > self._now:
                    self._now = record.completed_at
                if record.status is _COMPLETED:
                    self._send = self._decode(leaf, record)
                else:
                    self._throw = _step_failed(record)
                continue
            if cls is RaceStep:
                waiting = self._race(cast("RaceStep[Any]", request), position)
            else:
                waiting = self._gather(request, request.leaves, position)
            if waiting is not None:
                return waiting

    def _retry_child(self, leaf: LeafStep, record: StepRecord) -> StepRecord:
        """A failed child run under a retry policy: reopen the step for another child.

        The reopened record (pending, no child yet, due after the back-off)
        is the engine's own write; the runtime starts the next child when
        it is due. Otherwise the failure stands.
        """
        policy = cast("InvokeStep[Any]", leaf).retry
        error = record.error
        attempts = max(record.attempts, 1)
        if policy is None or error is None or not policy.retries_error(error, attempts):
            return record
        at = record.completed_at or self._now
        reopened = dataclasses.replace(
            record,
            status=_PENDING,
            key=None,
            attempts=attempts,
            completed_at=None,
            wake_at=at + policy.delay(attempts),
        )
        self._write(reopened)
        return reopened

    def _wait(self, request: Step[Any], pending: tuple[Pending, ...]) -> Waiting:
        if not self._background:
            return Waiting(request, pending)
        records = self._records
        background: list[Pending] = []
        for position, leaf in list(self._background.items()):
            record = records.get(position)
            if record is not None and record.status is not _PENDING:
                del self._background[position]  # settled: its result is not used
            else:
                background.append(Pending(position, leaf, record, background=True))
        return Waiting(request, pending + tuple(background))

    def _race(self, request: RaceStep[Any], position: int) -> Waiting | None:
        records = self._records
        leaves = request.branches
        end = position + len(leaves)
        pending: list[Pending] = []
        first: int | None = None
        for offset, leaf in enumerate(leaves):
            record = records.get(position + offset)
            if record is not None and (record.kind != leaf.kind or record.name != leaf.name):
                raise _mismatch(position + offset, record, leaf)
            if record is not None and record.status is _FAILED and leaf.__class__ is InvokeStep:
                record = self._retry_child(leaf, record)
            if record is None or record.status is _PENDING:
                pending.append(Pending(position + offset, leaf, record))
            elif first is None:
                first = offset
        marker = records.get(end)
        if marker is not None:
            if marker.kind != request.kind or marker.name != request.name:
                raise _mismatch(end, marker, request)
            index = _winner_index(marker, len(leaves))
        elif first is None:
            return self._wait(request, tuple(pending))
        else:
            index = first
            self._decide_race(request, position, index, pending)
        if not request.cancel_losers:
            for loser in pending:
                self._background[loser.position] = loser.step
        winner = records.get(position + index)
        if winner is None or winner.status is _PENDING:
            raise NonDeterminismError(
                f"position {end}: the journal says branch {index} won {request.describe()}, "
                "but that branch has not settled; the journal is inconsistent",
                position=end,
                recorded=f"race {request.name!r} won by branch {index}",
                current=request.describe(),
            )
        self._blocked = None
        self.position = end + 1
        if winner.completed_at is not None and winner.completed_at > self._now:
            self._now = winner.completed_at
        leaf = leaves[index]
        if winner.status is _COMPLETED:
            self._send = Winner(index, leaf.name, self._decode(leaf, winner))
        else:
            self._throw = _step_failed(winner)
        return None

    def _decide_race(
        self, request: RaceStep[Any], position: int, index: int, losers: list[Pending]
    ) -> None:
        """Record the winner after the branches; settle the pending losers as cancelled."""
        winner = self._records[position + index]
        at = max(self._now, winner.completed_at or self._now)
        error = ErrorInfo.from_exception(
            StepCancelled(f"{request.describe()} was won by {winner.describe()}")
        )
        for loser in losers if request.cancel_losers else ():
            base = loser.record or StepRecord(
                position=loser.position,
                kind=loser.step.kind,
                name=loser.step.name,
                attempts=0,
                started_at=at,
            )
            self._write(
                dataclasses.replace(
                    base,
                    status=StepStatus.FAILED,
                    error=error,
                    completed_at=at,
                    wake_at=None,
                    lease_until=None,
                    lease_owner=None,
                )
            )
        self._write(
            StepRecord(
                position=position + len(request.branches),
                kind=request.kind,
                name=request.name,
                result=str(index),
                completed_at=at,
                started_at=at,
            )
        )

    def _gather(
        self, request: Step[Any], leaves: tuple[LeafStep, ...], position: int
    ) -> Waiting | None:
        records = self._records
        pending: list[Pending] = []
        settled: list[StepRecord] = []
        for offset, leaf in enumerate(leaves):
            record = records.get(position + offset)
            if record is not None and (record.kind != leaf.kind or record.name != leaf.name):
                raise _mismatch(position + offset, record, leaf)
            if record is not None and record.status is _FAILED and leaf.__class__ is InvokeStep:
                record = self._retry_child(leaf, record)
            if record is None or record.status is _PENDING:
                pending.append(Pending(position + offset, leaf, record))
            else:
                settled.append(record)
        if pending:
            return self._wait(request, tuple(pending))
        self._blocked = None
        self.position = position + len(leaves)
        for record in settled:
            if record.completed_at is not None and record.completed_at > self._now:
                self._now = record.completed_at
        failed = next(
            (r for r in settled if r.error is not None and r.error.is_cancellation), None
        ) or next((r for r in settled if r.status is not _COMPLETED), None)
        if failed is not None:
            self._throw = _step_failed(failed)
        else:
            self._send = tuple(
                self._decode(leaf, record) for leaf, record in zip(leaves, settled, strict=True)
            )
        return None

    def _decode(self, leaf: LeafStep, record: StepRecord) -> Any:
        try:
            # The core validator directly: TypeAdapter.validate_json adds a
            # Python-level call per step, and this is the replay hot path.
            return leaf.adapter.validator.validate_json(record.result or "null")
        except pydantic.ValidationError as exc:
            raise NonDeterminismError(
                f"position {record.position}: the result recorded for {record.describe()} no "
                f"longer fits the step's declared type; the code changed incompatibly ({exc})",
                position=record.position,
                recorded=record.describe(),
                current=leaf.describe(),
            ) from exc

    def _check_consumed(self) -> None:
        if self._last >= self.position:
            record = self._records.get(self.position)
            recorded = record.describe() if record else "a step"
            raise NonDeterminismError(
                f"position {self.position}: the journal records {recorded}, but the workflow "
                f"{self.workflow.name!r} no longer reaches it (it ended there); the code changed",
                position=self.position,
                recorded=recorded,
                current=None,
            )

    def _finish(self, value: Any) -> Decision:
        self._check_consumed()
        try:
            result = encode(
                self.workflow.result_adapter,
                value,
                what=f"the result of workflow {self.workflow.name!r}",
            )
        except PayloadValidationError as exc:
            return self._fail(exc)
        done = Completed(result, decode(self.workflow.result_adapter, result, what="result"))
        self._done = done
        return done

    def _continue(self, request: ContinueAsNewStep) -> Decision:
        if tracker_built := self._tracker.built:
            return self._fail(_unyielded(tracker_built))
        self._check_consumed()
        self._done = ContinuedAsNew(request.payload)
        return self._done

    def _fail(self, exc: BaseException) -> Decision:
        if not isinstance(exc, NonDeterminismError):
            self._check_consumed()
        self.failed_at = self._request_at
        self._done = Failed(ErrorInfo.from_exception(exc))
        return self._done

    def discard(self) -> None:
        """Let the generator go without letting it act.

        Python runs a dropped generator's ``finally`` blocks (with
        ``GeneratorExit``) when it is collected; this does it now, where it
        is safe: a step the workflow yields from a ``finally`` is never
        carried out, and nothing it raises reaches the caller.
        """
        self._tracker.live = False
        try:
            self._gen.close()
        except BaseException:  # a finally that yields or raises: it is not ours to report
            pass
        finally:
            self._tracker.built.clear()


def _winner_index(marker: StepRecord, branches: int) -> int:
    text = marker.result or ""
    if not text.isdigit() or int(text) >= branches:
        raise NonDeterminismError(
            f"position {marker.position}: {marker.describe()} records winner {text!r}, which is "
            f"not one of its {branches} branches; the journal is inconsistent",
            position=marker.position,
            recorded=marker.describe(),
            current=None,
        )
    return int(text)


def _mismatch(position: int, record: StepRecord, leaf: Step[Any]) -> NonDeterminismError:
    return NonDeterminismError(
        f"position {position} was {record.describe()} in the journal, "
        f"now the workflow asks for {leaf.describe()}; the workflow code changed in a way "
        "that replaying its runs cannot follow",
        position=position,
        recorded=record.describe(),
        current=leaf.describe(),
    )


def _unyielded(built: list[Step[Any]]) -> WorkflowDefinitionError:
    names = ", ".join(step.describe() for step in built)
    built.clear()
    return WorkflowDefinitionError(
        f"the workflow built {names} but never yielded it, so it never ran; write "
        "`x = yield from ctx.run(...)` (a step is carried out only when yielded)"
    )


def _mark_yielded(built: list[Step[Any]], request: Step[Any]) -> None:
    """Strike ``request`` (and its branches) off the steps built but not yet yielded."""
    if len(built) == 1 and built[0] is request:
        built.clear()
        return
    leaves = request.leaves if isinstance(request, (GatherStep, RaceStep)) else (request,)
    yielded = {id(request), *(id(leaf) for leaf in leaves)}
    # A step re-built by ``.options(...)`` keeps its kind and name.
    names = {(leaf.kind, leaf.name) for leaf in leaves}
    built[:] = [
        s
        for s in built
        if id(s) not in yielded
        and (s.kind, s.name) not in names
        and not isinstance(s, (GatherStep, RaceStep))
    ]


def _step_failed(record: StepRecord) -> BaseException:
    error = record.error or ErrorInfo(type="hookflow_gen.UnknownError", message="no error recorded")
    if error.is_cancellation:
        return Cancelled(error.message)
    return StepFailed(
        step_name=record.name, position=record.position, error=error, attempts=record.attempts
    )
