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
def guarded_calls(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool]]:
    """Every ``write_guarded`` call of the runtime's store, in order: (its answer, ends the run)."""
    calls: list[tuple[bool, bool]] = []
    store = runtime.store
    assert isinstance(store, DjangoStore)
    original = store.write_guarded

    def counting(
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        answer = original(run_id, guard, owner, others, finish=finish)
        calls.append((answer, finish is not None))
        return answer

    monkeypatch.setattr(runtime.store, "write_guarded", counting)
    return calls


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
    runtime: Runtime, guarded_calls: list[tuple[bool, bool]]
) -> None:
    """A run's statements through Django do not grow with its steps; each step is one write."""
    short = _run_counting(runtime, 5)
    short_guarded = list(guarded_calls)
    guarded_calls.clear()
    long = _run_counting(runtime, 40)
    # Step k's outcome and step k+1's claim: one guarded statement each; the
    # last step's outcome and the run's end: one more. The first claim goes
    # out with the run's new wake-up (``begin_guarded``).
    assert short_guarded == [(True, False)] * 4 + [(True, True)]
    assert guarded_calls == [(True, False)] * 39 + [(True, True)]
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


def _pending(position: int, owner: str | None) -> StepRecord:
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


def _change(store: DjangoStore, run_id: str, step: StepRecord, change: str) -> str:
    """Change the held run as ``change`` says; the lease owner the writer then claims to be."""
    from hookflow_gen.django.models import Run

    run = store.get_run(run_id)
    assert run is not None
    if change == "another owner":
        return "someone else"
    if change == "settled":
        store.save_steps(run_id, [_completed(step, result="2")])
    elif change == "cancel requested":
        store.save_run(dataclasses.replace(run, cancel_requested=True))
    elif change == "run finished":
        store.save_run(dataclasses.replace(run, status=RunStatus.FAILED))
    elif change == "run deleted":
        Run.objects.filter(run_id=run_id).delete()
    elif change == "woken meanwhile":
        store.save_run(transitions.wake(run, T0 + timedelta(seconds=1)))
    else:
        assert change == "a parent waits"
        _waiting_parent(store, run_id, running=True)
    return "a"


@pytest.mark.parametrize(
    "change",
    ["another owner", "settled", "cancel requested", "run finished", "run deleted"],
)
def test_the_guard_refuses_and_writes_nothing(
    held: tuple[DjangoStore, str, StepRecord], change: str
) -> None:
    store, run_id, step = held
    owner = _change(store, run_id, step, change)
    before = _stored(store, run_id)
    results = [r.result for r in store.steps(run_id)]
    assert not store.write_guarded(run_id, _completed(step, result="9"), owner, [_pending(1, "b")])
    assert _stored(store, run_id) == before
    assert [r.result for r in store.steps(run_id)] == results


# -- the end of a run ------------------------------------------------------------


def _ended(store: DjangoStore, run_id: str, *, status: str | None = None) -> RunState:
    run = store.get_run(run_id)
    assert run is not None
    return transitions.finish(
        dataclasses.replace(run, custom_status=status),
        RunStatus.COMPLETED,
        T0 + timedelta(seconds=2),
        result='{"total": 3}',
    )


def _run_row(run_id: str) -> tuple[Any, ...]:
    from hookflow_gen.django.models import Run

    return Run.objects.filter(run_id=run_id).values_list(
        "status",
        "result",
        "error",
        "finished_at",
        "wake_at",
        "wake_seq",
        "cancel_requested",
        "tick_failures",
        "custom_status",
        "claimed_until",
    )[0]


def test_the_holder_ends_the_run_with_its_last_outcome(
    held: tuple[DjangoStore, str, StepRecord],
) -> None:
    """``finish=``: the step's outcome and the run's end in one write, every field as given."""
    from hookflow_gen.django.models import Run

    store, run_id, step = held
    Run.objects.filter(run_id=run_id).update(
        wake_at=T0, claimed_until=T0 + LEASE, tick_failures=0, wake_seq=4
    )
    ended = _ended(store, run_id, status='{"done": 3}')
    assert store.write_guarded(run_id, _completed(step), "a", [], finish=ended)
    assert _stored(store, run_id) == [(0, "completed", "a")]
    assert _run_row(run_id) == (
        "completed",
        '{"total": 3}',
        None,
        T0 + timedelta(seconds=2),
        None,
        4,
        False,
        0,
        '{"done": 3}',
        None,
    )
    assert store.get_run(run_id) == ended


def _waiting_parent(store: DjangoStore, child_id: str, *, running: bool) -> None:
    """A run whose invoke step waits on ``child_id`` (finished, when not ``running``)."""
    parent_id = f"{child_id}-parent"
    store.create_run(RunState(run_id=parent_id, workflow="hot-path-count", payload="{}"))
    waiting = dataclasses.replace(_pending(0, None), kind="invoke", key=child_id)
    store.save_steps(parent_id, [waiting])
    if not running:
        parent = store.get_run(parent_id)
        assert parent is not None
        store.save_run(dataclasses.replace(parent, status=RunStatus.CANCELLED))


def test_a_parent_that_ended_does_not_keep_the_run_from_ending(
    held: tuple[DjangoStore, str, StepRecord],
) -> None:
    store, run_id, step = held
    _waiting_parent(store, run_id, running=False)
    assert store.write_guarded(run_id, _completed(step), "a", [], finish=_ended(store, run_id))
    assert _run_row(run_id)[0] == "completed"


@pytest.mark.parametrize(
    "change",
    ["another owner", "settled", "cancel requested", "woken meanwhile", "a parent waits"],
)
def test_the_guard_refuses_to_end_the_run_and_writes_nothing(
    held: tuple[DjangoStore, str, StepRecord], change: str
) -> None:
    store, run_id, step = held
    ended = _ended(store, run_id)
    owner = _change(store, run_id, step, change)
    before = (_stored(store, run_id), [r.result for r in store.steps(run_id)], _run_row(run_id))
    assert not store.write_guarded(run_id, _completed(step, result="9"), owner, [], finish=ended)
    after = (_stored(store, run_id), [r.result for r in store.steps(run_id)], _run_row(run_id))
    assert after == before


def test_a_refused_end_inside_a_transaction_leaves_the_transaction_usable(
    held: tuple[DjangoStore, str, StepRecord],
) -> None:
    """Inside a caller's transaction the end is a savepoint: refused, only it rolls back."""
    from django.db import transaction

    store, run_id, step = held
    ended = _ended(store, run_id)
    with transaction.atomic():
        store.save_steps(run_id, [_pending(5, "x")])
        assert not store.write_guarded(run_id, _completed(step), "nobody", [], finish=ended)
        assert store.write_guarded(run_id, _completed(step), "a", [], finish=ended)
    assert _stored(store, run_id) == [(0, "completed", "a"), (5, "pending", "x")]
    assert _run_row(run_id)[0] == "completed"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own transaction")
@pytest.mark.parametrize("nested", [False, True])
def test_a_failed_commit_of_a_guarded_end_rolls_back(
    held: tuple[DjangoStore, str, StepRecord], nested: bool
) -> None:
    """A COMMIT that fails (SQLITE_BUSY, say) leaves nothing open and nothing written."""
    from django.db import transaction

    from hookflow_gen.django._store import (
        _finish_params,  # pyright: ignore[reportPrivateUsage]  # the SQLite helpers under test
        _guarded_sqlite,  # pyright: ignore[reportPrivateUsage]
        _statements_for,  # pyright: ignore[reportPrivateUsage]
    )

    store, run_id, step = held
    ended = _ended(store, run_id)
    statements = _statements_for(connection)
    before = (_stored(store, run_id), _run_row(run_id))

    class FailingCommit:
        """The raw cursor, but its COMMIT or RELEASE fails as a busy database's would."""

        def __init__(self, cursor: Any) -> None:
            self.cursor = cursor
            self.connection = cursor.connection
            self.rowcount = 0

        def execute(self, sql: str, params: Any = ()) -> None:
            if sql in ("COMMIT", 'RELEASE "hookflow_guarded"'):
                raise RuntimeError("database is locked")
            self.cursor.execute(sql, params)
            self.rowcount = self.cursor.rowcount

    def attempt() -> None:
        connection.ensure_connection()
        raw = connection.connection.cursor()
        params = _finish_params(statements, run_id, _completed(step), "a", ended)
        with pytest.raises(RuntimeError, match="database is locked"):
            _guarded_sqlite(
                FailingCommit(raw),
                statements,
                run_id,
                (statements.finish_sqlite, params),
                [_completed(step)],
            )
        raw.close()

    if nested:
        with transaction.atomic():
            attempt()
            assert connection.connection.in_transaction  # the caller's own, still usable
            assert (_stored(store, run_id), _run_row(run_id)) == before
    else:
        attempt()
        assert not connection.connection.in_transaction
    assert (_stored(store, run_id), _run_row(run_id)) == before


def test_a_workflow_that_returns_after_its_step_ends_on_the_guarded_write(
    runtime: Runtime, guarded_calls: list[tuple[bool, bool]]
) -> None:
    """The run's end, its result, its status and the signals, as on the locked path."""
    ended: list[signals.RunFinished] = []

    def on_finished(sender: object, *, event: signals.RunFinished, **kwargs: object) -> None:
        ended.append(event)

    signals.run_finished.connect(on_finished)
    try:
        handle = progress_flow.start(Count(steps=4))
        run_worker(runtime)
    finally:
        signals.run_finished.disconnect(on_finished)
    assert handle.result() == 4
    assert guarded_calls[-1] == (True, True)
    assert handle.custom_status(Progress) == Progress(done=4)
    assert [(e.run_id, e.status, e.result) for e in ended] == [
        (handle.run_id, RunStatus.COMPLETED, "4")
    ]
    assert _run_row(handle.run_id)[4] is None  # nothing wakes it any more


def test_a_refused_end_is_taken_again_under_the_lock(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer woke the run while its last step ran: the locked path ends it, once."""
    store = runtime.store
    assert isinstance(store, DjangoStore)
    original = store.write_guarded
    refused: list[bool] = []

    def woken_first(
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        if finish is not None and not refused:
            run = store.get_run(run_id)
            assert run is not None
            store.save_run(transitions.wake(run, T0))  # what a delivered event does
            refused.append(not original(run_id, guard, owner, others, finish=finish))
            return not refused[-1]
        return original(run_id, guard, owner, others, finish=finish)

    monkeypatch.setattr(store, "write_guarded", woken_first)
    completed: list[int] = []
    ended: list[RunStatus] = []

    def on_completed(sender: object, *, event: signals.StepCompleted, **kwargs: object) -> None:
        completed.append(event.position)

    def on_finished(sender: object, *, event: signals.RunFinished, **kwargs: object) -> None:
        ended.append(event.status)

    signals.step_completed.connect(on_completed)
    signals.run_finished.connect(on_finished)
    try:
        handle = count_flow.start(Count(steps=3))
        run_worker(runtime)
    finally:
        signals.step_completed.disconnect(on_completed)
        signals.run_finished.disconnect(on_finished)
    assert refused == [True]
    assert handle.result() == 3
    assert completed == [0, 1, 2]
    assert ended == [RunStatus.COMPLETED]
    assert [status for _, status, _ in _stored(store, handle.run_id)] == ["completed"] * 3


# -- the first tick of a run -------------------------------------------------------


@pytest.fixture
def new_run() -> tuple[DjangoStore, RunState]:
    """A running run with no journal, due now."""
    store = DjangoStore()
    run_id = "hot-path-new"
    store.create_run(
        RunState(run_id=run_id, workflow="hot-path-count", payload="{}", wake_at=T0, wake_seq=1)
    )
    run = store.get_run(run_id)
    assert run is not None
    return store, run


def test_the_claim_reads_the_run_and_whether_it_has_a_journal(
    new_run: tuple[DjangoStore, RunState],
) -> None:
    store, run = new_run
    claimed = store.claim_due(T0, LEASE)
    assert claimed is not None
    assert (claimed.run_id, claimed.workflow, claimed.fresh) == (run.run_id, run.workflow, True)
    assert claimed.run == run
    store.save_steps(run.run_id, [_pending(0, "a")])
    claimed = store.claim_due(T0 + LEASE * 2, LEASE)  # the first claim lapsed
    assert claimed is not None and claimed.run is not None
    assert claimed.fresh is False


def test_the_first_tick_writes_the_wake_up_and_the_first_claim(
    new_run: tuple[DjangoStore, RunState],
) -> None:
    from hookflow_gen.django.models import Run

    store, run = new_run
    assert store.claim_due(T0, LEASE) is not None
    woken = transitions.wake(run, T0 + LEASE)
    assert store.begin_guarded(woken, run.wake_seq, _pending(0, "a"))
    assert _stored(store, run.run_id) == [(0, "pending", "a")]
    row = Run.objects.filter(run_id=run.run_id).values_list("wake_at", "wake_seq", "claimed_until")
    assert row[0] == (T0 + LEASE, 2, None)
    assert store.steps(run.run_id) == [_pending(0, "a")]


@pytest.mark.parametrize(
    "change", ["woken meanwhile", "has a step", "cancel requested", "run finished", "run deleted"]
)
def test_the_guard_refuses_the_first_tick_and_writes_nothing(
    new_run: tuple[DjangoStore, RunState], change: str
) -> None:
    from hookflow_gen.django.models import Run

    store, run = new_run
    if change == "woken meanwhile":
        store.save_run(transitions.wake(run, T0 + timedelta(seconds=1)))
    elif change == "has a step":
        store.save_steps(run.run_id, [_pending(0, "someone else")])
    elif change == "cancel requested":
        store.save_run(dataclasses.replace(run, cancel_requested=True))
    elif change == "run finished":
        store.save_run(dataclasses.replace(run, status=RunStatus.CANCELLED))
    else:
        Run.objects.filter(run_id=run.run_id).delete()
    before = (store.get_run(run.run_id), store.steps(run.run_id))
    assert not store.begin_guarded(
        transitions.wake(run, T0 + LEASE), run.wake_seq, _pending(0, "a")
    )
    assert (store.get_run(run.run_id), store.steps(run.run_id)) == before


def test_a_new_runs_first_tick_reads_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's claim hands the run over; the whole run is guarded writes, nothing read."""
    store = runtime.store
    assert isinstance(store, DjangoStore)
    begun: list[bool] = []
    original = store.begin_guarded

    def counting(run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        begun.append(original(run, seen_seq, claim))
        return begun[-1]

    monkeypatch.setattr(store, "begin_guarded", counting)
    reads: list[str] = []
    for name in ("lock_run", "get_run", "steps"):
        read = getattr(store, name)

        def reading(*args: Any, _read: Any = read, _name: str = name) -> Any:
            reads.append(_name)
            return _read(*args)

        monkeypatch.setattr(store, name, reading)
    handle = count_flow.start(Count(steps=3))
    run_worker(runtime)
    assert begun == [True]
    # The first tick, each step and the run's end: guarded writes alone. No
    # transaction of the run locked it or read its journal.
    assert reads == []
    assert handle.result() == 3


def test_a_refused_first_tick_is_taken_again_under_the_lock(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer woke the run after the claim: the locked path runs it, once."""
    store = runtime.store
    assert isinstance(store, DjangoStore)
    original = store.begin_guarded
    refused: list[bool] = []

    def woken_first(run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        stored = store.get_run(run.run_id)
        assert stored is not None
        store.save_run(transitions.wake(stored, T0))
        refused.append(not original(run, seen_seq, claim))
        return not refused[-1]

    monkeypatch.setattr(store, "begin_guarded", woken_first)
    handle = count_flow.start(Count(steps=3))
    run_worker(runtime)
    assert refused == [True]
    assert handle.result() == 3
    assert [(p, s) for p, s, _ in _stored(store, handle.run_id)] == [
        (0, "completed"),
        (1, "completed"),
        (2, "completed"),
    ]
    assert [r.attempts for r in store.steps(handle.run_id)] == [1, 1, 1]


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


def _wake_locked(store: DjangoStore, run_id: str) -> bool:
    """What another writer's wake-up does to the run (a delivered event): True if it did."""
    with store.atomic():
        run = store.lock_run(run_id)
        assert run is not None
        if run.status.finished:
            return False
        store.save_run(transitions.wake(run, T0))
        return True


@pytest.mark.postgres
@pytest.mark.no_invariant  # the runs are built by hand, without wake-ups
@pytest.mark.parametrize("other", ["cancel", "wake"])
def test_a_guarded_end_racing_a_locked_writer_never_loses_either(other: str) -> None:
    """Run 60 times each: the guarded end of a run and a locked writer, released together.

    Exactly one of them wins. If the end won, the run is completed with its
    step and the other writer saw it finished or the step settled; if the
    other writer won, the run is still running and its step untouched by
    the end (cancelled, or pending with the wake-up's new ``wake_seq``).
    """
    store = DjangoStore()
    for attempt in range(60):
        run_id = f"hot-path-end-race-{other}-{attempt}"
        store.create_run(RunState(run_id=run_id, workflow="hot-path-count", payload="{}"))
        step = _pending(0, "a")
        store.save_steps(run_id, [step])
        ended = _ended(store, run_id)
        rival = (
            functools.partial(_deliver_cancel, store, run_id, 0)
            if other == "cancel"
            else functools.partial(_wake_locked, store, run_id)
        )
        answers, errors = _race(
            functools.partial(store.write_guarded, run_id, _completed(step), "a", [], finish=ended),
            rival,
        )
        assert not errors, errors
        assert answers[0] != answers[1], answers
        row = _run_row(run_id)
        if answers[0]:
            assert row[0] == "completed"
            assert _stored(store, run_id) == [(0, "completed", "a")]
        elif other == "cancel":
            assert row[0] == "running"
            assert _stored(store, run_id) == [(0, "failed", None)]
        else:
            assert (row[0], row[5]) == ("running", ended.wake_seq + 1)
            assert _stored(store, run_id) == [(0, "pending", "a")]
    close_old_connections()


def _tick_first_step(store: DjangoStore, run_id: str, owner: str) -> bool:
    """What a locked first tick does: claim step 0 with the run's wake-up unchanged."""
    with store.atomic():
        run = store.lock_run(run_id)
        assert run is not None
        if store.steps(run_id):
            return False
        store.save_steps(run_id, [_pending(0, owner)])
        return True


@pytest.mark.postgres
@pytest.mark.no_invariant  # the runs are built by hand
@pytest.mark.parametrize("other", ["tick", "cancel", "wake"])
def test_a_guarded_first_tick_racing_a_locked_writer_never_loses_either(other: str) -> None:
    """Run 60 times each: the guarded first tick and a locked writer, released together.

    A locked tick that claims the first step without moving the run's
    wake-up is the hard case: the guard must see its step, not its unchanged
    run. Exactly one side wins, and the journal has one claim at most.
    """
    store = DjangoStore()
    for attempt in range(60):
        run_id = f"hot-path-begin-race-{other}-{attempt}"
        store.create_run(
            RunState(run_id=run_id, workflow="hot-path-count", payload="{}", wake_at=T0, wake_seq=1)
        )
        run = store.get_run(run_id)
        assert run is not None
        rival: Callable[[], bool]
        if other == "tick":
            rival = functools.partial(_tick_first_step, store, run_id, "b")
        elif other == "cancel":

            def cancel(run_id: str = run_id) -> bool:
                with store.atomic():
                    locked = store.lock_run(run_id)
                    assert locked is not None
                    store.save_run(
                        transitions.wake(dataclasses.replace(locked, cancel_requested=True), T0)
                    )
                    return True

            rival = cancel
        else:
            rival = functools.partial(_wake_locked, store, run_id)
        answers, errors = _race(
            functools.partial(
                store.begin_guarded,
                transitions.wake(run, T0 + LEASE),
                run.wake_seq,
                _pending(0, "a"),
            ),
            rival,
        )
        assert not errors, errors
        stored = _stored(store, run_id)
        if other == "tick":
            assert answers[0] != answers[1], answers
            assert stored == [(0, "pending", "a" if answers[0] else "b")]
        else:
            assert answers[1], answers  # the rival always writes
            assert stored == ([(0, "pending", "a")] if answers[0] else [])
            row = _run_row(run_id)
            # Whoever came second saw the other: the run's wake_seq moved twice, or once.
            assert row[5] == (3 if answers[0] else 2)
    close_old_connections()
