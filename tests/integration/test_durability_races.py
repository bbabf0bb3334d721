"""Durability rules that need PostgreSQL: the notify race, self-killing steps, step threads'
connections."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from hookflow_gen import Context, Flow, RetryPolicy, RunStatus, workflow
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django.models import Event, Run
from tests._invariant import InvariantStore
from tests.chaos._supervisor import Supervisor
from tests.chaos.workflows import Poison, chaos_poison
from tests.conftest import run_worker
from tests.djangoapp.workflows import Approval, Numbers, Wait, approval

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ITERATIONS = 200


# -- defect 2 ------------------------------------------------------------------------


class _HoldsAfterNoEvent(InvariantStore):
    """A store whose tick, having found no buffered event, says so and holds its transaction.

    The hold (a few milliseconds, random) keeps the race window open long enough
    for the notifier, who waits for the signal, to run inside it.
    """

    def __init__(self, reached: threading.Event, hold: float) -> None:
        super().__init__()
        self.reached = reached
        self.hold = hold

    def take_event(self, key: str) -> str | None:
        found = super().take_event(key)
        if found is None:
            self.reached.set()
            time.sleep(self.hold)
        return found


def _race_once(i: int, rng: random.Random) -> str | None:
    """One run reaching its event wait while the event is sent; what went wrong, if anything."""
    key = f"race-{i}"
    handle = approval.start(Wait(key=key))
    reached = threading.Event()
    ticker = Runtime(
        _HoldsAfterNoEvent(reached, rng.uniform(0, 0.02)), DatabaseScheduler(), warm_runs=0
    )
    notifier = build_runtime(get_settings())
    in_window = rng.random() < 0.75  # else a plain race, no waiting for the window
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            ticker.tick(handle.run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    def send() -> None:
        try:
            if in_window:
                reached.wait(timeout=30)
            notifier.notify(key, Approval(approved_by=f"n{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        if errors:
            return f"iteration {i}: {errors!r}"
        notifier.tick(handle.run_id)  # whatever is due now, as a worker would
        buffered = Event.objects.filter(key=key).count()
        if handle.status is not RunStatus.COMPLETED or buffered:
            race = "in the window" if in_window else "a free race"
            return f"iteration {i} ({race}): run {handle.status.value}, {buffered} event(s) left"
        return None
    finally:
        ticker.close()
        notifier.close()


@pytest.mark.no_invariant  # the lost event strands runs: the test asserts the outcome itself
def test_notify_racing_wait_for_event_never_loses_the_event() -> None:
    """notify while a run reaches its event wait, 200 times: every run gets its event."""
    rng = random.Random(8)
    for i in range(ITERATIONS):
        lost = _race_once(i, rng)
        assert lost is None, lost  # one lost event is the defect: no need to strand 200 runs


# -- defect 4 ------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_step_that_kills_its_worker_fails_after_maximum_attempts(
    atomic: bool, tmp_path: Path
) -> None:
    """A step that SIGKILLs its worker every time fails after ``maximum_attempts`` (2)."""
    marker = tmp_path / "attempts"
    handle = chaos_poison.start(Poison(marker=str(marker), atomic=atomic))
    supervisor = Supervisor(tmp_path, chaos="", max_kills=0, workers=1, lease=1.5)
    supervisor.run([handle.run_id], deadline=150, max_restarts=4)
    attempts = marker.read_text().splitlines() if marker.exists() else []
    assert handle.status is RunStatus.COMPLETED, f"still {handle.status}; attempts {attempts}"
    assert handle.result() == "gave up after 2 attempts"
    assert len(attempts) == 2


# -- defect 10 -----------------------------------------------------------------------


def backend_pid() -> int:
    """The PostgreSQL backend of the connection this step function uses."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


FEW = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=10))


@workflow
def durability_backend(ctx: Context, numbers: Numbers) -> Flow[int]:
    """A step with a timeout (run on a pool thread) that reads its database backend's pid."""
    step = ctx.run("pid", backend_pid)
    return (yield from step.options(timeout=timedelta(seconds=30), retry=FEW))


def _alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] > 0


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's view of the connection
    assert not _alive(pid)


def test_steps_with_a_timeout_survive_a_lost_database_connection(runtime: Runtime) -> None:
    """A pool thread's connection killed by the server: the next step with a timeout succeeds."""
    first = durability_backend.start(Numbers(a=1, b=0))
    run_worker(runtime)
    pid = first.result()
    _terminate(pid)  # as a database restart would
    second = durability_backend.start(Numbers(a=2, b=0))
    run_worker(runtime)
    assert second.status is RunStatus.COMPLETED, Run.objects.get(pk=second.run_id).error


def test_closing_the_runtime_closes_its_pool_connections() -> None:
    """``Runtime.close`` leaves no database connection of its step threads open."""
    runtime = build_runtime(get_settings())
    handle = durability_backend.start(Numbers(a=1, b=0))
    runtime.tick(handle.run_id)
    pid = handle.result()
    runtime.close()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's view of the connection
    assert not _alive(pid), "the step thread's connection is still open"
