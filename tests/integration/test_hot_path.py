"""The per-step hot path: a checkpoint and the next claim in one guarded statement.

``DjangoStore.write_guarded`` writes a step's outcome and the claim of the
next step in one autocommitted statement, only while the writer still holds
the step (its lease owner, still pending) and the run runs with no
cancellation asked for. These tests pin what it writes and refuses, that a
run's steps take that path (one statement each, not four round trips), and
on PostgreSQL that it races a locked tick without a deadlock or a lost
cancellation.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.db import close_old_connections, connection, connections
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RunStatus, workflow
from hookflow_gen._journal import Attempt, ErrorInfo, StepRecord, StepStatus
from hookflow_gen._runtime import _transitions as transitions
from hookflow_gen._store import RunState
from hookflow_gen.django import signals
from hookflow_gen.django._store import DjangoStore
from hookflow_gen.django.models import Step
from tests.conftest import run_worker

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)


class Count(BaseModel):
    steps: int


class Progress(BaseModel):
    done: int


def add_one(value: int) -> int:
    return value + 1


@workflow(name="hot-path-count")
def count_flow(ctx: Context, job: Count) -> Flow[int]:
    total = 0
    for index in range(job.steps):
        total = yield from ctx.run(f"add-{index}", add_one, total)
    return total


@workflow(name="hot-path-progress")
def progress_flow(ctx: Context, job: Count) -> Flow[int]:
    total = 0
    for index in range(job.steps):
        total = yield from ctx.run(f"add-{index}", add_one, total)
        if index % 2:
            ctx.set_status(Progress(done=index + 1))
    return total


@pytest.fixture
def guarded_calls(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ``write_guarded`` answer of the runtime's store, in order."""
    answers: list[bool] = []
    store = runtime.store
    assert isinstance(store, DjangoStore)
    original = store.write_guarded

    def counting(run_id: str, guard: StepRecord, owner: str, others: Sequence[StepRecord]) -> bool:
        answer = original(run_id, guard, owner, others)
        answers.append(answer)
        return answer

    monkeypatch.setattr(runtime.store, "write_guarded", counting)
    return answers


def _run_counting(runtime: Runtime, steps: int) -> int:
    """Run a workflow of ``steps`` steps to its end; the statements Django's cursors ran."""
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    handle = count_flow.start(Count(steps=steps))
    with connection.execute_wrapper(wrapper):
        run_worker(runtime)
    assert handle.result() == steps
    return len(seen)


@pytest.mark.no_invariant  # its after-commit checks would add their own statements
def test_each_step_after_the_first_is_one_guarded_statement(
    runtime: Runtime, guarded_calls: list[bool]
) -> None:
    """A run's statements through Django do not grow with its steps; each step is one write."""
    short = _run_counting(runtime, 5)
    short_guarded = list(guarded_calls)
    guarded_calls.clear()
    long = _run_counting(runtime, 40)
    # Step k's outcome and step k+1's claim: one guarded statement each; the
    # first claim and the last outcome are written with the run's own changes.
    assert short_guarded == [True] * 4
    assert guarded_calls == [True] * 39
    assert long == short


def test_a_run_on_the_hot_path_keeps_a_full_journal(runtime: Runtime) -> None:
    """Every step row ends completed, once, with its result, attempt and times."""
    handle = count_flow.start(Count(steps=12))
    run_worker(runtime)
    assert handle.result() == 12
    rows = list(Step.objects.filter(run_id=handle.run_id).order_by("position"))
    assert [row.position for row in rows] == list(range(12))
    assert {row.status for row in rows} == {"completed"}
    assert [row.result for row in rows] == [str(n) for n in range(1, 13)]
    assert {row.attempts for row in rows} == {1}
    assert all(row.completed_at is not None and row.started_at is not None for row in rows)


def test_steps_on_the_hot_path_are_told_once_each(runtime: Runtime) -> None:
    """``step_completed`` is sent once per step, in order, after its write."""
    seen: list[tuple[int, bool]] = []

    def on_completed(sender: object, *, event: signals.StepCompleted, **kwargs: object) -> None:
        stored = Step.objects.filter(run_id=event.run_id, position=event.position).get()
        seen.append((event.position, stored.status == "completed"))

    signals.step_completed.connect(on_completed)
    try:
        handle = count_flow.start(Count(steps=8))
        run_worker(runtime)
    finally:
        signals.step_completed.disconnect(on_completed)
    assert handle.result() == 8
    assert seen == [(position, True) for position in range(8)]


def test_a_status_set_between_steps_is_saved(runtime: Runtime) -> None:
    """A step after which the workflow sets its status leaves the hot path; the status holds."""
    handle = progress_flow.start(Count(steps=7))
    run_worker(runtime)
    assert handle.result() == 7
    assert handle.custom_status(Progress) == Progress(done=6)


# -- the guard ---------------------------------------------------------------------


def _pending(position: int, owner: str) -> StepRecord:
    return StepRecord(
        position=position,
        kind="run",
        name=f"step-{position}",
        status=StepStatus.PENDING,
        attempts=1,
        started_at=T0,
        lease_until=T0 + LEASE,
        lease_owner=owner,
    )


def _completed(record: StepRecord, result: str = "1") -> StepRecord:
    return StepRecord(
        position=record.position,
        kind=record.kind,
        name=record.name,
        status=StepStatus.COMPLETED,
        result=result,
        attempts=record.attempts,
        started_at=record.started_at,
        completed_at=T0 + timedelta(seconds=1),
        lease_until=record.lease_until,
        lease_owner=record.lease_owner,
    )


def _stored(store: DjangoStore, run_id: str) -> list[tuple[int, str, str | None]]:
    return [(r.position, r.status.value, r.lease_owner) for r in store.steps(run_id)]


@pytest.fixture
def held() -> tuple[DjangoStore, str, StepRecord]:
    """A running run whose step 0 is pending under owner ``a``."""
    store = DjangoStore()
    run_id = "hot-path-guard"
    store.create_run(RunState(run_id=run_id, workflow="hot-path-count", payload="{}"))
    step = _pending(0, "a")
    store.save_steps(run_id, [step])
    return store, run_id, step


def test_the_holder_writes_the_outcome_and_the_next_claim(
    held: tuple[DjangoStore, str, StepRecord],
) -> None:
    store, run_id, step = held
    assert store.write_guarded(run_id, _completed(step), "a", [_pending(1, "b")])
    assert _stored(store, run_id) == [(0, "completed", "a"), (1, "pending", "b")]
    [first, _] = store.steps(run_id)
    assert first.result == "1"
    assert first.completed_at == T0 + timedelta(seconds=1)


def test_every_field_of_a_guarded_write_round_trips(
    held: tuple[DjangoStore, str, StepRecord],
) -> None:
    """What the store writes on the hot path reads back as it was, field by field."""
    store, run_id, step = held
    error = ErrorInfo(type="builtins.ConnectionError", message="try 1 lost the connection")
    done = dataclasses.replace(
        _completed(step, result='{"n": 1}'),
        error=error,
        attempts=2,
        wake_at=T0 + timedelta(minutes=1),
        key="a-key",
        past_attempts=(
            Attempt(
                attempt=1,
                started_at=T0,
                ended_at=T0 + timedelta(seconds=1),
                error_type=error.type,
                message=error.message,
                retry_at=T0 + timedelta(seconds=2),
            ),
        ),
    )
    claim = dataclasses.replace(_pending(1, "b"), name="next \u00e9t\u00e9 'quoted'")
    assert store.write_guarded(run_id, done, "a", [claim])
    stored = store.steps(run_id)
    fields = [f.name for f in dataclasses.fields(StepRecord)]
    assert [[getattr(r, f) for f in fields] for r in stored] == [
        [getattr(r, f) for f in fields] for r in (done, claim)
    ]


def test_the_holder_writes_an_outcome_alone(held: tuple[DjangoStore, str, StepRecord]) -> None:
    store, run_id, step = held
    assert store.write_guarded(run_id, _completed(step), "a", [])
    assert _stored(store, run_id) == [(0, "completed", "a")]


@pytest.mark.parametrize(
    "change",
    ["another owner", "settled", "cancel requested", "run finished", "run deleted"],
)
def test_the_guard_refuses_and_writes_nothing(
    held: tuple[DjangoStore, str, StepRecord], change: str
) -> None:
    store, run_id, step = held
    owner = "a"
    if change == "another owner":
        owner = "someone else"
    elif change == "settled":
        store.save_steps(run_id, [_completed(step, result="2")])
    elif change in ("cancel requested", "run finished"):
        run = store.get_run(run_id)
        assert run is not None
        if change == "cancel requested":
            store.save_run(dataclasses.replace(run, cancel_requested=True))
        else:
            store.save_run(dataclasses.replace(run, status=RunStatus.FAILED))
    else:
        from hookflow_gen.django.models import Run

        Run.objects.filter(run_id=run_id).delete()
    before = _stored(store, run_id)
    results = [r.result for r in store.steps(run_id)]
    assert not store.write_guarded(run_id, _completed(step, result="9"), owner, [_pending(1, "b")])
    assert _stored(store, run_id) == before
    assert [r.result for r in store.steps(run_id)] == results


# -- races on PostgreSQL -----------------------------------------------------------


def _deliver_cancel(store: DjangoStore, run_id: str, position: int) -> bool:
    """What a locked tick delivering a cancellation does to a pending step: True if it did."""
    with store.atomic():
        run = store.lock_run(run_id)
        assert run is not None
        records = store.steps(run_id, position)
        if not records or records[0].status is not StepStatus.PENDING:
            return False
        cancelled = transitions.cancel_step(records[0], T0)
        store.save_steps(run_id, [cancelled])
        return True


def _race(*sides: Callable[[], bool]) -> tuple[list[bool], list[BaseException]]:
    """Run each side on its own thread, released together; their answers and errors."""
    start = threading.Barrier(len(sides))
    answers = [False] * len(sides)
    errors: list[BaseException] = []

    def run(index: int, side: Callable[[], bool]) -> None:
        try:
            start.wait()
            answers[index] = side()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index, side)) for index, side in enumerate(sides)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a side of the race hung"
    return answers, errors


@pytest.mark.postgres
@pytest.mark.no_invariant  # the runs are built by hand, without wake-ups
def test_a_guarded_write_racing_a_locked_tick_never_loses_either() -> None:
    """Run 60 times: the guarded write and a locked cancel delivery, released together.

    Exactly one of them settles the step. If the cancellation won, nothing
    past the step was claimed; if the write won, the delivery saw the step
    completed and left it. Neither side deadlocks.
    """
    store = DjangoStore()
    for attempt in range(60):
        run_id = f"hot-path-race-{attempt}"
        store.create_run(RunState(run_id=run_id, workflow="hot-path-count", payload="{}"))
        step = _pending(0, "a")
        store.save_steps(run_id, [step])
        answers, errors = _race(
            functools.partial(
                store.write_guarded, run_id, _completed(step), "a", [_pending(1, "b")]
            ),
            functools.partial(_deliver_cancel, store, run_id, 0),
        )
        assert not errors, errors
        assert answers[0] != answers[1], answers
        stored = _stored(store, run_id)
        if answers[0]:
            assert stored == [(0, "completed", "a"), (1, "pending", "b")]
        else:
            assert stored == [(0, "failed", None)]
            [record] = store.steps(run_id)
            assert record.error is not None and record.error.is_cancellation
    close_old_connections()
