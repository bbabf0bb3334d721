"""Recovery: find running runs that nothing will ever tick again, and wake them.

The invariant (shared with the runtime): a RUNNING run is fine when

- its ``wake_at`` is set (a wake-up is due: a worker polls it, or a QStash
  message is on its way), or
- one of its PENDING ``run``/``call`` steps holds a lease that has not
  lapsed (a tick is running it, or QStash is making the call), or
- one of its PENDING ``event`` steps waits (``notify`` wakes it), or
- one of its PENDING ``invoke`` steps waits for a child run that exists and
  is RUNNING (the child's end wakes it).

Anything else is stranded: ``recover`` sets its ``wake_at`` to now, bumps
``wake_seq`` and hands it to the scheduler, and logs a line. On QStash a
``wake_at`` far in the past (``RECOVER_AFTER``) also counts: its message
was lost or dead-lettered, so the run is woken again with a new sequence
number (the lost message, should it still come, is then stale).

Each repair locks the run and checks again before it writes, so a tick in
progress (which holds the lock, or has just given the run a wake-up) is
never disturbed. ``recover`` works on the ``DjangoStore``; the database
worker calls it now and then, the QStash sweep on every call, and
``manage.py hookflow recover`` once.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Exists, OuterRef, Q

from ..exceptions import ConfigurationError
from ._store import RUNNING_SQL, DjangoStore

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .._runtime import Runtime

__all__ = ["recover", "stranded"]

log = logging.getLogger("hookflow_gen.recovery")

_LIMIT = 1000


def _stranded_query(using: str, now: datetime, late_before: datetime | None) -> QuerySet[Any, Any]:
    from .models import Run, Step

    pending = Step.objects.using(using).filter(run_id=OuterRef("pk"), status="pending")
    live_lease = pending.filter(kind__in=("run", "call"), lease_until__gt=now)
    event_wait = pending.filter(kind="event")
    child_running = Run.objects.using(using).filter(pk=OuterRef("key"), status="running")
    child_wait = pending.filter(kind="invoke").filter(Exists(child_running))
    unwoken = (
        Q(wake_at__isnull=True)
        & ~Q(Exists(live_lease))
        & ~Q(Exists(event_wait))
        & ~Q(Exists(child_wait))
    )
    if late_before is not None:
        unwoken |= Q(wake_at__lt=late_before)
    return Run.objects.using(using).filter(unwoken, status=RUNNING_SQL)


def stranded(
    store: DjangoStore, now: datetime, *, late_after: timedelta | None = None, limit: int = _LIMIT
) -> list[str]:
    """The ids of running runs that break the invariant (oldest first).

    Args:
        store: the Django store.
        now: the time leases and wake-ups are compared with.
        late_after: also count a run whose ``wake_at`` passed longer ago
            than this (its message was lost); None: a set ``wake_at`` is fine.
        limit: at most this many ids.
    """
    late_before = now - late_after if late_after is not None else None
    query = _stranded_query(store.db, now, late_before)
    return list(query.order_by("created_at").values_list("run_id", flat=True)[:limit])


def recover(runtime: Runtime, now: datetime | None = None) -> list[str]:
    """Wake every stranded run; the ids of the runs woken.

    Args:
        runtime: its store must be a ``DjangoStore``; its scheduler gets
            each new wake-up (on QStash: an outbox row and a publish).
        now: the time to judge by (default: the runtime's clock).

    Raises:
        ConfigurationError: the runtime's store is not a ``DjangoStore``.
    """
    store = runtime.store
    if not isinstance(store, DjangoStore):
        raise ConfigurationError(f"recovery needs the Django store, not {store!r}")
    now = now or runtime.clock.now()
    late_after = _late_after(runtime)
    woken: list[str] = []
    for run_id in stranded(store, now, late_after=late_after):
        with store.atomic():
            run = store.lock_run(run_id)
            if run is None or run.status.finished:
                continue
            late_before = now - late_after if late_after is not None else None
            # Checked again under the lock: a tick may have moved it on meanwhile.
            still = _stranded_query(store.db, now, late_before).filter(pk=run_id).exists()
            if not still:
                continue
            previous = run.wake_at
            run = dataclasses.replace(run, wake_at=now, wake_seq=run.wake_seq + 1)
            store.save_run(run)
            runtime.scheduler.wake(store, run)
        woken.append(run_id)
        log.warning(
            "run %s (%s) had nothing to wake it (%s); woken with wake-up %d",
            run_id,
            run.workflow,
            "no wake-up, lease, event or child"
            if previous is None
            else f"its wake-up of {previous.isoformat(timespec='seconds')} never came",
            run.wake_seq,
        )
    return woken


def _late_after(runtime: Runtime) -> timedelta | None:
    from ._qstash import QStashScheduler

    scheduler = runtime.scheduler
    if isinstance(scheduler, QStashScheduler):
        return scheduler.config.recover_after
    return None
