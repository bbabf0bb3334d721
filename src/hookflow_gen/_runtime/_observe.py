"""What the runtime tells the world as it goes: run and step events, trace spans.

The runtime knows neither Django nor OpenTelemetry. It reports through two
optional seams of ``Runtime``, both None unless something fills them:

- ``observer``, an ``Observer``: told each event (a run started, a step
  completed, an attempt failed, a run finished) *after* the transaction that
  made the change commits, and never for a change that rolled back. The
  Django app fills it with the signals of ``hookflow_gen.django.signals``.
- ``tracer``, a ``Tracer``: opens a span around each tick and each step
  attempt, parented on the trace context stored with the run at ``start``
  (``hookflow_gen._tracing`` on OpenTelemetry).

With both None the hot path pays one ``is None`` test per place, and an
``Observer`` is asked ``wants(kind)`` before an event is built, so one with
no receivers costs a method call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeAlias

from .._journal import ErrorInfo, StepRecord
from .._store import RunState, RunStatus

__all__ = [
    "AttemptSpan",
    "Observer",
    "RunEvent",
    "RunFinished",
    "RunStarted",
    "StepCompleted",
    "StepFailed",
    "TickSpan",
    "Tracer",
]


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run was created (``start``, or a child run of ``invoke``).

    Attributes:
        run_id: the new run.
        workflow: its workflow's name.
        created_at: when it was created.
        parent_run_id: for a child run, the parent's id; else None.
    """

    run_id: str
    workflow: str
    created_at: datetime
    parent_run_id: str | None


@dataclass(frozen=True, slots=True)
class StepCompleted:
    """A step settled with a result (a function, a call, a sleep's end, an event, a child).

    Attributes:
        run_id: the run.
        workflow: its workflow's name.
        step_name: the step's name in the workflow code.
        kind: ``"run"``, ``"call"``, ``"sleep"``, ``"event"`` or ``"invoke"``.
        position: the step's journal position.
        attempt: the attempt that completed it (1 for the first try).
        started_at: when the workflow first reached the step.
        completed_at: when it completed.
        result: the result as JSON text.
    """

    run_id: str
    workflow: str
    step_name: str
    kind: str
    position: int
    attempt: int
    started_at: datetime | None
    completed_at: datetime
    result: str | None


@dataclass(frozen=True, slots=True)
class StepFailed:
    """One attempt of a step failed: sent for every failed attempt, retried or not.

    Attributes:
        run_id: the run.
        workflow: its workflow's name.
        step_name: the step's name in the workflow code.
        kind: the step's kind (``"run"``, ``"call"``, ...).
        position: the step's journal position.
        attempt: the attempt that failed (1 for the first try).
        error: what it failed with.
        will_retry: True if the retry policy tries the step again (at
            ``retry_at``); False if the step failed for good, and its
            ``StepFailed`` is thrown into the workflow.
        retry_at: when the next attempt is due, or None.
        failed_at: when the attempt was recorded as failed.
    """

    run_id: str
    workflow: str
    step_name: str
    kind: str
    position: int
    attempt: int
    error: ErrorInfo
    will_retry: bool
    retry_at: datetime | None
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run reached a final state.

    Attributes:
        run_id: the run.
        workflow: its workflow's name.
        status: ``COMPLETED``, ``FAILED``, ``CANCELLED``, or ``CONTINUED``
            (``ctx.continue_as_new``: a ``RunStarted`` for the next run of
            the chain comes with it).
        finished_at: when it finished.
        result: the result as JSON text, for a completed run.
        error: what failed it, for a failed run.
    """

    run_id: str
    workflow: str
    status: RunStatus
    finished_at: datetime
    result: str | None
    error: ErrorInfo | None


#: Every event an ``Observer`` is told.
RunEvent: TypeAlias = RunStarted | StepCompleted | StepFailed | RunFinished


class Observer(Protocol):
    """Told the runtime's events once the transaction that made them commits."""

    def wants(self, kind: type[RunEvent]) -> bool:
        """Whether events of ``kind`` are wanted now (asked before one is built)."""
        ...

    def observe(self, event: RunEvent) -> None:
        """Handle one event, after its commit; an exception here is logged, not raised."""
        ...


class TickSpan(Protocol):
    """The span of one tick, begun once the tick has read its run."""

    def begin(self, run: RunState) -> None:
        """Start the span under the run's stored trace context (once; later calls do nothing)."""
        ...

    def end(self, status: RunStatus | None, steps_run: int, error: BaseException | None) -> None:
        """End the span with what the tick came to (``status`` None: the tick raised)."""
        ...


class AttemptSpan(Protocol):
    """The span of one step attempt."""

    def settle(self, error: BaseException | None) -> None:
        """Record the attempt's outcome: completed (None), or failed with ``error``."""
        ...


class Tracer(Protocol):
    """Opens spans for ticks and step attempts, and carries a trace into new runs."""

    def inject(self) -> str | None:
        """The current trace context as a W3C ``traceparent``, to store with a new run."""
        ...

    def tick(self, run_id: str) -> TickSpan | None:
        """A span for a tick of ``run_id``, begun by ``TickSpan.begin``.

        None when nothing would record it (no tracing backend set up): the
        tick and its attempts then open no span at all.
        """
        ...

    def attempt(
        self, run: RunState, record: StepRecord, position: int
    ) -> contextlib.AbstractContextManager[AttemptSpan]:
        """A span around one attempt of the claimed step ``record``, current inside the block."""
        ...
