"""Durability on the Django store under crashes and poison, with the in-process worker.

Each test pins one rule of the README's Durability section. A worker
"dying" is a ``BaseException`` raised at a phase of the tick (a SIGKILL
in-process: nothing after it runs); the next worker is a fresh runtime.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, cast

import pytest
from django.db import DatabaseError

import hookflow_gen
from hookflow_gen import Context, Flow, RetryPolicy, RunStatus, StepFailed, current_step, workflow
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen.django.models import Event, Run, Step
from hookflow_gen.exceptions import HookflowError, PayloadValidationError
from tests._invariant import InvariantStore, arm_after_commit
from tests.conftest import POSTGRES, run_worker
from tests.djangoapp.models import Entry
from tests.djangoapp.workflows import Approval, Numbers, Wait, approval, linear

if TYPE_CHECKING:
    from collections.abc import Generator

    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db

ONCE = RetryPolicy(maximum_attempts=1)
TWICE = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=10))
postgres_only = pytest.mark.skipif(
    not POSTGRES, reason="SQLite does not enforce what PostgreSQL refuses here"
)

# Calls of the step functions below, by name (some run on pool threads: no DB).
calls: dict[str, int] = {}
spans: list[tuple[float, float]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    spans.clear()


def _count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


class _Died(BaseException):
    """The worker process died here (a SIGKILL, in process: nothing after it runs)."""


class _DiesAt(InvariantStore):
    """The Django store of a worker that dies the first time its tick reaches ``phase``."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase
        self.died = False

    def cross(self, phase: str) -> None:
        if phase == self.phase and not self.died:
            self.died = True
            raise _Died(phase)


def _dying_runtime(clock: FakeClock, phase: str) -> Runtime:
    store = _DiesAt(phase)
    store.clock = clock
    return Runtime(store, DatabaseScheduler(), clock=clock)


# -- defect 1 ------------------------------------------------------------------------


def write_and_arm(label: str) -> int:
    Entry.objects.create(label=label)
    arm_after_commit()
    return Entry.objects.filter(label=label).count()


def plain_add(a: int, b: int) -> int:
    _count("plain_add")
    return a + b


@workflow
def durability_atomic_then_plain(ctx: Context, numbers: Numbers) -> Flow[int]:
    """An atomic step, then a plain one."""
    written = yield from ctx.run("write", write_and_arm, f"d1-{numbers.a}").options(atomic=True)
    return (yield from ctx.run("add", plain_add, written, numbers.b))


@pytest.mark.no_invariant  # the defect breaks it: the test asserts the outcome itself
def test_worker_dying_right_after_an_atomic_commit_strands_nothing(
    runtime: Runtime, clock: FakeClock
) -> None:
    """A worker killed just after an atomic step commits: the next worker finishes the run."""
    handle = durability_atomic_then_plain.start(Numbers(a=1, b=2))
    with pytest.raises(_Died):
        run_worker(_dying_runtime(clock, "after_atomic_commit"))
    assert Entry.objects.filter(label="d1-1").count() == 1
    clock.advance(runtime.lease * 2)
    run_worker(runtime)
    assert handle.status is RunStatus.COMPLETED
    assert handle.result() == 3
    assert Entry.objects.filter(label="d1-1").count() == 1


# -- defect 3 ------------------------------------------------------------------------


@workflow
def durability_adopts_child(ctx: Context, numbers: Numbers) -> Flow[int]:
    """Invokes ``linear`` under a run id that may exist already."""
    child = yield from ctx.invoke("child", linear, numbers, run_id=f"existing-{numbers.a}")
    return child.total + 1


@workflow
def durability_twin_children(ctx: Context, numbers: Numbers) -> Flow[int]:
    """Two invokes of one run id in one gather."""
    left, right = yield from ctx.gather(
        ctx.invoke("left", linear, numbers, run_id=f"twin-{numbers.a}"),
        ctx.invoke("right", linear, numbers, run_id=f"twin-{numbers.a}"),
    )
    return left.total + right.total


def _worker_rounds(runtime: Runtime, clock: FakeClock, rounds: int = 10) -> int:
    """Ticks a worker runs over ``rounds`` leases: what is due, then a lease later, and so on."""
    ticks = 0
    for _ in range(rounds):
        ticks += run_worker(runtime, once=True, max_ticks=50)
        clock.advance(runtime.lease + timedelta(seconds=1))
    return ticks


def _finished_or_explained(run: Run) -> None:
    assert run.status != RunStatus.RUNNING.value, f"run {run.run_id} still waits"


def test_invoke_of_an_existing_run_id_does_not_wait_forever(runtime: Runtime) -> None:
    """A parent invoking a run id that exists gets its result (or a clear failure)."""
    linear.start(Numbers(a=1, b=2), run_id="existing-1")
    handle = durability_adopts_child.start(Numbers(a=1, b=2))
    run_worker(runtime)
    _finished_or_explained(Run.objects.get(pk=handle.run_id))
    if handle.status is RunStatus.COMPLETED:
        assert handle.result() == 7


def test_two_invokes_of_one_run_id_in_a_gather_do_not_wait_forever(runtime: Runtime) -> None:
    """Two invokes of the same child run id in one gather: the parent finishes."""
    handle = durability_twin_children.start(Numbers(a=1, b=2))
    run_worker(runtime)
    _finished_or_explained(Run.objects.get(pk=handle.run_id))
    if handle.status is RunStatus.COMPLETED:
        assert handle.result() == 12


# -- defect 5 ------------------------------------------------------------------------


def nul_error() -> int:
    _count("nul_error")
    raise ValueError("bad byte \x00 here")


@workflow
def durability_nul_error(ctx: Context, numbers: Numbers) -> Flow[int]:
    """A step whose error message PostgreSQL's JSON column refuses."""
    return (yield from ctx.run("nul", nul_error).options(retry=ONCE))


@workflow
def durability_long_child_id(ctx: Context, numbers: Numbers) -> Flow[int]:
    """Invokes a child under a run id longer than the column."""
    child = yield from ctx.invoke("child", linear, numbers, run_id="c" * 300)
    return child.total


@postgres_only
def test_unwritable_error_message_fails_the_step_once(runtime: Runtime, clock: FakeClock) -> None:
    """A step error with a NUL character: the step runs once and the run fails, bounded."""
    handle = durability_nul_error.start(Numbers(a=1, b=2))
    ticks = _worker_rounds(runtime, clock)
    assert calls == {"nul_error": 1}
    assert handle.status is RunStatus.FAILED
    assert ticks < 10


@postgres_only
def test_child_run_id_too_long_fails_the_parent(runtime: Runtime, clock: FakeClock) -> None:
    """A child run id the column cannot hold fails the parent with a clear error, bounded."""
    handle = durability_long_child_id.start(Numbers(a=1, b=2))
    ticks = _worker_rounds(runtime, clock)
    assert ticks < 10
    state = handle.state()
    assert state.status is RunStatus.FAILED
    assert state.error is not None and "run id" in state.error.message


# -- defect 6 and 7 --------------------------------------------------------------------


def test_stored_payload_that_no_longer_validates_fails_the_run(
    runtime: Runtime, clock: FakeClock
) -> None:
    """A payload the model no longer accepts fails the run with the error, after bounded ticks."""
    handle = linear.start(Numbers(a=1, b=2))
    Run.objects.filter(pk=handle.run_id).update(payload='{"a": "one", "b": 2}')
    ticks = _worker_rounds(runtime, clock)
    assert ticks < 10
    state = handle.state()
    assert state.status is RunStatus.FAILED
    assert state.error is not None and "payload" in state.error.message


def test_run_of_an_unknown_workflow_is_visible_and_not_retried_forever(
    runtime: Runtime, clock: FakeClock
) -> None:
    """A run whose workflow is gone stops being ticked and shows why."""
    handle = linear.start(Numbers(a=1, b=2))
    Run.objects.filter(pk=handle.run_id).update(workflow="durability_renamed_away")
    ticks = _worker_rounds(runtime, clock)
    assert ticks < 10
    error = Run.objects.get(pk=handle.run_id).error
    assert error is not None and "durability_renamed_away" in str(error)


# -- defect 8 ------------------------------------------------------------------------


def write_then_fail_once(label: str) -> int:
    Entry.objects.create(label=label)
    if current_step().attempt == 1:
        raise RuntimeError("failed after writing")
    return Entry.objects.filter(label=label).count()


def write_bad_result(label: str) -> int:
    Entry.objects.create(label=label)
    return cast("int", "not a number")


@workflow
def durability_atomic_timeout(ctx: Context, numbers: Numbers) -> Flow[int]:
    """An atomic step with a timeout that fails after writing on its first attempt."""
    step = ctx.run("write", write_then_fail_once, f"d8-{numbers.a}")
    return (yield from step.options(atomic=True, timeout=timedelta(seconds=60), retry=TWICE))


@workflow
def durability_atomic_bad_result(ctx: Context, numbers: Numbers) -> Flow[str]:
    """An atomic step whose result does not fit its declared type."""
    try:
        yield from ctx.run("write", write_bad_result, f"d8b-{numbers.a}").options(
            atomic=True, retry=ONCE
        )
    except StepFailed as exc:
        return f"failed: {exc.message[:40]}"
    return "written"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_atomic_step_with_timeout_rolls_back_a_failed_attempt(runtime: Runtime) -> None:
    """An atomic step with a timeout: the failed attempt's row is rolled back, one row stays."""
    handle = durability_atomic_timeout.start(Numbers(a=1, b=2))
    run_worker(runtime)
    assert handle.result() == 1
    assert Entry.objects.filter(label="d8-1").count() == 1


def test_atomic_step_with_an_invalid_result_writes_nothing(runtime: Runtime) -> None:
    """An atomic step recorded FAILED for its result's type leaves none of its rows behind."""
    handle = durability_atomic_bad_result.start(Numbers(a=1, b=2))
    run_worker(runtime)
    assert handle.result().startswith("failed")
    assert Entry.objects.filter(label="d8b-1").count() == 0


# -- defect 9 ------------------------------------------------------------------------


def slow_first_attempt() -> int:
    started = time.monotonic()
    if current_step().attempt == 1:
        time.sleep(1.0)
    spans.append((started, time.monotonic()))
    return current_step().attempt


@workflow
def durability_timeout_retry(ctx: Context, numbers: Numbers) -> Flow[int]:
    """A step whose first attempt outlives its timeout."""
    step = ctx.run("slow", slow_first_attempt)
    return (yield from step.options(timeout=timedelta(seconds=0.2), retry=TWICE))


def test_timed_out_attempt_never_overlaps_its_retry(runtime: Runtime) -> None:
    """A timed-out attempt is stopped before its retry starts: attempts never overlap."""
    handle = durability_timeout_retry.start(Numbers(a=1, b=2))
    run_worker(runtime)
    assert handle.result() == 2
    deadline = time.monotonic() + 30
    while len(spans) < 2 and time.monotonic() < deadline and threading.active_count() > 1:
        time.sleep(0.05)  # the first attempt's thread, if it was not stopped, ends later
    ordered = sorted(spans)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ordered))


# -- defect 15 -----------------------------------------------------------------------


def test_run_that_no_longer_replays_does_not_block_notify(runtime: Runtime) -> None:
    """notify still delivers to the other waiter on the key when one run cannot replay."""
    broken = approval.start(Wait(key="shared"))
    healthy = approval.start(Wait(key="shared"))
    run_worker(runtime)
    Step.objects.filter(run_id=broken.run_id, position=0).update(name="renamed-in-code")
    runtime._warm.clear()  # pyright: ignore[reportPrivateUsage]  # a fresh worker process
    delivered = hookflow_gen.notify("shared", Approval(approved_by="ann"))
    assert delivered == 1
    run_worker(runtime)
    assert healthy.result() == "ann"
    assert not Event.objects.filter(key="shared").exists()


# -- bad input to start() ----------------------------------------------------------------


@contextlib.contextmanager
def _clear_error() -> Generator[None, None, None]:
    """The call raises a hookflow error, ValueError or TypeError: never a database error."""
    with pytest.raises((HookflowError, ValueError, TypeError)) as caught:
        yield
    assert not isinstance(caught.value, DatabaseError), caught.value
    assert "run" in str(caught.value).lower()


@postgres_only
def test_start_refuses_a_run_id_too_long_clearly(runtime: Runtime) -> None:
    """A run id over 255 characters is refused with a clear error, not a DataError."""
    with _clear_error():
        linear.start(Numbers(a=1, b=2), run_id="r" * 300)


@postgres_only
def test_start_refuses_a_run_id_with_a_nul_clearly(runtime: Runtime) -> None:
    """A run id with a NUL character is refused with a clear error, not a database error."""
    with _clear_error():
        linear.start(Numbers(a=1, b=2), run_id="bad\x00id")


def test_start_refuses_a_run_id_that_is_not_a_string(runtime: Runtime) -> None:
    """An int run id is refused: run ids are strings."""
    with _clear_error():
        linear.start(Numbers(a=1, b=2), run_id=7)  # type: ignore[arg-type]  # the mistake under test
    assert not Run.objects.exists()


def test_start_validates_a_model_construct_payload(runtime: Runtime) -> None:
    """A payload built with ``model_construct`` and missing a field is refused by ``start``."""
    with pytest.raises(PayloadValidationError):
        linear.start(Numbers.model_construct(a=1))
    assert not Run.objects.exists()
