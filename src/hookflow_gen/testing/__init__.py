"""Test helpers for workflows, shipped for users' own tests.

Ways to test a workflow, from the smallest to the most complete:

- ``context``: the ``Context`` to call a workflow function with, to step
  its raw generator with ``next``/``send``/``throw`` (``answer``,
  ``step_failed`` and ``finish`` keep that typed).
- ``Stepper``: step one workflow by hand. Look at each step it asks for,
  send back typed results or failures, read its final result. No runtime,
  no clock, no database.
- ``WorkflowEnvironment``: run workflows to completion in-process on the real
  runtime, with an in-memory journal and a fake clock (sleeps and timeouts
  pass instantly), stubbed steps, and events you send.
- ``replay``: replay a stored journal against the current code and report
  non-determinism, the check to run before deploying a workflow change.
- ``check_resumable``: crash a run after every journal record, resume it
  on a fresh runtime, and fail if it ends differently; warns about step
  names used twice and reads of the wall clock or ``random``.

``hookflow_gen.testing.qstash`` has a QStash-compatible server for tests
that go over HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Generic, TypeVar, cast, overload

from .._client import RunHandle, use_runtime
from .._codec import adapter_for, decode, encode
from .._context import RunInfo
from .._engine import Completed, ContinuedAsNew, Decision, Failed, Replay, Waiting
from .._journal import ErrorInfo, StepRecord, StepStatus
from .._runtime import Runtime
from .._scheduler import InlineScheduler
from .._steps import EventStep, LeafStep, ReplyStep, RetryPolicy, SleepStep, Step
from .._store import MemoryStore
from .._updates import Update, update_key
from .._workflow import Workflow
from ..exceptions import HookflowError, UpdateRejected, WorkflowDefinitionError, WorkflowFailed
from ._by_hand import answer as answer
from ._by_hand import context as context
from ._by_hand import finish as finish
from ._by_hand import step_failed as step_failed
from ._env import EPOCH as EPOCH
from ._env import FakeClock as FakeClock
from ._env import Stub as Stub
from ._env import StubRuntime
from ._resumable import Effect as Effect
from ._resumable import ResumabilityError as ResumabilityError
from ._resumable import ResumabilityWarning as ResumabilityWarning
from ._resumable import ResumeProblem as ResumeProblem
from ._resumable import ResumeReport as ResumeReport
from ._resumable import check_resumable as check_resumable

__all__ = [
    "Effect",
    "FakeClock",
    "ReplayResult",
    "ResumabilityError",
    "ResumabilityWarning",
    "ResumeProblem",
    "ResumeReport",
    "Stepper",
    "WorkflowEnvironment",
    "answer",
    "check_resumable",
    "context",
    "finish",
    "replay",
    "step_failed",
]

M = TypeVar("M")
R = TypeVar("R")
T = TypeVar("T")
Q = TypeVar("Q")
A = TypeVar("A")

_NO_PAYLOAD: Final = object()


class Stepper(Generic[R]):
    """Step a workflow by hand, through the real replay engine.

    Example::

        s = Stepper(checkout, Order(order_id=7, amount_cents=1200))
        assert s.step.kind == "run" and s.step.name == "charge"
        s.send(Charge(charge_id="ch_1"))
        s.send(None)                      # the sleep
        s.fail(CardDeclined("no funds"))  # throws StepFailed into the workflow
        assert s.result() == Receipt(...)

    Values are sent through the same JSON encode/decode as in production, so
    a value that does not fit the step's declared type is an error here too.
    Sending a sleep moves ``now`` to its end.
    """

    def __init__(
        self,
        workflow: Workflow[M, R],
        payload: M,
        *,
        run_id: str = "test-run",
        started_at: datetime = EPOCH,
    ) -> None:
        self.workflow: Workflow[Any, R] = workflow
        self.now: datetime = started_at
        self.history: list[StepRecord] = []
        #: The replies the workflow made, by update id (recorded as it reaches them).
        self.replies: dict[str, ReplyStep] = {}
        self._updates_sent = 0
        info = RunInfo(run_id=run_id, workflow_name=workflow.name, started_at=started_at)
        payload_json = encode(workflow.payload_adapter, payload, what="the payload")
        self._replay = Replay(workflow, payload_json, info)
        self._decision: Decision = self._advance()

    def _advance(self) -> Decision:
        while True:
            decision = self._replay.advance()
            self.history.extend(self._replay.take_writes())  # race and patch markers
            if not isinstance(decision, Waiting):
                return decision
            replies = [p for p in decision.branches if isinstance(p.step, ReplyStep)]
            if not replies:
                return decision
            # A reply never waits: recorded at once, as the runtime records it.
            for pending in replies:
                step = cast("ReplyStep", pending.step)
                record = StepRecord(
                    position=pending.position,
                    kind=step.kind,
                    name=step.name,
                    result="null",
                    completed_at=self.now,
                    key=step.update_id,
                )
                if step.update_id in self.replies:
                    exc = WorkflowDefinitionError(
                        f"update {step.update_id!r} ({step.name!r}) was answered already; "
                        "an update is answered once"
                    )
                    record = dataclasses.replace(
                        record,
                        status=StepStatus.FAILED,
                        result=None,
                        error=ErrorInfo.from_exception(exc),
                    )
                else:
                    self.replies[step.update_id] = step
                self.history.append(record)
                self._replay.settle(record)

    @property
    def context(self) -> Any:
        """The ``Context`` the workflow runs with."""
        return self._replay.context

    @property
    def finished(self) -> bool:
        """True once the workflow returned, raised or continued as new."""
        return not isinstance(self._decision, Waiting)

    def custom_status(self, model: type[T]) -> T | None:
        """The latest ``ctx.set_status`` the workflow reached, validated as ``model``.

        None until the workflow sets one. The value went through the same
        JSON dump and validation as a stored status.
        """
        status = self._replay.status
        if status is None:
            return None
        value: T | None = decode(adapter_for(model | None), status, what="the custom status")
        return value

    @property
    def continued(self) -> bool:
        """True once the workflow ended its run with ``ctx.continue_as_new``."""
        return isinstance(self._decision, ContinuedAsNew)

    def continued_payload(self) -> Any:
        """The payload the workflow continued as new with, decoded as its payload type.

        Raises:
            HookflowError: the workflow did not continue as new.
        """
        decision = self._decision
        if not isinstance(decision, ContinuedAsNew):
            raise HookflowError(f"the workflow did not continue as new: {decision!r}")
        return decode(self.workflow.payload_adapter, decision.payload, what="the new payload")

    @property
    def step(self) -> Step[Any]:
        """The step the workflow waits on (a ``GatherStep`` for a gather).

        Raises:
            HookflowError: the workflow has finished.
        """
        if not isinstance(self._decision, Waiting):
            raise HookflowError(f"the workflow has finished: {self._decision!r}")
        return self._decision.request

    def send(self, value: object = None, *, attempts: int = 1) -> Stepper[R]:
        """Complete the current step with ``value`` (a tuple for a gather).

        An exception instance in place of a value fails that step (or
        branch): it is thrown into the workflow as ``StepFailed``.
        """
        if not isinstance(self._decision, Waiting):
            raise HookflowError("the workflow has finished; there is no step to send to")
        pending = self._decision.branches
        if len(pending) == 1 and not _is_gather(self._decision.request):
            values: Sequence[object] = (value,)
        elif isinstance(value, tuple) and len(cast("tuple[object, ...]", value)) == len(pending):
            values = cast("tuple[object, ...]", value)
        else:
            raise HookflowError(
                f"{self._decision.request.describe()} has {len(pending)} branches: "
                f"send a tuple of {len(pending)} values"
            )
        end = self.now
        for item, waiting in zip(values, pending, strict=True):
            record = self._record(waiting.position, waiting.step, item, attempts)
            if record.completed_at and record.completed_at > end:
                end = record.completed_at
            self.history.append(record)
            self._replay.settle(record)
        self.now = end
        self._decision = self._advance()
        return self

    def send_branch(self, index: int, value: object = None, *, attempts: int = 1) -> Stepper[R]:
        """Settle only branch ``index`` of the current gather or race with ``value``.

        For a race, the branch settled first wins; an exception fails it.
        """
        if not isinstance(self._decision, Waiting):
            raise HookflowError("the workflow has finished; there is no step to send to")
        branches = self._decision.request.leaves
        if not 0 <= index < len(branches):
            raise HookflowError(
                f"{self._decision.request.describe()} has branches 0 to {len(branches) - 1}"
            )
        target = branches[index]
        waiting = next((p for p in self._decision.branches if p.step is target), None)
        if waiting is None:
            raise HookflowError(f"branch {index} ({target.describe()}) has settled already")
        record = self._record(waiting.position, waiting.step, value, attempts)
        self.history.append(record)
        self._replay.settle(record)
        if record.completed_at and record.completed_at > self.now:
            self.now = record.completed_at
        self._decision = self._advance()
        return self

    def update(self, update: Update[Q, A], request: Q, *, update_id: str | None = None) -> A:
        """Deliver an update to the ``ctx.receive(update)`` the workflow waits on; its answer.

        The request is validated as the update's request type. The workflow
        then runs on; the answer is what it replies before it waits on
        anything else (read a later one with ``answer``).

        Raises:
            HookflowError: the workflow does not wait on this update now, or
                waits on another step without having answered it.
            UpdateRejected: the workflow refused the update.
        """
        if not isinstance(self._decision, Waiting):
            raise HookflowError("the workflow has finished; it receives no update")
        key = update_key(self._replay.context.run_id, update.name)
        waiting = next(
            (
                p
                for p in self._decision.branches
                if isinstance(p.step, EventStep) and p.step.key == key
            ),
            None,
        )
        if waiting is None:
            raise HookflowError(
                f"the workflow waits on {self._decision.request.describe()}, not on "
                f"ctx.receive({update.name!r})"
            )
        self._updates_sent += 1
        update_id = update_id if update_id is not None else f"update-{self._updates_sent}"
        what = f"the request of update {update.name!r}"
        checked = update.request_adapter.validate_json(
            encode(update.request_adapter, request, what=what)
        )
        received = update.received_type(id=update_id, name=update.name, request=checked)
        record = self._record(waiting.position, waiting.step, received, 1)
        self.history.append(record)
        self._replay.settle(record)
        self._decision = self._advance()
        if update_id not in self.replies:
            waits = (
                self._decision.request.describe()
                if isinstance(self._decision, Waiting)
                else "nothing (it finished)"
            )
            raise HookflowError(
                f"the workflow received update {update.name!r} ({update_id}) and now waits on "
                f"{waits} without answering it; step on, then read answer({update.name!r}, ...)"
            )
        return self.answer(update, update_id)

    def answer(self, update: Update[Any, A], update_id: str) -> A:
        """The workflow's answer to the update ``update_id``.

        Raises:
            UpdateRejected: the workflow refused it.
            HookflowError: it has not answered it (yet).
        """
        reply = self.replies.get(update_id)
        if reply is None:
            raise HookflowError(f"the workflow has not answered update {update_id!r}")
        run_id = self._replay.context.run_id
        if reply.reason is not None:
            raise UpdateRejected(
                f"the workflow rejected update {update.name!r} ({update_id}): {reply.reason}",
                run_id=run_id,
                update_id=update_id,
                reason=reply.reason,
            )
        value: A = update.answer_adapter.validate_json(reply.answer or "null")
        return value

    def fail(self, error: BaseException | str, *, attempts: int = 1) -> Stepper[R]:
        """Fail the current step (every branch of a gather) with ``error``."""
        exc = error if isinstance(error, BaseException) else Exception(error)
        if isinstance(self._decision, Waiting) and _is_gather(self._decision.request):
            return self.send(tuple(exc for _ in self._decision.branches), attempts=attempts)
        return self.send(exc, attempts=attempts)

    def _record(self, position: int, step: LeafStep, value: object, attempts: int) -> StepRecord:
        completed_at = self.now
        if isinstance(step, SleepStep):
            completed_at = step.until or self.now + (step.duration or timedelta(0))
        base = StepRecord(
            position=position,
            kind=step.kind,
            name=step.name,
            attempts=attempts,
            completed_at=completed_at,
        )
        if isinstance(value, BaseException):
            return dataclasses.replace(
                base, status=StepStatus.FAILED, error=ErrorInfo.from_exception(value)
            )
        result = encode(step.adapter, value, what=f"the value sent for {step.describe()}")
        return dataclasses.replace(base, result=result)

    def result(self) -> R:
        """The workflow's typed result.

        Raises:
            WorkflowFailed: the workflow raised (``.error`` says what).
            HookflowError: it has not finished yet.
        """
        decision = self._decision
        if isinstance(decision, Completed):
            value: R = decision.value
            return value
        if isinstance(decision, Failed):
            raise WorkflowFailed(self._replay.context.run_id, decision.error)
        if isinstance(decision, ContinuedAsNew):
            raise HookflowError(
                "the workflow continued as new (see continued_payload()); its result is the "
                "new run's: step a new Stepper with that payload"
            )
        raise HookflowError(f"the workflow still waits on {decision.request.describe()}")

    @property
    def error(self) -> ErrorInfo | None:
        """The error the workflow raised, if it failed."""
        return self._decision.error if isinstance(self._decision, Failed) else None


def _is_gather(step: Step[Any]) -> bool:
    return step.kind in ("gather", "race")


class WorkflowEnvironment:
    """Run workflows to completion in-process: real runtime, memory store, fake clock.

    Inside ``with env:`` the environment's runtime is the current one, so
    ``workflow.start(...)``, ``hookflow_gen.notify`` and ``cancel`` use it.
    A start runs the workflow at once until it finishes or waits for an
    event; sleeps, retry back-offs and timeouts pass instantly on the fake
    clock (``auto_advance=False`` keeps the clock still until ``advance``).

    Args:
        stubs: step name to a stub: a value (the step's result), an
            exception (the step raises it), or a callable taking the step
            function's arguments (a ``call`` step's stub takes the step).
            Stubs apply to every run in the environment.
        start: the fake clock's start time.
        auto_advance: let timers fire at once by moving the clock.
        default_retry: the runtime's default retry policy.
    """

    def __init__(
        self,
        *,
        stubs: Mapping[str, Stub] | None = None,
        start: datetime = EPOCH,
        auto_advance: bool = True,
        default_retry: RetryPolicy | None = None,
    ) -> None:
        self.clock: FakeClock = FakeClock(start)
        self.store: MemoryStore = MemoryStore()
        self.scheduler: InlineScheduler = InlineScheduler(auto_advance=auto_advance)
        self.runtime: Runtime = StubRuntime(
            dict(stubs or {}),
            store=self.store,
            scheduler=self.scheduler,
            clock=self.clock,
            default_retry=default_retry,
        )
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> WorkflowEnvironment:
        self._stack.enter_context(use_runtime(self.runtime))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        self.runtime.close()

    def stub(self, name: str, stub: Stub) -> None:
        """Stub the steps named ``name`` from now on."""
        assert isinstance(self.runtime, StubRuntime)
        self.runtime.stubs[name] = stub

    def start(
        self, workflow: Workflow[M, R], payload: M, *, run_id: str | None = None
    ) -> RunHandle[R]:
        """Start a run and drive it as far as it goes now."""
        with use_runtime(self.runtime):
            return workflow.start(payload, run_id=run_id)

    def run(self, workflow: Workflow[M, R], payload: M) -> R:
        """Start a run and return its result (it must finish without outside events)."""
        return self.start(workflow, payload).result()

    def notify(self, key: str, payload: object) -> int:
        """Send an event and drive the runs it wakes."""
        return self.runtime.notify(key, payload)

    def advance(self, delta: timedelta | float) -> None:
        """Move the fake clock and run every wake-up that became due."""
        self.clock.advance(delta)
        self.scheduler.drain()

    def journal(self, run_id: str) -> list[StepRecord]:
        """The run's journal."""
        return self.store.steps(run_id)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What replaying a stored journal against the current code gave.

    Attributes:
        decision: where the workflow stands after the journal (completed,
            failed, or waiting on a step).
        replayed: how many journal records the code consumed.
    """

    decision: Decision
    replayed: int

    @property
    def finished(self) -> bool:
        """True if the journal takes the workflow to its end."""
        return not isinstance(self.decision, Waiting)


@overload
def replay(
    workflow: Workflow[M, Any],
    payload: M,
    journal: Iterable[StepRecord],
    *,
    run_id: str = ...,
    started_at: datetime = ...,
) -> ReplayResult: ...
@overload
def replay(
    workflow: Workflow[Any, Any],
    *,
    journal: Iterable[StepRecord],
    payload_json: str,
    run_id: str = ...,
    started_at: datetime = ...,
) -> ReplayResult: ...
def replay(
    workflow: Workflow[Any, Any],
    payload: object = _NO_PAYLOAD,
    journal: Iterable[StepRecord] | None = None,
    *,
    payload_json: str | None = None,
    run_id: str = "replay",
    started_at: datetime = EPOCH,
) -> ReplayResult:
    """Replay a stored journal against the current workflow code.

    Args:
        workflow: the workflow as the code defines it now.
        payload: the run's payload, as a value of the workflow's payload type
            (a ``str`` here is a ``str`` payload, never JSON).
        journal: the run's stored step records.
        payload_json: instead of ``payload``, the payload's stored JSON text
            (``RunState.payload``).

    Raises:
        NonDeterminismError: the code no longer follows the journal; the
            message names the position, what was recorded and what the code
            asks for now.
        TypeError: neither or both of ``payload`` and ``payload_json`` given.
    """
    if journal is None:
        raise TypeError("replay() needs the journal")
    if (payload is _NO_PAYLOAD) == (payload_json is None):
        raise TypeError("replay() takes a payload or payload_json=, exactly one of them")
    text = (
        payload_json
        if payload_json is not None
        else encode(workflow.payload_adapter, payload, what="the payload")
    )
    info = RunInfo(run_id=run_id, workflow_name=workflow.name, started_at=started_at)
    records = list(journal)
    execution = Replay(workflow, text, info, records)
    decision = execution.advance()
    return ReplayResult(decision, execution.position)
