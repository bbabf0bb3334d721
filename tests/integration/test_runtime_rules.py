"""Step execution rules on the Django store: atomic rollbacks, timed threads, invoke ids."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from django.db import connection
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    RetryPolicy,
    RunStatus,
    StepFailed,
    StepStatus,
    current_step,
    step,
    workflow,
)
from hookflow_gen.django.models import Step
from tests.conftest import run_worker
from tests.djangoapp.models import Entry

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime

pytestmark = pytest.mark.django_db


class Label(BaseModel):
    label: str


@step(atomic=True, timeout=0.2, retry=RetryPolicy(maximum_attempts=2))
def write_then_overrun(label: str) -> int:
    Entry.objects.create(label=label)
    if current_step().attempt == 1:
        time.sleep(0.5)  # past the timeout: this attempt's row must not stay
    return Entry.objects.filter(label=label).count()


@workflow
def atomic_timed(ctx: Context, item: Label) -> Flow[int]:
    return (yield from ctx.run("write", write_then_overrun, item.label))


def test_an_atomic_step_over_its_timeout_rolls_its_writes_back(runtime: Runtime) -> None:
    """An atomic attempt that overran its timeout leaves no row; the retry's row stays."""
    handle = atomic_timed.start(Label(label="timed"))
    run_worker(runtime)
    assert handle.result() == 1
    assert Entry.objects.filter(label="timed").count() == 1
    record = Step.objects.get(run_id=handle.run_id)
    assert record.attempts == 2


@step(atomic=True)
def write_then_return_junk(label: str) -> int:
    Entry.objects.create(label=label)
    return "not an int"  # type: ignore[return-value]  # the mistake under test


@workflow
def atomic_junk(ctx: Context, item: Label) -> Flow[str]:
    try:
        yield from ctx.run("write", write_then_return_junk, item.label)
    except StepFailed as failed:
        return failed.error_type
    return "stored"


def test_an_atomic_step_whose_result_does_not_validate_keeps_no_writes(runtime: Runtime) -> None:
    """A result that fails validation fails the atomic step and rolls its writes back."""
    handle = atomic_junk.start(Label(label="junk"))
    run_worker(runtime)
    assert handle.result().endswith("Fatal")
    assert not Entry.objects.filter(label="junk").exists()


@step(timeout=5)
def count_entries(label: str) -> int:
    return Entry.objects.filter(label=label).count()


@workflow
def timed_reads(ctx: Context, item: Label) -> Flow[list[int]]:
    counts: list[int] = []
    for n in range(6):
        counts.append((yield from ctx.run(f"read-{n}", count_entries, item.label)))
    return counts


def _backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_timed_steps_close_their_threads_connections(runtime: Runtime) -> None:
    """Each timed step's thread closes its own connection: none are left open."""
    if connection.vendor != "postgresql":
        pytest.skip("needs HOOKFLOW_TEST_DB=postgres: counts server connections")
    before = _backends()
    handle = timed_reads.start(Label(label="none"))
    run_worker(runtime)
    assert handle.result() == [0] * 6
    assert _backends() <= before + 1


def echo(label: str) -> str:
    return label


@workflow
def child_of_anyone(ctx: Context, item: Label) -> Flow[str]:
    return (yield from ctx.run("echo", echo, item.label))


@workflow
def adopts(ctx: Context, item: Label) -> Flow[tuple[str, str]]:
    return (
        yield from ctx.gather(
            ctx.invoke("a", child_of_anyone, item, run_id=f"shared-{item.label}"),
            ctx.invoke("b", child_of_anyone, item, run_id=f"shared-{item.label}"),
        )
    )


def test_invoke_of_an_existing_run_id_settles_from_that_run(runtime: Runtime) -> None:
    """Two invokes of one run id, one of them an existing run, both get its result."""
    existing = child_of_anyone.start(Label(label="x"), run_id="shared-x")
    handle = adopts.start(Label(label="x"))
    run_worker(runtime)
    assert existing.result() == "x"
    assert handle.result() == ("x", "x")


def test_invoke_of_a_finished_run_settles_at_once(runtime: Runtime) -> None:
    """Invoking a run id that already finished takes its result without waiting."""
    done = child_of_anyone.start(Label(label="y"), run_id="shared-y")
    run_worker(runtime)
    assert done.result() == "y"
    handle = adopts.start(Label(label="y"))
    run_worker(runtime)
    assert handle.result() == ("y", "y")


@workflow
def long_child_id(ctx: Context, item: Label) -> Flow[str]:
    try:
        return (yield from ctx.invoke("kid", child_of_anyone, item, run_id="k" * 300))
    except StepFailed as failed:
        return failed.error_type


def test_an_invoke_with_a_run_id_too_long_fails_its_step(runtime: Runtime) -> None:
    """A child run id that cannot be stored fails the invoke step, once, with the reason."""
    handle = long_child_id.start(Label(label="z"))
    run_worker(runtime)
    assert handle.result() == "hookflow_gen.exceptions.InvalidIdError"
    assert handle.status is RunStatus.COMPLETED
    (record,) = Step.objects.filter(run_id=handle.run_id)
    assert record.status == StepStatus.FAILED.value


class Noisy(Exception):
    pass


def nul_error() -> int:
    raise Noisy("bad \x00 byte")


@workflow(retry=RetryPolicy(maximum_attempts=1, initial_interval=timedelta(seconds=1)))
def nul_message(ctx: Context, item: Label) -> Flow[str]:
    try:
        yield from ctx.run("nul", nul_error)
    except StepFailed as failed:
        return failed.message
    return "no"


def test_an_error_message_with_a_nul_is_recorded(runtime: Runtime) -> None:
    """A NUL in an error message is stored (escaped), so the step fails once, not forever."""
    handle = nul_message.start(Label(label="n"))
    run_worker(runtime)
    assert handle.result() == "bad \\x00 byte"
