"""The QStash transport's outbox: every wake-up the site owes QStash, as a row.

``QStashScheduler.wake`` is called inside the transaction that sets a run's
``wake_at``. It writes an ``Outbox`` row there, on the store's database, so
the debt commits (or rolls back) with the change that made it. Once the
transaction commits the row is published, and deleted when QStash accepts
it. A row that is still there (QStash refused or could not be reached, or
the process died between the commit and the publish) is sent again by:

- the next delivery that touches the run (``flush(..., run_id=...)`` in the
  webhook's hand-off, which answers 503 while the row cannot be sent, so
  QStash keeps that delivery alive);
- the database worker, if one runs (``Worker`` calls ``sweep`` now and then);
- the sweep endpoint that a QStash schedule calls (``manage.py hookflow
  qstash-schedule`` sets it up) and ``manage.py hookflow recover``.

Every row carries the message's deduplication id, so a row sent twice (by
the after-commit send and a sweep racing it) is one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError
from django.db.models import F

if TYPE_CHECKING:
    from qstash.message import FlowControl

    from ._qstash import QStashScheduler

__all__ = ["FlushReport", "flush", "owe", "owed_key", "send_owed"]

log = logging.getLogger("hookflow_gen.qstash")

_FLUSH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What one flush of the outbox did.

    Attributes:
        sent: rows QStash accepted (or had accepted before), now deleted.
        failed: rows whose publish failed again; they stay for the next try.
        error: the last publish error, for the log and the answer.
    """

    sent: int = 0
    failed: int = 0
    error: str | None = None


def owed_key(run_id: str, seq: int, after: str | None = None) -> str:
    """The row's unique key: one row per wake-up (and per re-publish ``after`` a delivery)."""
    return f"{run_id}-{seq}" if after is None else f"{run_id}-{seq}-{after}"


def owe(
    using: str,
    run_id: str,
    seq: int,
    wake_at: datetime,
    *,
    after: str | None = None,
    flow: FlowControl | None = None,
) -> str:
    """Write the row for a wake-up in the open transaction; its key.

    A second row for the same wake-up is ignored (``ON CONFLICT DO NOTHING``).
    ``flow`` is the message's QStash flow control, kept for every re-send.
    """
    from .models import Outbox

    key = owed_key(run_id, seq, after)
    row = Outbox(dedup_id=key, run_id=run_id, seq=seq, wake_at=wake_at, after=after, flow=flow)
    Outbox.objects.using(using).bulk_create([row], ignore_conflicts=True)
    return key


def send_owed(
    scheduler: QStashScheduler,
    using: str,
    key: str,
    *,
    run_id: str,
    seq: int,
    wake_at: datetime,
    after: str | None = None,
    flow: FlowControl | None = None,
) -> bool:
    """Publish one owed wake-up and delete its row; False (logged) if the publish failed.

    Called after the commit, so it never raises: the row stays for the next try.
    """
    from .models import Outbox

    rows = Outbox.objects.using(using)
    try:
        scheduler.publish_wakeup(run_id, seq, wake_at, after=after, flow=flow)
    except Exception as exc:
        log.warning(
            "run %s: the wake-up %d could not be published (%s); it stays in the outbox and "
            "is sent by the next delivery of the run, a worker or the sweep",
            run_id,
            seq,
            exc,
        )
        try:
            rows.filter(dedup_id=key).update(attempts=F("attempts") + 1, last_error=str(exc)[:2000])
        except DatabaseError:
            log.exception("run %s: could not note the failed publish", run_id)
        return False
    try:
        rows.filter(dedup_id=key).delete()
    except DatabaseError:
        # Published: a row left behind is sent once more by a sweep, deduplicated.
        log.warning("run %s: could not delete the sent outbox row %s", run_id, key)
    return True


def flush(
    scheduler: QStashScheduler,
    using: str,
    *,
    run_id: str | None = None,
    older_than: timedelta | None = None,
    limit: int = _FLUSH_LIMIT,
) -> FlushReport:
    """Send owed wake-ups (of one run, or the oldest ``limit``); what was done.

    Args:
        scheduler: publishes the messages.
        using: the database alias of the outbox.
        run_id: only this run's rows (the webhook's hand-off).
        older_than: only rows at least this old, so a sweep leaves the rows
            of transactions that are just committing to their own send.
        limit: at most this many rows.
    """
    from django.utils import timezone

    from .models import Outbox, Run

    rows = Outbox.objects.using(using).order_by("id")
    if run_id is not None:
        rows = rows.filter(run_id=run_id)
    if older_than is not None:
        rows = rows.filter(created_at__lte=timezone.now() - older_than)
    # A finished (or deleted) run needs no wake-up: its debts are void.
    live = Run.objects.using(using).filter(status="running").values("run_id")
    rows.exclude(run_id__in=live).delete()
    owed = list(rows.values_list("dedup_id", "run_id", "seq", "wake_at", "after", "flow")[:limit])
    sent = failed = 0
    error: str | None = None
    for key, owed_run, seq, wake_at, after, flow in owed:
        if send_owed(
            scheduler, using, key, run_id=owed_run, seq=seq, wake_at=wake_at, after=after, flow=flow
        ):
            sent += 1
        else:
            failed += 1
            error = f"could not publish the wake-up {key}"
    return FlushReport(sent, failed, error)
