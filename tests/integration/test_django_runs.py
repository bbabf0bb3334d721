"""Runs on the Django store, driven by the database worker (in process, fake clock)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from django.db import connection, transaction

import hookflow_gen
from hookflow_gen import RunStatus, StepStatus
from hookflow_gen.django.models import Event, Run, Step
from hookflow_gen.exceptions import PayloadValidationError, UnknownRunError, WorkflowFailed
from tests.conftest import run_worker
from tests.djangoapp.models import Entry, Execution
from tests.djangoapp.workflows import (
    Fan,
    Flaky,
    Nap,
    Numbers,
    Total,
    Wait,
    Write,
    approval,
    atomic_write,
    doomed,
    fan_out,
    linear,
    parent,
    retrying,
    sleeper,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db


def _executions(run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in Execution.objects.filter(run_id=run_id).values_list("name", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_linear_run_completes_with_typed_result(runtime: Runtime) -> None:
    """A worker runs a two-step workflow to its typed result, each step once."""
    handle = linear.start(Numbers(a=1, b=2))
    assert handle.status is RunStatus.RUNNING
    run_worker(runtime)
    assert handle.result() == Total(total=6)
    assert _executions(handle.run_id) == {"add": 1, "double": 1}
    steps = list(Step.objects.filter(run_id=handle.run_id).values_list("name", "status"))
    assert steps == [("add", "completed"), ("double", "completed")]


def test_start_with_run_id_is_idempotent(runtime: Runtime) -> None:
    """Starting twice with one explicit run id makes one run."""
    first = linear.start(Numbers(a=1, b=2), run_id="order-7")
    second = linear.start(Numbers(a=5, b=5), run_id="order-7")
    assert first.run_id == second.run_id == "order-7"
    assert Run.objects.filter(run_id="order-7").count() == 1
    run_worker(runtime)
    assert second.result() == Total(total=6)


def test_start_with_invalid_payload_stores_nothing(runtime: Runtime) -> None:
    """A payload that does not fit the workflow raises and creates no run."""
    with pytest.raises(PayloadValidationError):
        linear.start({"a": "not a number"})  # type: ignore[arg-type]  # the mistake under test
    assert not Run.objects.exists()


def test_sleep_wakes_on_time(runtime: Runtime, clock: FakeClock) -> None:
    """A sleeping run is not due before its wake-up and completes right after it."""
    handle = sleeper.start(Nap(seconds=3600))
    run_worker(runtime, once=True)
    run = handle.state()
    assert run.status is RunStatus.RUNNING
    assert run.wake_at == clock.now() + timedelta(seconds=3600)
    clock.advance(3599)
    assert run_worker(runtime, once=True) == 0
    clock.advance(1)
    assert run_worker(runtime, once=True) == 1
    assert handle.result() == "awake"


def test_event_delivered_to_waiting_run(runtime: Runtime) -> None:
    """notify() completes a waiting event step with the typed payload."""
    handle = approval.start(Wait(key="order-1"))
    run_worker(runtime)
    assert handle.status is RunStatus.RUNNING
    assert handle.state().wake_at is None
    assert hookflow_gen.notify("order-1", {"approved_by": "ann"}) == 1
    run_worker(runtime)
    assert handle.result() == "ann"


def test_event_before_waiter_is_buffered(runtime: Runtime) -> None:
    """An event sent before any run waits is kept and delivered when one does."""
    assert hookflow_gen.notify("order-2", {"approved_by": "bob"}) == 0
    assert Event.objects.filter(key="order-2").count() == 1
    handle = approval.start(Wait(key="order-2"))
    run_worker(runtime)
    assert handle.result() == "bob"
    assert not Event.objects.exists()


def test_invalid_event_changes_nothing(runtime: Runtime) -> None:
    """An event failing the step's model raises PayloadValidationError and changes no state."""
    handle = approval.start(Wait(key="order-3"))
    run_worker(runtime)
    before = list(Step.objects.values_list("status", "result", "attempts"))
    with pytest.raises(PayloadValidationError):
        hookflow_gen.notify("order-3", {"approved_by": ["not", "a", "string"]})
    assert list(Step.objects.values_list("status", "result", "attempts")) == before
    assert not Event.objects.exists()
    assert handle.status is RunStatus.RUNNING


def test_child_workflow_returns_typed_result(runtime: Runtime) -> None:
    """invoke() runs a child run and hands its typed result to the parent."""
    handle = parent.start(Numbers(a=1, b=2))
    run_worker(runtime)
    assert handle.result() == 7
    child = Run.objects.get(parent_run_id=handle.run_id)
    assert (child.status, child.parent_position, child.workflow) == ("completed", 0, "linear")


def test_gather_runs_every_branch_once(runtime: Runtime) -> None:
    """gather() runs each branch once and returns their results in order."""
    handle = fan_out.start(Fan(width=4))
    run_worker(runtime)
    assert handle.result() == [0, 1, 2, 3]
    assert _executions(handle.run_id) == {f"branch-{i}": 1 for i in range(4)}


def test_retries_back_off_then_succeed(runtime: Runtime, clock: FakeClock) -> None:
    """A failing step is retried after its back-off and its success is recorded."""
    start = clock.now()
    handle = retrying.start(Flaky(failures=2, attempts=3))
    run_worker(runtime)
    assert handle.result() == "ok on attempt 3"
    assert clock.now() - start >= timedelta(seconds=10 + 20)
    step = Step.objects.get(run_id=handle.run_id)
    assert (step.status, step.attempts) == ("completed", 3)


def test_retries_exhausted_raise_step_failed(runtime: Runtime) -> None:
    """After its last attempt a step throws StepFailed, which the workflow catches."""
    handle = retrying.start(Flaky(failures=5, attempts=2))
    run_worker(runtime)
    assert handle.result() == "gave up after 2 attempts: attempt 2 failed"
    assert _executions(handle.run_id) == {"flaky": 2}


def test_on_failure_handler_runs(
    runtime: Runtime, django_capture_on_commit_callbacks: Callable[..., object]
) -> None:
    """A run that fails for good is marked failed and its on_failure handler runs."""
    handle = doomed.start(Numbers(a=0, b=0))
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[attr-defined]  # a context manager
        run_worker(runtime)
    with pytest.raises(WorkflowFailed, match="boom"):
        handle.result()
    assert Execution.objects.filter(run_id=handle.run_id, name="on_failure").count() == 1


def test_cancel_stops_run(runtime: Runtime) -> None:
    """A cancelled run is never ticked again."""
    handle = sleeper.start(Nap(seconds=60))
    run_worker(runtime, once=True)
    hookflow_gen.cancel(handle.run_id)
    assert handle.status is RunStatus.CANCELLED
    assert handle.state().wake_at is None
    assert run_worker(runtime) == 0


def test_cancel_unknown_run(runtime: Runtime) -> None:
    """Cancelling an unknown run id raises UnknownRunError."""
    with pytest.raises(UnknownRunError):
        hookflow_gen.cancel("no-such-run")


def test_atomic_step_exactly_once(runtime: Runtime) -> None:
    """An atomic step's write commits with its checkpoint: a failed attempt leaves none."""
    handle = atomic_write.start(Write(label="x", fail_first=True))
    run_worker(runtime)
    assert handle.result() == 1
    assert Entry.objects.filter(label="x").count() == 1
    step = Step.objects.get(run_id=handle.run_id)
    assert (step.status, step.attempts, step.lease_owner) == (StepStatus.COMPLETED, 2, None)


@pytest.mark.django_db(transaction=True)
def test_start_in_transaction_runs_after_commit(inline_runtime: Runtime) -> None:
    """With the inline scheduler, a run started in a transaction runs only once it commits."""
    with transaction.atomic():
        handle = linear.start(Numbers(a=2, b=3))
        assert handle.status is RunStatus.RUNNING
        assert not Execution.objects.exists()
    assert handle.result() == Total(total=10)


@pytest.mark.django_db(transaction=True)
def test_start_in_rolled_back_transaction_leaves_nothing(inline_runtime: Runtime) -> None:
    """A run started in a transaction that rolls back never existed."""

    def start_then_fail() -> None:
        with transaction.atomic():
            linear.start(Numbers(a=2, b=3), run_id="ghost")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        start_then_fail()
    assert not Run.objects.filter(run_id="ghost").exists()
    assert not Execution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_database_wakeup_visible_on_commit(runtime: Runtime) -> None:
    """With the database scheduler, other connections see the run and its wake-up on commit."""

    def seen_elsewhere() -> bool:
        found: list[bool] = []

        def look() -> None:
            try:
                found.append(Run.objects.filter(run_id="r", wake_at__isnull=False).exists())
            finally:
                connection.close()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return found[0]

    with transaction.atomic():
        linear.start(Numbers(a=1, b=1), run_id="r")
        assert not seen_elsewhere()
    assert seen_elsewhere()
