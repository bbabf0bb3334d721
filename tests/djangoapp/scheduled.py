"""Scheduled workflows of the schedule tests: registered only by the tests that use them.

A registered schedule is started by every worker, so these stay out of the
registry unless a test (``register``), or a worker subprocess started with
``HOOKFLOW_TEST_SCHEDULES=1``, puts them there.
"""

from __future__ import annotations

from typing import Any

from hookflow_gen import Context, Flow, Schedule, Workflow, current_step
from hookflow_gen._workflow import _register  # pyright: ignore[reportPrivateUsage]  # on demand

from .models import Execution


def note_tick() -> str:
    """Record that the run's step ran (to count executions), and return the run id."""
    info = current_step()
    Execution.objects.create(run_id=info.run_id, position=info.position, name=info.step_name)
    return info.run_id


def _every_second(ctx: Context, payload: None) -> Flow[str]:
    return (yield from ctx.run("note", note_tick))


def _every_five_minutes(ctx: Context, payload: int) -> Flow[str]:
    return (yield from ctx.run("note", note_tick))


#: Every second, every missed tick caught up.
every_second = Workflow(
    _every_second,
    name="scheduled-every-second",
    schedule=Schedule("* * * * * *", None, catch_up=100_000),
)
#: Every five minutes; after downtime only the latest two missed ticks run.
every_five_minutes = Workflow(
    _every_five_minutes,
    name="scheduled-every-five-minutes",
    schedule=Schedule("*/5 * * * *", 7, name="five-minutely", catch_up=2),
)


def _every_minute(ctx: Context, payload: None) -> Flow[str]:
    return (yield from ctx.run("note", note_tick))


#: Every minute: what QStash schedules take (the QStash tests compress its clock).
every_minute = Workflow(_every_minute, name="scheduled-every-minute", schedule="* * * * *")


def register(*workflows: Workflow[Any, str]) -> None:
    """Put the scheduled workflows into the registry (all of them by default)."""
    for wf in workflows or (every_second, every_five_minutes):
        _register(wf)
