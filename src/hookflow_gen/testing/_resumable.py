"""``check_resumable``: crash a workflow at every journal position and compare.

The check runs the workflow once, uninterrupted, on a fresh in-memory
runtime, and records its journal, its outcome and every step function (or
stub) it called. Then, for every ``k`` from 0 to the journal's length, it
starts a *new* runtime whose store holds only the first ``k`` records, as a
process that crashed after writing them would leave it, and lets that
runtime finish the run: a cold replay (no warm generator is kept, not even
between the resumed run's own wake-ups), then the remaining steps. A
``gather`` is also resumed with each branch but the last left unsettled
while the branches after it are kept (their branches finish in any order).
The resumed process starts at the time the uninterrupted run first reached
a step it dropped, so steps run again settle at the same times. Each
resumed run must end like the uninterrupted one: the same outcome, the same
journal, and the same step calls for the positions it had to run again.

It also reports, as warnings, two things that make a workflow fragile even
when every restart passed: step names used twice in one run, and reads of
the wall clock or of ``random`` made by the workflow's body (see
``_probe.py`` for exactly what is watched).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from .._codec import decode, encode
from .._context import RunInfo
from .._engine import Replay, Waiting
from .._journal import ErrorInfo, StepRecord
from .._runtime import current_step
from .._scheduler import InlineScheduler
from .._steps import CallStep, Flow, LeafStep, RetryPolicy, RunStep
from .._store import MemoryStore, RunState, RunStatus
from .._updates import Update, update_key
from .._workflow import Workflow
from ..exceptions import HookflowError, WorkflowFailed
from ._env import EPOCH, FakeClock, Stub, StubRuntime
from ._probe import WATCHED, Probe, Read, Watched

__all__ = [
    "Effect",
    "ResumabilityError",
    "ResumabilityWarning",
    "ResumeProblem",
    "ResumeReport",
    "check_resumable",
]

M = TypeVar("M")
R = TypeVar("R")

Events = Mapping[str, object] | Iterable[tuple[str, object]]


@dataclass(frozen=True, slots=True)
class Effect:
    """A step function (or its stub) called during a check.

    Attributes:
        run_id: the run that called it (a child run has its own id).
        position: the step's journal position in that run.
        step: the step, as errors show it (``"run 'charge'"``).
        attempt: 1 on the first try, 2 on the first retry, ...
        args: the positional arguments (for a ``call`` step: method, URL, body).
        kwargs: the keyword arguments, as sorted pairs.
    """

    run_id: str
    position: int
    step: str
    attempt: int
    args: tuple[object, ...]
    kwargs: tuple[tuple[str, object], ...] = ()

    def describe(self) -> str:
        """``run 'charge' (run check, position 0, attempt 1) with (7, 1200)``."""
        arguments = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs])
        return (
            f"{self.step} (run {self.run_id}, position {self.position}, attempt {self.attempt}) "
            f"with ({arguments})"
        )


@dataclass(frozen=True, slots=True)
class ResumeProblem:
    """One way a resumed run did not end like the uninterrupted one.

    Attributes:
        position: where the run was resumed: how many journal records it
            kept, or None for a problem of the uninterrupted run itself.
        what: what differed: ``"outcome"``, ``"journal"``, ``"step calls"``,
            ``"resume"`` (resuming raised), or a warning's kind under ``strict``.
        detail: the difference, in words.
        missing: for a restart inside a ``gather``, the branch position left
            unsettled while the branches after it were kept (a crash while
            that branch still ran); None for a plain prefix of the journal.
    """

    position: int | None
    what: str
    detail: str
    missing: int | None = None

    def describe(self) -> str:
        """The problem in one paragraph."""
        if self.position is None:
            return f"{self.what}: {self.detail}"
        if self.missing is not None:
            where = (
                f"resumed with {self.position} journal records kept, all up to position "
                f"{self.position} but {self.missing} (a gather branch still running)"
            )
        elif self.position == 0:
            where = "restarted with an empty journal"
        else:
            where = (
                f"resumed after position {self.position - 1} "
                f"(the first {self.position} journal records kept)"
            )
        return f"{where}, the {self.what} differed: {self.detail}"


@dataclass(frozen=True, slots=True)
class ResumeReport(Generic[R]):
    """What ``check_resumable`` ran and found.

    Attributes:
        workflow: the workflow's name.
        status: how the uninterrupted run ended.
        error: its error, if it failed.
        journal: its journal.
        effects: every step function or stub it called, in order.
        restarts: how many resumed runs were compared (journal length + 1,
            plus one per gather branch but the last).
        warnings: the fragile spots found (also emitted as ``ResumabilityWarning``).
        watched: what the wall-clock and ``random`` check looked at.
        reads: the reads of the clock or ``random`` by the workflow body, with counts.
    """

    workflow: str
    status: RunStatus
    result_json: str | None
    error: ErrorInfo | None
    journal: tuple[StepRecord, ...]
    effects: tuple[Effect, ...]
    restarts: int
    warnings: tuple[str, ...]
    watched: str
    reads: Mapping[Read, int] = field(default_factory=dict[Read, int])
    _result: Any = field(default=None, repr=False)
    _run_id: str = field(default="", repr=False)

    @property
    def result(self) -> R:
        """The uninterrupted run's typed result.

        Raises:
            WorkflowFailed: the run failed (``.error`` says how).
        """
        if self.status is not RunStatus.COMPLETED:
            assert self.error is not None
            raise WorkflowFailed(self._run_id, self.error)
        value: R = self._result
        return value


class ResumabilityWarning(UserWarning):
    """A workflow passed ``check_resumable`` but has a fragile spot (see the message)."""


class ResumabilityError(HookflowError, AssertionError):
    """A workflow does not end the same way when resumed from some journal position.

    Also an ``AssertionError``, so test runners report it as a failed check.

    Attributes:
        problems: each difference found, with its position.
        report: the full report (the uninterrupted run's journal and calls).
    """

    def __init__(self, report: ResumeReport[Any], problems: tuple[ResumeProblem, ...]) -> None:
        self.report = report
        self.problems = problems
        shown = problems[:_SHOWN]
        lines = [
            f"workflow {report.workflow!r} does not resume the same way from every journal "
            f"position ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        ]
        lines += [f"- {problem.describe()}" for problem in shown]
        if len(problems) > len(shown):
            lines.append(f"- ... and {len(problems) - len(shown)} more (see .problems)")
        if report.reads:
            lines.append(_reads_warning(report.reads))
        super().__init__("\n".join(lines))


_SHOWN = 8


@dataclass(slots=True)
class _Execution:
    """One run of the workflow in a fresh runtime, and what it left."""

    run: RunState
    journal: list[StepRecord]
    effects: list[Effect]
    runs: dict[str, RunState]
    journals: dict[str, list[StepRecord]]
    answers: dict[_CallKey, _Answer]


_CallKey = tuple[str, int, str, int]


@dataclass(slots=True)
class _Answer:
    """What a step call of the uninterrupted run gave: a value or an exception."""

    effect: Effect
    value: Any = None
    error: BaseException | None = None


class _CheckRuntime(StubRuntime):
    """The stubbing test runtime, recording every step function it calls.

    The uninterrupted run records each call's answer; a resumed run that
    makes the same call (same run, position, attempt and arguments) gets
    the recorded answer instead of calling the function again, so a step
    that answers differently each time (a timestamp, a new id) does not make
    the runs differ: only the workflow's own code can.
    """

    def __init__(
        self, stubs: dict[str, Stub], answers: dict[_CallKey, _Answer] | None, **kwargs: Any
    ) -> None:
        super().__init__(stubs, **kwargs)
        self.effects: list[Effect] = []
        self.recording = answers is None
        self.answers: dict[_CallKey, _Answer] = {} if answers is None else answers

    def call_step(self, step: LeafStep, *, timeout: float | None = None) -> Any:
        info = current_step()
        if isinstance(step, RunStep):
            args: tuple[object, ...] = tuple(step.args)
            kwargs = tuple(sorted(step.kwargs.items()))
        elif isinstance(step, CallStep):
            args, kwargs = (step.method, step.url, step.body), ()
        else:
            args, kwargs = (), ()
        effect = Effect(info.run_id, info.position, step.describe(), info.attempt, args, kwargs)
        self.effects.append(effect)
        key = (info.run_id, info.position, effect.step, info.attempt)
        if not self.recording:
            recorded = self.answers.get(key)
            if recorded is not None and recorded.effect == effect:
                if recorded.error is not None:
                    raise recorded.error
                return recorded.value
        try:
            value = super().call_step(step, timeout=timeout)
        except Exception as exc:
            if self.recording:
                self.answers[key] = _Answer(effect, error=exc)
            raise
        if self.recording:
            self.answers[key] = _Answer(effect, value=value)
        return value


def check_resumable(
    workflow: Workflow[M, R],
    payload: M,
    *,
    stubs: Mapping[str, Stub] | None = None,
    events: Events | None = None,
    updates: Sequence[tuple[Update[Any, Any], object]] = (),
    run_id: str = "check",
    start: datetime = EPOCH,
    default_retry: RetryPolicy | None = None,
    strict: bool = False,
) -> ResumeReport[R]:
    """Check that ``workflow`` survives a crash after any journal record.

    Runs the workflow once to record its journal, then, for every position
    ``k``, resumes it on a fresh runtime holding only the first ``k``
    records (a cold replay), and compares the outcome, the journal and the
    step calls made for positions ``k`` on with the uninterrupted run's.
    Each ``gather`` is also resumed with one branch unsettled and the later
    ones kept.

    Everything runs in process: an in-memory store, a fake clock (sleeps,
    timeouts and retry back-offs pass at once), children started by
    ``ctx.invoke`` included. Step functions run for real unless stubbed,
    once per call of the uninterrupted run: a resumed run that makes the
    same call (same position, attempt and arguments) is given the answer
    recorded the first time, as a service that deduplicates by idempotency
    key would give it, so only the workflow's own code can make runs differ.

    While it runs, the clock and ``random`` functions it watches and the
    workflow registry are swapped process-wide (and restored after): do not
    run workflows in other threads of the same process meanwhile.

    Args:
        workflow: the workflow to check.
        payload: its payload.
        stubs: step name to a stub, as for ``WorkflowEnvironment``: a
            value, an exception to raise, or a callable taking the step
            function's arguments.
        events: the events the run receives, ``{key: payload}`` or
            ``[(key, payload), ...]`` for several on one key. They are
            waiting before the run starts, so each event step receives its
            event as soon as it is reached.
        updates: the updates the run receives, ``[(update, request), ...]``
            in order, waiting before it starts as events do (their answers
            are not checked: the journal and outcome are).
        run_id: the run's id (it seeds ``ctx.uuid4()`` and ``ctx.random()``).
        start: the fake clock's start time.
        default_retry: the runtime's default retry policy.
        strict: report the warnings (duplicate step names, reads of the
            clock or ``random``) as problems, raising ``ResumabilityError``.

    Returns:
        The report: the uninterrupted run's outcome (``.result`` typed),
        journal and step calls, and the warnings.

    Raises:
        ResumabilityError: some resumed run ended differently, or the
            uninterrupted run could not finish (it waits for an event that
            ``events`` does not give, or it failed its own replay).

    Warns:
        ResumabilityWarning: a step name is used twice in one run, or the
            workflow body read the wall clock or ``random`` (which functions
            are watched is in the message and in ``ResumeReport.watched``).
    """
    payload_json = encode(
        workflow.payload_adapter, payload, what=f"the payload of workflow {workflow.name!r}"
    )
    event_list = _event_list(events) + [
        (
            update_key(run_id, update.name),
            {
                "id": f"update-{index}",
                "name": update.name,
                "request": json.loads(
                    encode(update.request_adapter, request, what=f"update {update.name!r}")
                ),
            },
        )
        for index, (update, request) in enumerate(updates, 1)
    ]
    stub_map = dict(stubs or {})
    probe = Probe()

    answers: dict[_CallKey, _Answer] = {}
    first_journal: list[StepRecord] = []

    def execute(execution: int, prefix: list[StepRecord] | None) -> _Execution:
        return _execute(
            workflow,
            payload,
            payload_json,
            run_id=run_id,
            start=start,
            stubs=stub_map,
            events=event_list,
            default_retry=default_retry,
            probe=probe,
            execution=execution,
            prefix=prefix,
            dropped=[] if prefix is None else _dropped(first_journal, prefix),
            answers=None if prefix is None else answers,
        )

    with _watched_workflows(workflow, probe):
        first = execute(0, None)
        answers.update(first.answers)
        first_journal.extend(first.journal)
        base = _report(workflow, first, run_id, probe, restarts=0, warnings=())
        if not first.run.status.finished:
            raise ResumabilityError(base, (_unfinished(None, first),))
        if first.run.error is not None and first.run.error.type.endswith("NonDeterminismError"):
            detail = f"it failed replaying its own journal after a wait: {first.run.error.message}"
            raise ResumabilityError(base, (ResumeProblem(None, "uninterrupted run", detail),))
        owners = _top_positions(first.runs, run_id)
        states = _restart_states(workflow, payload_json, run_id, start, first.journal)
        problems: list[ResumeProblem] = []
        for execution, (kept, missing) in enumerate(states, start=1):
            try:
                resumed = execute(execution, kept)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                problems.append(ResumeProblem(len(kept), "resume", detail, missing))
                continue
            positions = {r.position for r in kept}
            # A run the top run did not start (one it continued as) runs again in full.
            expected = [
                e
                for e in first.effects
                if owners.get(e.run_id, e.position if e.run_id == run_id else -1) not in positions
            ]
            problems.extend(_compare(len(kept), missing, first, resumed, expected))

    found = _warnings(first, probe.reads)
    report = _report(workflow, first, run_id, probe, restarts=len(states), warnings=found)
    if strict:
        problems.extend(ResumeProblem(None, "warning", text) for text in found)
    if problems:
        raise ResumabilityError(report, tuple(problems))
    if found:
        warnings.warn(ResumabilityWarning("\n".join(found)), stacklevel=2)
    return report


def _event_list(events: Events | None) -> list[tuple[str, object]]:
    if events is None:
        return []
    if isinstance(events, Mapping):
        mapping = cast("Mapping[str, object]", events)
        return list(mapping.items())
    return [(key, value) for key, value in events]


def _execute(
    workflow: Workflow[Any, Any],
    payload: object,
    payload_json: str,
    *,
    run_id: str,
    start: datetime,
    stubs: dict[str, Stub],
    events: list[tuple[str, object]],
    default_retry: RetryPolicy | None,
    probe: Probe,
    execution: int,
    prefix: list[StepRecord] | None,
    dropped: list[StepRecord],
    answers: dict[_CallKey, _Answer] | None,
) -> _Execution:
    clock = FakeClock(start)
    store = MemoryStore()
    runtime = _CheckRuntime(
        stubs,
        answers,
        store=store,
        scheduler=InlineScheduler(),
        clock=clock,
        default_retry=default_retry,
        warm_runs=0,  # every wake-up replays: no warm generator hides a divergence
    )
    probe.begin(execution, clock.now)
    try:
        if prefix is None:
            for key, event in events:
                runtime.notify(key, event)
            runtime.start_run(workflow, payload, run_id=run_id)
        else:
            clock.advance(_resume_at(prefix, dropped, start) - start)
            consumed: dict[str, int] = {}
            for record in prefix:
                if record.kind == "event" and record.key is not None:
                    consumed[record.key] = consumed.get(record.key, 0) + 1
            for key, event in events:
                if consumed.get(key, 0):
                    consumed[key] -= 1  # received before the crash: not sent again
                else:
                    runtime.notify(key, event)
            run = RunState(
                run_id=run_id,
                workflow=workflow.name,
                payload=payload_json,
                created_at=start,
                wake_at=clock.now(),
                wake_seq=1,
            )
            with store.atomic():
                store.create_run(run)
                store.save_steps(run_id, prefix)
                runtime.scheduler.wake(store, run)
        final = store.runs[run_id]
        while final.status is RunStatus.CONTINUED and final.continued_as in store.runs:
            # A chain's outcome is its last run's; the crash points are the first run's.
            final = store.runs[final.continued_as]
        return _Execution(
            run=final,
            journal=store.steps(run_id),
            effects=runtime.effects,
            runs=dict(store.runs),
            journals={rid: store.steps(rid) for rid in store.runs},
            answers=runtime.answers,
        )
    finally:
        runtime.close()


@contextlib.contextmanager
def _watched_workflows(workflow: Workflow[Any, Any], probe: Probe) -> Generator[None, None, None]:
    """Have the runtime find watched copies of every registered workflow, for the check."""
    # The runtime finds a run's workflow by name: swapped for the check, restored after.
    from .._workflow import _registry as registry  # pyright: ignore[reportPrivateUsage]

    saved = dict(registry)
    originals = {**saved, workflow.name: workflow}
    namespaces = [getattr(wf.fn, "__globals__", {}) for wf in originals.values()]
    try:
        with probe.installed(namespaces):
            for name, original in originals.items():
                registry[name] = _watched_copy(original, probe)
            yield
    finally:
        for name in originals:
            if name in saved:
                registry[name] = saved[name]
            else:
                registry.pop(name, None)


def _watched_copy(workflow: Workflow[Any, Any], probe: Probe) -> Workflow[Any, Any]:
    fn = workflow.fn

    def watched(ctx: Any, payload: Any) -> Flow[Any]:
        return cast("Flow[Any]", Watched(fn(ctx, payload), probe))

    clone = copy.copy(workflow)
    clone.fn = watched
    return clone


def _dropped(journal: list[StepRecord], kept: list[StepRecord]) -> list[StepRecord]:
    positions = {r.position for r in kept}
    return [r for r in journal if r.position not in positions]


def _resume_at(kept: list[StepRecord], dropped: list[StepRecord], start: datetime) -> datetime:
    """When the resumed process starts: when the uninterrupted run first reached a dropped step.

    That is the moment of the crash the kept records stand for, so steps run
    again settle at the times they did (a gather branch dropped while a later
    one, retried for longer, was kept, starts where it started).
    """
    began = [r.started_at for r in dropped if r.started_at is not None]
    if began:
        return min(began)
    return max((r.completed_at for r in kept if r.completed_at), default=start)


def _restart_states(
    workflow: Workflow[Any, Any],
    payload_json: str,
    run_id: str,
    start: datetime,
    journal: list[StepRecord],
) -> list[tuple[list[StepRecord], int | None]]:
    """The journals to resume from: every prefix, and every gather with one branch unsettled.

    Gathers are found by replaying the journal through the pure engine:
    where the workflow waits on several steps at once, each branch but the
    last is also left out on its own (the last left out is a prefix).
    """
    states: list[tuple[list[StepRecord], int | None]] = [
        (journal[:k], None) for k in range(len(journal) + 1)
    ]
    by_position = {r.position: r for r in journal}
    execution = Replay(
        workflow,
        payload_json,
        RunInfo(run_id=run_id, workflow_name=workflow.name, started_at=start),
    )
    try:
        decision = execution.advance()
        while isinstance(decision, Waiting):
            pending = [p.position for p in decision.pending]
            if not all(p in by_position for p in pending):
                break
            if len(pending) > 1:
                first = min(pending)
                for missing in sorted(pending)[:-1]:
                    kept = journal[:first] + [
                        by_position[p] for p in sorted(pending) if p != missing
                    ]
                    states.append((kept, missing))
            for position in pending:
                execution.settle(by_position[position])
            decision = execution.advance()
    except Exception:  # the prefixes alone still get checked
        pass
    finally:
        execution.discard()
    return states


def _top_positions(runs: dict[str, RunState], top: str) -> dict[str, int]:
    """For each child run, the position of the top run's step that started it."""
    owners: dict[str, int] = {}
    for rid, run in runs.items():
        current = run
        position: int | None = None
        while current.parent_run_id is not None:
            position = current.parent_position
            if current.parent_run_id == top:
                break
            parent = runs.get(current.parent_run_id)
            if parent is None:
                break
            current = parent
        if rid != top and position is not None:
            owners[rid] = position
    return owners


def _outcome(run: RunState) -> str:
    if run.status is RunStatus.COMPLETED:
        return f"completed with {run.result}"
    if run.error is not None:
        return f"{run.status.value}: {run.error.type}: {run.error.message}"
    return run.status.value


def _view(record: StepRecord) -> tuple[object, ...]:
    error = (record.error.type, record.error.message) if record.error else None
    return (
        record.position,
        record.kind,
        record.name,
        record.status,
        record.result,
        error,
        record.attempts,
        record.completed_at,
    )


def _describe(record: StepRecord | None) -> str:
    if record is None:
        return "nothing"
    if record.error is not None:
        outcome = f"{record.status.value} ({record.error.type}: {record.error.message})"
    else:
        outcome = f"{record.status.value} with {record.result}"
    at = record.completed_at.isoformat() if record.completed_at else "-"
    return f"{record.describe()} {outcome}, {record.attempts} attempt(s), at {at}"


def _compare(
    k: int, missing: int | None, first: _Execution, resumed: _Execution, expected: list[Effect]
) -> list[ResumeProblem]:
    problems: list[ResumeProblem] = []
    if not resumed.run.status.finished:
        return [dataclasses.replace(_unfinished(k, resumed), missing=missing)]
    if _outcome(resumed.run) != _outcome(first.run):
        problems.append(
            ResumeProblem(
                k,
                "outcome",
                f"uninterrupted: {_outcome(first.run)}; resumed: {_outcome(resumed.run)}",
                missing,
            )
        )
    a, b = first.journal, resumed.journal
    for i in range(max(len(a), len(b))):
        left = a[i] if i < len(a) else None
        right = b[i] if i < len(b) else None
        if left is None or right is None or _view(left) != _view(right):
            problems.append(
                ResumeProblem(
                    k,
                    "journal",
                    f"at position {i}, uninterrupted: {_describe(left)}; "
                    f"resumed: {_describe(right)}",
                    missing,
                )
            )
            break
    got = resumed.effects
    for i in range(max(len(expected), len(got))):
        left_effect = expected[i] if i < len(expected) else None
        right_effect = got[i] if i < len(got) else None
        if left_effect != right_effect:
            problems.append(
                ResumeProblem(
                    k,
                    "step calls",
                    f"call {i + 1} after resuming: uninterrupted: "
                    f"{left_effect.describe() if left_effect else 'no call'}; resumed: "
                    f"{right_effect.describe() if right_effect else 'no call'}",
                    missing,
                )
            )
            break
    return problems


def _unfinished(k: int | None, execution: _Execution) -> ResumeProblem:
    waits = [
        f"event {record.name!r} (key {record.key!r})"
        for records in execution.journals.values()
        for record in records
        if record.kind == "event" and not record.settled
    ]
    if waits:
        detail = (
            f"the run waits for {', '.join(waits)}: give the event in `events=` "
            "(or a timeout in the workflow)"
        )
    else:
        detail = "the run did not finish"
    return ResumeProblem(k, "outcome" if k is not None else "uninterrupted run", detail)


def _warnings(first: _Execution, reads: Mapping[Read, int]) -> tuple[str, ...]:
    found: list[str] = []
    for rid, records in first.journals.items():
        positions: dict[str, list[int]] = {}
        for record in records:
            if record.kind == "reply":
                continue  # named after its update; the update id it answers is in its key
            positions.setdefault(record.name, []).append(record.position)
        for name, where in positions.items():
            if len(where) > 1:
                found.append(
                    f"run {rid}: the step name {name!r} is used at positions "
                    f"{', '.join(map(str, where))}; replay matches each position by kind and "
                    "name, so a change that swaps same-named steps goes unnoticed: give each "
                    f"its own name (e.g. f'{name}-{{i}}')"
                )
    if reads:
        found.append(_reads_warning(reads))
    return tuple(found)


def _reads_warning(reads: Mapping[Read, int]) -> str:
    places = "; ".join(
        f"{read.what} at {read.where}" + (f" ({count} times)" if count > 1 else "")
        for read, count in reads.items()
    )
    return (
        f"the workflow body read the wall clock or random: {places}. A replay after a crash "
        "or a wait sees other values, so steps that depend on them change: use ctx.now(), "
        "ctx.uuid4() and ctx.random(), which replay the same values, or read the value in a "
        f"step. Watched while the workflow body ran (not in step functions): {WATCHED}"
    )


def _report(
    workflow: Workflow[Any, R],
    first: _Execution,
    run_id: str,
    probe: Probe,
    *,
    restarts: int,
    warnings: tuple[str, ...],
) -> ResumeReport[R]:
    run = first.run
    value: Any = None
    if run.status is RunStatus.COMPLETED:
        value = decode(workflow.result_adapter, run.result or "null", what="the result")
    return ResumeReport(
        workflow=workflow.name,
        status=run.status,
        result_json=run.result,
        error=run.error,
        journal=tuple(first.journal),
        effects=tuple(first.effects),
        restarts=restarts,
        warnings=warnings,
        watched=WATCHED,
        reads=dict(probe.reads),
        _result=value,
        _run_id=run_id,
    )
