"""``hookflow worker --concurrency N``: ticks on threads, each with its own connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connection, connections

from hookflow_gen import RunStatus
from hookflow_gen.django._worker import Worker
from hookflow_gen.django.models import Run
from tests.conftest import POSTGRES
from tests.djangoapp import workflows
from tests.djangoapp.models import Execution
from tests.djangoapp.workflows import Fan, Meet, fan_out, rendezvous

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime, TickReport

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def barrier() -> Iterator[str]:
    """A fresh barrier name; the barriers and probes are forgotten after the test."""
    name = f"barrier-{time.monotonic_ns()}"
    yield name
    workflows.RENDEZVOUS.pop(name, None)
    workflows.PROBES.pop(name, None)


def _connections_to_test_database() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("concurrency", [4, 8])
def test_ticks_overlap_up_to_the_concurrency(
    runtime: Runtime, barrier: str, concurrency: int
) -> None:
    """N runs whose steps wait for each other at a barrier all complete: N ticks ran at once."""
    # A barrier that breaks when fewer than N steps arrive within the minute:
    # ticks that ran one after the other would fail every step.
    workflows.RENDEZVOUS[barrier] = threading.Barrier(concurrency, timeout=60)
    handles = [rendezvous.start(Meet(barrier=barrier)) for _ in range(concurrency)]
    ticks = Worker(runtime, poll_interval=0.05, concurrency=concurrency).run(until_idle=0.0)
    assert ticks >= concurrency
    assert sorted(handle.result() for handle in handles) == list(range(concurrency))
    assert Execution.objects.filter(name="meet").count() == concurrency


def test_ticks_beyond_the_concurrency_wait_for_a_free_thread(
    runtime: Runtime, barrier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six runs meeting in pairs on two threads: two ticks at once, never more, all complete."""
    workflows.RENDEZVOUS[barrier] = threading.Barrier(2, timeout=60)
    ticks = _record_ticks(runtime, monkeypatch)
    handles = [rendezvous.start(Meet(barrier=barrier)) for _ in range(6)]
    Worker(runtime, poll_interval=0.05, concurrency=2).run(until_idle=0.0)
    assert all(handle.status is RunStatus.COMPLETED for handle in handles)
    assert ticks.most_at_once == 2


class _Ticks:
    """What ``_record_ticks`` saw: runs ticked twice at once, and the most ticks at once."""

    def __init__(self) -> None:
        self.overlaps: list[str] = []
        self.most_at_once = 0


def _record_ticks(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> _Ticks:
    """Wrap ``runtime.tick`` to see which ticks overlap."""
    seen = _Ticks()
    active: list[str] = []
    lock = threading.Lock()
    tick = runtime.tick

    def recorded(run_id: str, **options: Any) -> TickReport:
        with lock:
            if run_id in active:
                seen.overlaps.append(run_id)
            active.append(run_id)
            seen.most_at_once = max(seen.most_at_once, len(active))
        try:
            return tick(run_id, **options)
        finally:
            with lock:
                active.remove(run_id)

    monkeypatch.setattr(runtime, "tick", recorded)
    return seen


@pytest.mark.parametrize("attempt", range(3 if POSTGRES else 1))
def test_no_run_is_ticked_twice_at_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, attempt: int
) -> None:
    """Gathers keep their runs due while ticked: still, no two threads tick one run at once."""
    ticks = _record_ticks(runtime, monkeypatch)
    handles = [fan_out.start(Fan(width=4, delay=0.02)) for _ in range(12)]
    Worker(runtime, poll_interval=0.02, concurrency=8).run(until_idle=0.0)
    assert ticks.overlaps == []
    assert ticks.most_at_once > 1
    assert all(handle.result() == [0, 1, 2, 3] for handle in handles)
    # Each branch ran once: no tick ran a step another tick held.
    assert Execution.objects.count() == 12 * 4


def test_a_failing_tick_does_not_stop_the_worker(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick that raises is logged; the other runs complete, and so does it once retried."""
    handles = [fan_out.start(Fan(width=2)) for _ in range(4)]
    doomed = handles[0].run_id
    failed: list[str] = []
    tick = runtime.tick

    def flaky_tick(run_id: str, **options: Any) -> TickReport:
        if run_id == doomed and not failed:
            failed.append(run_id)
            raise RuntimeError("the database went away")
        return tick(run_id, **options)

    monkeypatch.setattr(runtime, "tick", flaky_tick)
    # The failed tick's claim lapses after the lease, which the fake clock
    # passes while the worker waits: then the run is ticked again.
    monkeypatch.setattr(runtime, "lease", timedelta(seconds=0.5))
    Worker(runtime, poll_interval=60, concurrency=4).run(until_idle=60)
    assert failed == [doomed]
    assert all(handle.result() == [0, 1] for handle in handles)


@pytest.mark.postgres
def test_tick_threads_close_their_connections(
    runtime: Runtime, barrier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Persistent connections: at most one per tick thread plus the claimer's, none left after."""
    # CONN_MAX_AGE=None keeps connections between ticks: only the end of a
    # thread closes them.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    concurrency = 4
    workflows.RENDEZVOUS[barrier] = threading.Barrier(concurrency, timeout=60)
    seen: list[int] = []
    workflows.PROBES[barrier] = lambda: seen.append(_connections_to_test_database())
    before = _connections_to_test_database()
    for _ in range(3):
        for _ in range(concurrency):
            rendezvous.start(Meet(barrier=barrier))
        Worker(runtime, poll_interval=0.05, concurrency=concurrency).run(until_idle=0.0)
    assert Run.objects.filter(status="completed").count() == 3 * concurrency
    # The test's own connection claims runs; each tick thread adds one.
    assert before == 1
    assert max(seen) <= 1 + concurrency
    deadline = time.monotonic() + 30
    while _connections_to_test_database() > before and time.monotonic() < deadline:
        time.sleep(0.05)  # a closed connection's backend leaves pg_stat_activity soon after
    assert _connections_to_test_database() == before


def test_concurrency_must_be_positive(runtime: Runtime) -> None:
    """A concurrency below 1 is refused with a clear error."""
    from hookflow_gen.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least 1"):
        Worker(runtime, poll_interval=1.0, concurrency=0)
