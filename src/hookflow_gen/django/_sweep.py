"""The sweep: what repairs the QStash transport when no delivery would.

``sweep(runtime)`` does three things, each safe to repeat at any time:

1. sends the outbox (wake-ups committed but not accepted by QStash);
2. wakes stranded runs (``_recovery.recover``: no wake-up, lease, event or
   child; on QStash also a wake-up long overdue, whose message was lost);
3. on QStash, reads the dead-letter queue for this site's messages: a dead
   wake-up wakes its run again at once (the site was down longer than
   QStash's retries), a dead ``call`` callback is replayed from the DLQ's
   copy of its body, so the call's answer is not lost; each entry handled
   is then deleted from the DLQ. Other sites' entries are left alone.

QStash calls it through ``hookflow/qstash/sweep/`` on a schedule that
``manage.py hookflow qstash-schedule`` creates; ``manage.py hookflow
recover`` runs it once; the database worker calls it now and then.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

from ._qstash import QStashScheduler
from ._recovery import recover
from ._store import DjangoStore

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = ["SweepReport", "sweep"]

log = logging.getLogger("hookflow_gen.recovery")

_DLQ_PAGES = 20


@dataclasses.dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did.

    Attributes:
        outbox_sent: owed wake-ups published now.
        outbox_failed: owed wake-ups whose publish failed again.
        woken: runs that broke the invariant and were woken.
        dlq_woken: runs woken because their wake-up was dead-lettered.
        dlq_replayed: dead-lettered call callbacks replayed.
        dlq_dropped: this site's dead letters that named nothing to repair.
        errors: what went wrong (QStash unreachable, ...), for the log.
    """

    outbox_sent: int = 0
    outbox_failed: int = 0
    woken: tuple[str, ...] = ()
    dlq_woken: tuple[str, ...] = ()
    dlq_replayed: int = 0
    dlq_dropped: int = 0
    errors: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "outbox_sent": self.outbox_sent,
            "outbox_failed": self.outbox_failed,
            "woken": list(self.woken),
            "dlq_woken": list(self.dlq_woken),
            "dlq_replayed": self.dlq_replayed,
            "dlq_dropped": self.dlq_dropped,
            "errors": list(self.errors),
        }


def sweep(runtime: Runtime, *, dlq: bool = True) -> SweepReport:
    """Send the outbox, wake stranded runs and (on QStash) repair dead letters.

    Args:
        runtime: its store must be a ``DjangoStore``.
        dlq: also read QStash's dead-letter queue.
    """
    from . import _outbox

    store = runtime.store
    scheduler = runtime.scheduler
    sent = failed = 0
    errors: list[str] = []
    qstash = isinstance(scheduler, QStashScheduler) and isinstance(store, DjangoStore)
    if qstash:
        assert isinstance(scheduler, QStashScheduler) and isinstance(store, DjangoStore)
        flushed = _outbox.flush(scheduler, store.db)
        sent, failed = flushed.sent, flushed.failed
        if flushed.error:
            errors.append(flushed.error)
    woken = tuple(recover(runtime))
    dlq_woken: list[str] = []
    replayed = dropped = 0
    if qstash and dlq:
        assert isinstance(scheduler, QStashScheduler)
        try:
            dlq_woken, replayed, dropped = _dead_letters(runtime, scheduler)
        except Exception as exc:
            log.warning("could not read QStash's dead-letter queue: %s", exc)
            errors.append(f"dead-letter queue: {exc}")
    report = SweepReport(sent, failed, woken, tuple(dlq_woken), replayed, dropped, tuple(errors))
    if sent or failed or woken or dlq_woken or replayed or dropped:
        log.info("sweep: %s", report.as_json())
    return report


def _dead_letters(runtime: Runtime, scheduler: QStashScheduler) -> tuple[list[str], int, int]:
    """Repair what this site's dead letters left behind; (runs woken, replayed, dropped)."""
    client = scheduler.client
    webhook = scheduler.webhook_url()
    callback = scheduler.callback_url("-", 0, "-").partition("?")[0]
    sweep_url = scheduler.sweep_url()
    woken: list[str] = []
    replayed = dropped = 0
    cursor: str | None = None
    for _ in range(_DLQ_PAGES):
        page = client.dlq.list(cursor=cursor, count=100)
        for message in page.messages:
            url = message.url
            base, _, query = url.partition("?")
            if url not in (webhook, sweep_url) and base != callback:
                continue  # not this site's (or not a message it repairs)
            body = _body(message.body, message.body_base64)
            done = True
            if url == webhook:
                run_id = _wake_dead(runtime, body)
                if run_id is not None:
                    woken.append(run_id)
                else:
                    dropped += 1
            elif url == sweep_url:
                dropped += 1  # a missed sweep: this one does its work
            else:
                done, ok = _replay_dead_callback(runtime, query, body)
                if ok:
                    replayed += 1
                elif done:
                    dropped += 1
            if done:
                client.dlq.delete(message.dlq_id)
        cursor = page.cursor
        if not cursor:
            break
    return woken, replayed, dropped


def _body(text: str | None, encoded: str | None) -> bytes:
    if text is not None:
        return text.encode("utf-8")
    if encoded:
        try:
            return base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            return b""
    return b""


def _wake_dead(runtime: Runtime, body: bytes) -> str | None:
    """Wake the run of a dead-lettered wake-up if that was its current one; its id, or None."""
    import dataclasses as dc

    from .views import _Refused, _run_id  # pyright: ignore[reportPrivateUsage]

    try:
        data: object = json.loads(body)
        if not isinstance(data, dict):
            return None
        fields: dict[str, Any] = data  # pyright: ignore[reportUnknownVariableType]
        run_id = _run_id(fields.get("run_id"), "run_id")
        seq = fields.get("seq")
    except (ValueError, RecursionError, _Refused):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    store = runtime.store
    now = runtime.clock.now()
    with store.atomic():
        run = store.lock_run(run_id)
        if run is None or run.status.finished or run.wake_seq != seq:
            return None  # gone, or a later wake-up replaced the dead one
        run = dc.replace(run, wake_at=now, wake_seq=run.wake_seq + 1)
        store.save_run(run)
        runtime.scheduler.wake(store, run)
    log.warning(
        "run %s: its wake-up %d was dead-lettered by QStash; woken with wake-up %d",
        run_id,
        seq,
        run.wake_seq,
    )
    return run_id


def _replay_dead_callback(runtime: Runtime, query: str, body: bytes) -> tuple[bool, bool]:
    """Replay a dead-lettered call callback; (handled, recorded)."""
    from django.db import DatabaseError

    from ..exceptions import HookflowError
    from .views import _Refused, replay_callback  # pyright: ignore[reportPrivateUsage]

    try:
        recorded = replay_callback(runtime, query, body)
    except (_Refused, HookflowError):
        return True, False  # it names nothing this site can repair
    except DatabaseError:
        log.exception("could not replay a dead-lettered callback")
        return False, False  # kept in the DLQ for the next sweep
    if recorded:
        log.warning("a dead-lettered call callback (%s) was replayed from QStash's DLQ", query)
    return True, recorded
