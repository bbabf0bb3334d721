"""Cron schedules on the database scheduler: the worker starts each tick's run once.

Each schedule has a cursor row (``ScheduleCursor``): the latest tick it
handled. A worker that finds ticks due locks the row, starts their runs
(ids from ``schedule_run_id``, so a start is idempotent) and moves the
cursor, in one transaction: any number of workers start each tick's run
exactly once, and a restart neither repeats nor skips a tick.

Catch-up: when more ticks fell due than the schedule's ``catch_up`` (the
workers were down, or too busy to look), the latest ``catch_up`` of them
start runs and the older ones are skipped (logged). A schedule seen for the
first time begins at that moment: ticks before it are not due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction

from .._schedule import Schedule, latest_ticks, next_tick, schedule_run_id
from .._workflow import Workflow, registered_schedules
from ._store import DjangoStore

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = [
    "ScheduleStatus",
    "find_schedule",
    "schedule_statuses",
    "start_due_schedules",
    "start_tick",
]

log = logging.getLogger("hookflow_gen.schedules")


def start_due_schedules(runtime: Runtime, now: datetime) -> tuple[list[str], datetime | None]:
    """Start the runs of every schedule tick due at ``now``.

    Returns the ids of the runs started and when the next tick of any
    schedule falls (None: no schedules). A schedule that fails is logged
    and tried again at the next call.
    """
    store = runtime.store
    if not isinstance(store, DjangoStore):
        raise TypeError(f"schedules on the database scheduler need the Django store, not {store!r}")
    started: list[str] = []
    upcoming: datetime | None = None
    for workflow, schedule in registered_schedules():
        try:
            started += _start_due(runtime, store, workflow, schedule, now)
        except Exception:
            log.exception("schedule %r: could not start its due runs", schedule.name)
        following = next_tick(schedule.cron, now)
        upcoming = following if upcoming is None else min(upcoming, following)
    return started, upcoming


def _start_due(
    runtime: Runtime,
    store: DjangoStore,
    workflow: Workflow[Any, Any],
    schedule: Schedule[Any],
    now: datetime,
) -> list[str]:
    from .models import ScheduleCursor

    name = str(schedule.name)
    cursors = ScheduleCursor.objects.using(store.db)
    with transaction.atomic(using=store.db):
        cursor = cursors.select_for_update().filter(name=name).first()
        if cursor is None:
            try:
                with transaction.atomic(using=store.db):
                    cursors.create(
                        name=name, workflow=workflow.name, cron=schedule.cron, last_tick=now
                    )
            except IntegrityError:
                pass  # another worker saw it first, at the same time
            log.info("schedule %r (%s): first seen, its ticks start now", name, schedule.cron)
            return []
        ticks = latest_ticks(schedule.cron, cursor.last_tick, now, schedule.catch_up + 1)
        if not ticks:
            return []
        if len(ticks) > schedule.catch_up:
            ticks = ticks[1:]
            log.warning(
                "schedule %r: ticks from %s to before %s were missed and are skipped (catch_up=%d)",
                name,
                cursor.last_tick.isoformat(sep=" ", timespec="seconds"),
                ticks[0].isoformat(sep=" ", timespec="seconds"),
                schedule.catch_up,
            )
        started: list[str] = []
        for tick in ticks:
            run_id = schedule_run_id(name, tick)
            run, created = runtime.start_run(workflow, schedule.payload, run_id=run_id)
            if run.workflow != workflow.name:
                log.error("schedule %r: run %s exists already, of workflow %r", name, run_id,
                          run.workflow)  # fmt: skip
            elif created:
                started.append(run_id)
                log.info("schedule %r: started run %s", name, run_id)
        cursor.last_tick = ticks[-1]
        cursor.last_run_id = schedule_run_id(name, ticks[-1])
        cursor.workflow = workflow.name
        cursor.cron = schedule.cron
        cursor.updated_at = now
        cursor.save(using=store.db)
    return started


def find_schedule(name: str) -> tuple[Workflow[Any, Any], Schedule[Any]] | None:
    """The registered schedule called ``name``, with its workflow."""
    return next(((wf, s) for wf, s in registered_schedules() if s.name == name), None)


def start_tick(
    runtime: Runtime, workflow: Workflow[Any, Any], schedule: Schedule[Any], fired_at: datetime
) -> tuple[str, bool]:
    """Start the run of the tick ``fired_at`` belongs to (the latest at or before it).

    Used for QStash deliveries of a schedule: every delivery of one firing
    (retries, duplicates) maps to the same tick, so to the same run.
    Returns (run id, whether this call created it).
    """
    ticks = latest_ticks(schedule.cron, None, fired_at, 1)
    tick = ticks[0] if ticks else fired_at
    run_id = schedule_run_id(str(schedule.name), tick)
    run, created = runtime.start_run(workflow, schedule.payload, run_id=run_id)
    if created:
        log.info("schedule %r: started run %s", schedule.name, run_id)
    return run.run_id, created


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A registered schedule as ``manage.py hookflow schedules`` shows it.

    Attributes:
        name: the schedule's name.
        workflow: the workflow it starts.
        cron: its cron expression (UTC).
        last_tick: the latest tick the database scheduler handled (None:
            not seen by a worker yet).
        last_run_id: the run that tick started.
        next_tick: when it next fires.
    """

    name: str
    workflow: str
    cron: str
    last_tick: datetime | None
    last_run_id: str | None
    next_tick: datetime


def schedule_statuses(now: datetime, using: str) -> list[ScheduleStatus]:
    """Every registered schedule with its cursor and next tick, by name."""
    from .models import ScheduleCursor

    cursors = {c.name: c for c in ScheduleCursor.objects.using(using)}
    statuses: list[ScheduleStatus] = []
    for workflow, schedule in registered_schedules():
        cursor = cursors.get(str(schedule.name))
        statuses.append(
            ScheduleStatus(
                name=str(schedule.name),
                workflow=workflow.name,
                cron=schedule.cron,
                last_tick=cursor.last_tick if cursor else None,
                last_run_id=cursor.last_run_id if cursor else None,
                next_tick=next_tick(schedule.cron, max(now, cursor.last_tick) if cursor else now),
            )
        )
    return statuses
