"""The Store contract: DjangoStore behaves like the MemoryStore reference."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from hookflow_gen._journal import ErrorInfo, StepRecord, StepStatus
from hookflow_gen._store import MemoryStore, RunState, RunStatus, Store
from hookflow_gen.django import DjangoStore

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(run_id: str = "r1", **changes: Any) -> RunState:
    base = RunState(
        run_id=run_id, workflow="linear", payload='{"a":1,"b":2}', created_at=T0, wake_at=T0,
        wake_seq=1,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _error() -> ErrorInfo:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        return ErrorInfo.from_exception(exc)


def _full(record: StepRecord) -> tuple[object, ...]:
    """Every field, including the ones left out of ``==``."""
    return (record, record.started_at, record.lease_until, record.lease_owner)


@pytest.fixture(params=["memory", "django"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each store under test."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield DjangoStore()


def test_create_run_then_get(store: Store) -> None:
    """A created run reads back field for field."""
    run = _run()
    with store.atomic():
        created, was_new = store.create_run(run)
    assert was_new
    assert created == run
    assert store.get_run("r1") == run


def test_create_run_twice_returns_existing(store: Store) -> None:
    """Creating a run whose id exists returns the stored run, unchanged."""
    with store.atomic():
        store.create_run(_run())
        existing, was_new = store.create_run(_run(payload='{"a":9,"b":9}'))
    assert not was_new
    assert existing.payload == '{"a":1,"b":2}'


def test_unknown_run_is_none(store: Store) -> None:
    """get_run and lock_run answer None for an unknown id."""
    assert store.get_run("nope") is None
    with store.atomic():
        assert store.lock_run("nope") is None


def test_save_run_updates_state(store: Store) -> None:
    """save_run stores status, result, error, finish time and wake-up fields."""
    error = _error()
    with store.atomic():
        store.create_run(_run())
        locked = store.lock_run("r1")
        assert locked == _run()
        finished = _run(
            status=RunStatus.FAILED, error=error, finished_at=T0 + timedelta(seconds=5),
            wake_at=None, wake_seq=4,
        )  # fmt: skip
        store.save_run(finished)
    assert store.get_run("r1") == finished


def test_child_run_fields_round_trip(store: Store) -> None:
    """A child run keeps its parent id and position; a result reads back."""
    child = _run("r1-0", parent_run_id="r1", parent_position=0)
    with store.atomic():
        store.create_run(child)
        done = _run("r1-0", parent_run_id="r1", parent_position=0, status=RunStatus.COMPLETED,
                    result='{"total":6}')  # fmt: skip
        store.save_run(done)
    assert store.get_run("r1-0") == done


def test_steps_ordered_and_from_position(store: Store) -> None:
    """steps() returns the journal by position, from the given position on."""
    with store.atomic():
        store.create_run(_run())
        for position in (2, 0, 1):
            store.save_step("r1", StepRecord(position, "run", f"s{position}", result="1"))
        assert [r.position for r in store.steps("r1")] == [0, 1, 2]
        assert [r.position for r in store.steps("r1", 1)] == [1, 2]
        assert store.steps("other") == []


def test_save_step_upserts_every_field(store: Store) -> None:
    """save_step replaces the record at its position, every field included."""
    pending = StepRecord(
        0, "run", "charge", status=StepStatus.PENDING, attempts=1, started_at=T0,
        lease_until=T0 + timedelta(minutes=5), lease_owner="owner-1",
    )  # fmt: skip
    failed = StepRecord(
        0, "run", "charge", status=StepStatus.FAILED, error=_error(), attempts=3,
        completed_at=T0 + timedelta(seconds=30), started_at=T0,
    )  # fmt: skip
    with store.atomic():
        store.create_run(_run())
        store.save_step("r1", pending)
        assert [_full(r) for r in store.steps("r1")] == [_full(pending)]
        store.save_step("r1", failed)
        assert [_full(r) for r in store.steps("r1")] == [_full(failed)]


def test_events_first_in_first_out(store: Store) -> None:
    """Buffered events are taken oldest first, per key, and only once."""
    with store.atomic():
        store.add_event("k", '"one"')
        store.add_event("other", '"x"')
        store.add_event("k", '"two"')
        assert store.take_event("k") == '"one"'
        assert store.take_event("k") == '"two"'
        assert store.take_event("k") is None
        assert store.take_event("other") == '"x"'


def test_event_waiters(store: Store) -> None:
    """Only pending event steps of running runs on the key wait, oldest run first."""
    with store.atomic():
        store.create_run(_run("late", created_at=T0 + timedelta(seconds=1)))
        store.create_run(_run("early"))
        store.create_run(_run("done", status=RunStatus.COMPLETED))
        waiting = StepRecord(1, "event", "approval", status=StepStatus.PENDING, key="k")
        for run_id in ("late", "early", "done"):
            store.save_step(run_id, waiting)
        store.save_step("early", StepRecord(0, "event", "first", key="k", result="null"))
        store.save_step("early", StepRecord(2, "event", "other", status=StepStatus.PENDING,
                                            key="k2"))  # fmt: skip
        assert store.waiters("event", "k") == [("early", 1), ("late", 1)]
        assert store.waiters("event", "none") == []


def test_atomic_rolls_back(store: Store) -> None:
    """An exception in atomic() undoes the block's writes."""
    with store.atomic():
        store.create_run(_run())

    def write_then_fail() -> None:
        with store.atomic():
            store.save_run(_run(status=RunStatus.CANCELLED))
            store.save_step("r1", StepRecord(0, "run", "a", result="1"))
            store.add_event("k", "1")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert store.get_run("r1") == _run()
    with store.atomic():
        assert store.steps("r1") == []
        assert store.take_event("k") is None


@pytest.mark.django_db(transaction=True)
def test_on_commit_after_outermost_commit(store: Store) -> None:
    """on_commit runs after the outermost commit, never after a rollback, at once outside."""
    calls: list[str] = []
    with store.atomic():
        with store.atomic():
            store.on_commit(lambda: calls.append("committed"))
        assert calls == []
    assert calls == ["committed"]

    def register_then_fail() -> None:
        with store.atomic():
            store.on_commit(lambda: calls.append("rolled back"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        register_then_fail()
    store.on_commit(lambda: calls.append("now"))
    assert calls == ["committed", "now"]


def test_save_steps_writes_several_records_in_one_call(store: Store) -> None:
    """save_steps() inserts new records and replaces existing ones, by position."""
    with store.atomic():
        store.create_run(_run())
        store.save_step("r1", StepRecord(0, "run", "a", status=StepStatus.PENDING, attempts=1))
        store.save_steps(
            "r1",
            [
                StepRecord(0, "run", "a", result='"done"', attempts=1),
                StepRecord(1, "run", "b", status=StepStatus.PENDING, attempts=1),
            ],
        )
        records = store.steps("r1")
    assert [(r.position, r.status, r.result) for r in records] == [
        (0, StepStatus.COMPLETED, '"done"'),
        (1, StepStatus.PENDING, None),
    ]


@pytest.mark.django_db
def test_datetime_parameters_match_what_the_orm_stores() -> None:
    """The store's own datetime preparation gives exactly what the ORM would send."""
    from django.db import connection

    from hookflow_gen.django._store import (
        _concrete,  # pyright: ignore[reportPrivateUsage]
        _prep_for,  # pyright: ignore[reportPrivateUsage]
    )
    from hookflow_gen.django.models import Step

    field = _concrete(Step, "completed_at")
    prep = _prep_for(field, connection)
    for value in (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=-5))),
    ):
        expected = field.get_db_prep_save(value, connection)
        assert (prep(value) if prep is not None else value) == expected


def test_a_failing_nested_block_rolls_back_only_its_own_writes(store: Store) -> None:
    """A nested atomic() that raises undoes its writes (a savepoint); the outer block's stay."""
    with store.atomic():
        store.create_run(_run())
        store.save_step("r1", StepRecord(0, "run", "a", result="1"))

        def failing_block() -> None:
            with store.atomic():
                store.save_step("r1", StepRecord(0, "run", "a", result="2"))
                store.save_step("r1", StepRecord(1, "run", "b", result="3"))
                store.add_event("k", "{}")
                raise RuntimeError("roll back the inner block")

        with pytest.raises(RuntimeError):
            failing_block()
        assert [(r.position, r.result) for r in store.steps("r1")] == [(0, "1")]
        assert store.take_event("k") is None
    assert store.get_run("r1") is not None
