"""Cron schedules on the database scheduler: one run per tick, a cursor across restarts."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from django.core.management import call_command

from hookflow_gen import RunStatus
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]  # clean-up
from hookflow_gen.django._worker import Worker
from hookflow_gen.django.models import Run, ScheduleCursor
from tests.djangoapp import scheduled
from tests.djangoapp.models import Execution

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime(2026, 3, 1, 12, 1, 30, tzinfo=UTC)


@pytest.fixture
def five_minutely(clock: FakeClock) -> Iterator[None]:
    """The every-five-minutes schedule registered, the clock at 12:01:30."""
    clock.advance(START - clock.now())
    scheduled.register(scheduled.every_five_minutes)
    yield
    _registry.pop(scheduled.every_five_minutes.name, None)


def _worker_round(runtime: Runtime) -> None:
    """One worker, as if started afresh: starts what is due, ticks runs, exits when idle."""
    Worker(runtime, poll_interval=0.01).run(until_idle=0.0)


def _ticks() -> list[str]:
    return sorted(
        Run.objects.filter(workflow="scheduled-every-five-minutes").values_list("run_id", flat=True)
    )


@pytest.mark.usefixtures("five_minutely")
def test_each_tick_starts_one_run_across_restarts(runtime: Runtime, clock: FakeClock) -> None:
    """Ticks start one run each, with the tick in its id; a restarted worker repeats none."""
    _worker_round(runtime)
    # First seen at 12:01:30: earlier ticks are not due.
    assert _ticks() == []
    assert ScheduleCursor.objects.get(name="five-minutely").last_tick == START
    clock.advance(timedelta(minutes=4))  # 12:05:30: the 12:05 tick is due
    _worker_round(runtime)
    _worker_round(runtime)
    assert _ticks() == ["five-minutely@2026-03-01T12:05:00Z"]
    clock.advance(timedelta(minutes=5))  # 12:10:30
    _worker_round(runtime)
    assert _ticks() == ["five-minutely@2026-03-01T12:05:00Z", "five-minutely@2026-03-01T12:10:00Z"]
    runs = Run.objects.filter(workflow="scheduled-every-five-minutes")
    assert all(run.status == RunStatus.COMPLETED.value for run in runs)
    assert Execution.objects.filter(name="note").count() == 2
    cursor = ScheduleCursor.objects.get(name="five-minutely")
    assert cursor.last_run_id == "five-minutely@2026-03-01T12:10:00Z"


@pytest.mark.usefixtures("five_minutely")
def test_after_downtime_only_the_latest_ticks_catch_up(
    runtime: Runtime, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An hour down: catch_up=2 starts the two latest missed ticks and skips the ten before."""
    _worker_round(runtime)
    clock.advance(timedelta(hours=1))  # 13:01:30
    with caplog.at_level(logging.WARNING, logger="hookflow_gen.schedules"):
        _worker_round(runtime)
    assert _ticks() == ["five-minutely@2026-03-01T12:55:00Z", "five-minutely@2026-03-01T13:00:00Z"]
    assert "missed and are skipped" in caplog.text


@pytest.mark.usefixtures("five_minutely")
def test_a_waiting_worker_wakes_for_the_next_tick(runtime: Runtime, clock: FakeClock) -> None:
    """With nothing else due, the worker sleeps until the next tick and starts its run."""
    _worker_round(runtime)
    # Idle up to ten minutes: the fake clock jumps to each tick as the worker waits.
    Worker(runtime, poll_interval=3600).run(until_idle=600, max_ticks=2)
    assert _ticks() == ["five-minutely@2026-03-01T12:05:00Z", "five-minutely@2026-03-01T12:10:00Z"]


@pytest.mark.usefixtures("five_minutely")
def test_schedules_command_lists_next_fire_times(runtime: Runtime, clock: FakeClock) -> None:
    """``hookflow schedules`` shows each schedule's cron, last tick, next tick and last run."""
    out = io.StringIO()
    call_command("hookflow", "schedules", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if "five-minutely" in line)
    assert "*/5 * * * *" in line
    assert "2026-03-01 12:05:00" in line  # the next tick
    _worker_round(runtime)
    clock.advance(timedelta(minutes=4))
    _worker_round(runtime)
    out = io.StringIO()
    call_command("hookflow", "schedules", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if "five-minutely" in line)
    assert "2026-03-01 12:10:00" in line
    assert "five-minutely@2026-03-01T12:05:00Z" in line


def test_worker_without_schedules_starts_none(runtime: Runtime, clock: FakeClock) -> None:
    """``schedules=False`` (a QStash site's worker) leaves the ticks to QStash."""
    clock.advance(START - clock.now())
    scheduled.register(scheduled.every_five_minutes)
    try:
        for _ in range(3):
            Worker(runtime, poll_interval=0.01, schedules=False).run(until_idle=0.0)
            clock.advance(timedelta(minutes=5))
    finally:
        _registry.pop(scheduled.every_five_minutes.name, None)
    assert _ticks() == []
    assert not ScheduleCursor.objects.exists()
