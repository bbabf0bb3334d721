"""The Django signals: what is sent, when (after the commit), and nothing for a rollback."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.db import transaction
from pydantic import BaseModel

from hookflow_gen import Context, Flow, NonRetryableError, RetryPolicy, RunStatus, workflow
from hookflow_gen._journal import StepRecord
from hookflow_gen.django import signals
from hookflow_gen.django._store import DjangoStore
from hookflow_gen.django.models import Run, Step
from tests.conftest import run_worker

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime

pytestmark = pytest.mark.django_db(transaction=True)

FAST = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


class Job(BaseModel):
    fail_times: int = 0
    fatal: bool = False


_calls: dict[str, int] = {}


def flaky(key: str, fail_times: int, fatal: bool) -> str:
    _calls[key] = _calls.get(key, 0) + 1
    if fatal:
        raise NonRetryableError("the card was declined")
    if _calls[key] <= fail_times:
        raise ConnectionError(f"try {_calls[key]} lost the connection")
    return f"done after {_calls[key]}"


@workflow(name="signals-flaky")
def flaky_flow(ctx: Context, job: Job) -> Flow[str]:
    yield from ctx.sleep("pause", 5)
    key = ctx.info.run_id
    return (yield from ctx.run("work", flaky, key, job.fail_times, job.fatal).options(retry=FAST))


@workflow(name="signals-other")
def other_flow(ctx: Context, job: Job) -> Flow[int]:
    yield from ()
    return 1


@workflow(name="signals-parent")
def parent_flow(ctx: Context, job: Job) -> Flow[int]:
    return (yield from ctx.invoke("child", other_flow, job))


class Laps(BaseModel):
    left: int


@workflow(name="signals-continuing")
def continuing_flow(ctx: Context, laps: Laps) -> Flow[int]:
    yield from ctx.run("lap", str, laps.left)
    if laps.left:
        return (yield from ctx.continue_as_new(continuing_flow, Laps(left=laps.left - 1)))
    return 0


class Seen:
    """Every event sent, with what the database held when it was sent."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.senders: list[object] = []
        self.in_transaction: list[bool] = []

    def __call__(self, sender: object, *, event: Any, **kwargs: object) -> None:
        self.events.append(event)
        self.senders.append(sender)
        self.in_transaction.append(transaction.get_connection().in_atomic_block)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def seen() -> Iterator[Seen]:
    """A receiver connected to all four signals."""
    seen = Seen()
    every = (signals.run_started, signals.step_completed, signals.step_failed)
    for signal in (*every, signals.run_finished):
        signal.connect(seen, weak=False)
    yield seen
    for signal in (*every, signals.run_finished):
        signal.disconnect(seen)


def test_a_retried_run_sends_each_event_after_its_commit(runtime: Runtime, seen: Seen) -> None:
    """Started, the sleep and the step completed, two failed attempts retried, finished."""
    handle = flaky_flow.start(Job(fail_times=2))
    run_worker(runtime)
    assert handle.result() == "done after 3"
    kinds = [type(event).__name__ for event in seen.events]
    assert kinds == [
        "RunStarted",
        "StepCompleted",  # the sleep
        "StepFailed",
        "StepFailed",
        "StepCompleted",
        "RunFinished",
    ]
    assert not any(seen.in_transaction), "a receiver ran inside the transaction"
    assert seen.senders == [flaky_flow] * len(seen.events)
    (started,) = seen.of(signals.RunStarted)
    assert (started.run_id, started.workflow, started.parent_run_id) == (
        handle.run_id,
        "signals-flaky",
        None,
    )
    sleep, work = seen.of(signals.StepCompleted)
    assert (sleep.kind, sleep.step_name, sleep.position) == ("sleep", "pause", 0)
    assert (work.kind, work.step_name, work.attempt, work.result) == (
        "run",
        "work",
        3,
        '"done after 3"',
    )
    first, second = seen.of(signals.StepFailed)
    assert [(f.attempt, f.will_retry) for f in (first, second)] == [(1, True), (2, True)]
    assert first.error.type == "builtins.ConnectionError"
    assert first.error.message == "try 1 lost the connection"
    assert first.retry_at == first.failed_at + timedelta(seconds=1)
    assert second.retry_at == second.failed_at + timedelta(seconds=2)
    (finished,) = seen.of(signals.RunFinished)
    assert (finished.status, finished.result, finished.error) == (
        RunStatus.COMPLETED,
        '"done after 3"',
        None,
    )


def test_receivers_see_committed_state(runtime: Runtime) -> None:
    """What a receiver reads from the database already holds the change it is told of."""
    read: list[tuple[str, Any]] = []

    def on_failed(sender: object, *, event: signals.StepFailed, **kwargs: object) -> None:
        step = Step.objects.get(run_id=event.run_id, position=event.position)
        read.append(("failed", (step.status, step.attempts, len(step.past_attempts or ()))))

    def on_finished(sender: object, *, event: signals.RunFinished, **kwargs: object) -> None:
        read.append(("finished", Run.objects.get(pk=event.run_id).status))

    signals.step_failed.connect(on_failed)
    signals.run_finished.connect(on_finished)
    try:
        handle = flaky_flow.start(Job(fail_times=1))
        run_worker(runtime)
    finally:
        signals.step_failed.disconnect(on_failed)
        signals.run_finished.disconnect(on_finished)
    assert handle.result() == "done after 2"
    assert read == [("failed", ("pending", 1, 1)), ("finished", "completed")]


def test_a_final_failure_says_it_will_not_retry(runtime: Runtime, seen: Seen) -> None:
    """A non-retryable error: one StepFailed with will_retry False, then the run fails."""
    handle = flaky_flow.start(Job(fatal=True))
    run_worker(runtime)
    assert handle.status is RunStatus.FAILED
    (failed,) = seen.of(signals.StepFailed)
    assert (failed.attempt, failed.will_retry, failed.retry_at) == (1, False, None)
    assert failed.error.message == "the card was declined"
    (finished,) = seen.of(signals.RunFinished)
    assert finished.status is RunStatus.FAILED
    assert finished.error is not None
    assert finished.error.original.message == "the card was declined"


def test_a_rolled_back_start_sends_nothing(runtime: Runtime, seen: Seen) -> None:
    """A run started in a transaction that rolls back is never announced."""

    class Abort(Exception):
        pass

    def start_then_roll_back() -> None:
        with transaction.atomic():
            flaky_flow.start(Job(), run_id="signals-rolled-back")
            raise Abort

    with pytest.raises(Abort):
        start_then_roll_back()
    assert not Run.objects.filter(pk="signals-rolled-back").exists()
    assert seen.events == []
    flaky_flow.start(Job(), run_id="signals-committed")
    assert [e.run_id for e in seen.of(signals.RunStarted)] == ["signals-committed"]


def test_a_checkpoint_that_rolls_back_sends_no_completion(
    runtime: Runtime, seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose commit fails sends no StepCompleted; the lost attempt is retried."""
    handle = flaky_flow.start(Job())
    store = runtime.store
    assert isinstance(store, DjangoStore)
    original = store.save_steps
    original_guarded = store.write_guarded
    refused: list[bool] = []

    def refuse_once(records: Sequence[StepRecord]) -> None:
        if not refused and any(r.name == "work" and r.status == "completed" for r in records):
            refused.append(True)
            raise RuntimeError("the database refused the checkpoint")

    def save_steps(run_id: str, records: Sequence[StepRecord]) -> None:
        refuse_once(records)
        original(run_id, records)

    def write_guarded(
        run_id: str, guard: StepRecord, owner: str, others: Sequence[StepRecord], **kw: Any
    ) -> bool:
        # The checkpoint that ends the run goes out as a guarded write.
        refuse_once([guard, *others])
        return original_guarded(run_id, guard, owner, others, **kw)

    monkeypatch.setattr(store, "save_steps", save_steps)
    monkeypatch.setattr(store, "write_guarded", write_guarded)
    run_worker(runtime)  # the worker logs the failed tick and ticks the run again
    assert refused
    assert handle.result() == "done after 2"
    work = [e for e in seen.of(signals.StepCompleted) if e.step_name == "work"]
    assert [e.attempt for e in work] == [2], "the rolled-back completion was announced"
    (failed,) = seen.of(signals.StepFailed)
    # The refused checkpoint counts as a failed attempt, retried by the step's policy.
    assert (failed.attempt, failed.will_retry) == (1, True)
    assert failed.retry_at == failed.failed_at + timedelta(seconds=1)
    assert "the step's outcome could not be recorded" in failed.error.message
    assert "the database refused the checkpoint" in failed.error.message


def test_a_receiver_filters_by_workflow(runtime: Runtime) -> None:
    """``sender=`` a workflow: only its runs reach the receiver."""
    got: list[str] = []

    @signals.receiver(signals.run_finished, sender=other_flow)
    def only_other(sender: object, *, event: signals.RunFinished, **kwargs: object) -> None:
        got.append(event.workflow)

    try:
        flaky_flow.start(Job())
        other_flow.start(Job())
        run_worker(runtime)
    finally:
        signals.run_finished.disconnect(only_other, sender=other_flow)
    assert got == ["signals-other"]


def test_a_receiver_that_raises_is_logged_and_the_run_goes_on(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's bug cannot undo or stop a committed change: it is logged."""

    def broken(sender: object, *, event: signals.StepCompleted, **kwargs: object) -> None:
        raise ValueError("receiver bug")

    signals.step_completed.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="hookflow_gen"):
            handle = flaky_flow.start(Job())
            run_worker(runtime)
    finally:
        signals.step_completed.disconnect(broken)
    assert handle.result() == "done after 1"
    assert "a receiver of StepCompleted" in caplog.text
    assert "receiver bug" in caplog.text


def test_a_child_run_is_announced_with_its_parent(runtime: Runtime, seen: Seen) -> None:
    """``invoke`` starts a child run: its RunStarted names the parent, and both finish."""
    handle = parent_flow.start(Job())
    run_worker(runtime)
    assert handle.result() == 1
    started = {e.workflow: e.parent_run_id for e in seen.of(signals.RunStarted)}
    assert started == {"signals-parent": None, "signals-other": handle.run_id}
    finished = [(e.workflow, e.status) for e in seen.of(signals.RunFinished)]
    assert finished == [
        ("signals-other", RunStatus.COMPLETED),
        ("signals-parent", RunStatus.COMPLETED),
    ]
    (child,) = [e for e in seen.of(signals.StepCompleted) if e.kind == "invoke"]
    assert (child.step_name, child.result) == ("child", "1")


def test_continuing_as_new_ends_one_run_and_starts_the_next(runtime: Runtime, seen: Seen) -> None:
    """Each run of a chain is announced: it finishes as CONTINUED and its successor starts."""
    handle = continuing_flow.start(Laps(left=1), run_id="signals-chain")
    run_worker(runtime)
    assert handle.result() == 0
    started = [(e.run_id, e.workflow) for e in seen.of(signals.RunStarted)]
    assert started == [
        ("signals-chain", "signals-continuing"),
        ("signals-chain-continued-1", "signals-continuing"),
    ]
    finished = [(e.run_id, e.status) for e in seen.of(signals.RunFinished)]
    assert finished == [
        ("signals-chain", RunStatus.CONTINUED),
        ("signals-chain-continued-1", RunStatus.COMPLETED),
    ]
    assert not any(seen.in_transaction)
