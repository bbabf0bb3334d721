"""The replay engine: pure, no I/O, no clock of its own.

Given a workflow, its payload and its run's journal, ``Replay`` drives a fresh
generator: recorded results are sent back in order (decoded exactly as fresh
ones), recorded failures are thrown in as ``StepFailed``, and the first step
without a settled record is returned as a ``Waiting`` decision. The runtime
then settles that step (runs it, waits for its timer or event) and calls
``settle`` and ``advance`` again: the generator stays alive, so nothing is
replayed twice within one wake-up.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, cast

import pydantic

from ._codec import decode, encode
from ._context import Context, RunInfo, StepTracker
from ._journal import ErrorInfo, StepRecord, StepStatus
from ._steps import GatherStep, LeafStep, Step, is_step
from ._workflow import Workflow
from .exceptions import (
    Cancelled,
    NonDeterminismError,
    PayloadValidationError,
    StepFailed,
    WorkflowDefinitionError,
)

__all__ = ["Completed", "Decision", "Failed", "Pending", "Replay", "Waiting"]


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


@dataclass(frozen=True, slots=True)
class Waiting:
    """The workflow is blocked on ``request``; ``pending`` are its unsettled steps."""

    request: Step[Any]
    pending: tuple[Pending, ...]


@dataclass(frozen=True, slots=True)
class Completed:
    """The workflow returned; ``result`` is its JSON, ``value`` the decoded value."""

    result: str
    value: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """The workflow raised ``error`` (a step failure it did not catch, or its own)."""

    error: ErrorInfo


Decision: TypeAlias = Waiting | Completed | Failed

_PENDING = StepStatus.PENDING
_COMPLETED = StepStatus.COMPLETED


class Replay:
    """One live execution of a workflow generator against its journal.

    Not thread-safe; one per run per wake-up (or kept warm across them).
    """

    __slots__ = (
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
        self.context = Context(
            info, clock=self._clock, replaying=self._is_replaying, tracker=self._tracker
        )
        value = decode(
            workflow.payload_adapter, payload, what=f"the payload of workflow {workflow.name!r}"
        )
        self._gen: Generator[Any, Any, Any] = workflow.fn(self.context, value)
        self._blocked: Step[Any] | None = None
        self._send: Any = None
        self._throw: BaseException | None = None
        self._done: Completed | Failed | None = None

    def _clock(self) -> datetime:
        return self._now

    def _is_replaying(self) -> bool:
        return self.position < self._replay_until

    @property
    def records(self) -> dict[int, StepRecord]:
        """The journal as this execution knows it, by position."""
        return self._records

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
                self._blocked = request
                self._request_at = self.position
            position = self.position
            if request.__class__ is not GatherStep:  # a single step: the common case, kept lean
                leaf = cast("LeafStep", request)
                record = records.get(position)
                if record is None:
                    return Waiting(request, (Pending(position, leaf, None),))
                if record.kind != leaf.kind or record.name != leaf.name:
                    raise _mismatch(position, record, leaf)
                if record.status is _PENDING:
                    return Waiting(request, (Pending(position, leaf, record),))
                self._blocked = None
                self.position = position + 1
                if record.completed_at is not None and record.completed_at > self._now:
                    self._now = record.completed_at
                if record.status is _COMPLETED:
                    self._send = self._decode(leaf, record)
                else:
                    self._throw = _step_failed(record)
                continue
            waiting = self._gather(request, request.leaves, position)
            if waiting is not None:
                return waiting

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
            if record is None or record.status is _PENDING:
                pending.append(Pending(position + offset, leaf, record))
            else:
                settled.append(record)
        if pending:
            return Waiting(request, tuple(pending))
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


def _mismatch(position: int, record: StepRecord, leaf: LeafStep) -> NonDeterminismError:
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
    leaves = request.leaves if isinstance(request, GatherStep) else (request,)
    yielded = {id(request), *(id(leaf) for leaf in leaves)}
    # A step re-built by ``.options(...)`` keeps its kind and name.
    names = {(leaf.kind, leaf.name) for leaf in leaves}
    built[:] = [
        s
        for s in built
        if id(s) not in yielded and (s.kind, s.name) not in names and not isinstance(s, GatherStep)
    ]


def _step_failed(record: StepRecord) -> BaseException:
    error = record.error or ErrorInfo(type="hookflow_gen.UnknownError", message="no error recorded")
    if error.is_cancellation:
        return Cancelled(error.message)
    return StepFailed(
        step_name=record.name, position=record.position, error=error, attempts=record.attempts
    )
