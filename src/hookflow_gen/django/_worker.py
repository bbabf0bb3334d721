"""The database scheduler's worker loop (``manage.py hookflow worker`` runs it)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .._clock import SystemClock
from ..exceptions import ConfigurationError
from ._store import DjangoStore

if TYPE_CHECKING:
    from datetime import datetime

    from .._runtime import Runtime

__all__ = ["Worker"]

log = logging.getLogger("hookflow_gen.worker")


class Worker:
    """Ticks runs as they fall due: the database scheduler's worker loop.

    Each round claims the run that is due first (``DjangoStore.claim_due``:
    row-locked, skipping runs other workers hold, its ``wake_at`` moved a
    lease ahead so the wake-up is taken once) and ticks it. Errors in a tick
    are logged and never stop the worker; the run is due again when the
    claim's lease has passed. Any number of workers can run side by side.

    Args:
        runtime: the runtime whose ``tick`` is called; its store must be a
            ``DjangoStore``.
        poll_interval: seconds to wait when nothing is due.
        close_connections: close unusable or expired database connections
            between ticks, as Django does between requests (a long-lived
            worker outlives database restarts and ``CONN_MAX_AGE``).
        recover_every: seconds between sweeps for runs that nothing would
            wake (``_sweep.sweep``: also the QStash outbox); None: never.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        poll_interval: float,
        close_connections: bool = False,
        recover_every: float | None = 60.0,
    ) -> None:
        self.runtime = runtime
        store = runtime.store
        if not isinstance(store, DjangoStore):
            raise ConfigurationError(f"the worker needs the Django store, not {store!r}")
        self.store = store
        self.poll_interval = poll_interval
        self.close_connections = close_connections
        self.recover_every = recover_every
        self._next_recovery = time.monotonic()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop after the tick in progress (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop`` was called."""
        return self._stop.is_set()

    def run(
        self,
        *,
        once: bool = False,
        until_idle: float | None = None,
        max_ticks: int | None = None,
    ) -> int:
        """Tick due runs until stopped; returns how many ticks ran.

        Args:
            once: tick what is due now, then return.
            until_idle: return when no run is due and none falls due within
                this many seconds.
            max_ticks: return after this many ticks.
        """
        ticks = 0
        clock = self.runtime.clock
        while not self.stopping and (max_ticks is None or ticks < max_ticks):
            if self.close_connections:
                _close_old_connections()
            self._recover_now_and_then()
            now = clock.now()
            if self._tick_one(now):
                ticks += 1
                continue
            if once:
                break
            next_due = self.store.next_wake()
            wait = self.poll_interval
            if next_due is not None:
                ahead = (next_due - now).total_seconds()
                if until_idle is not None and ahead > until_idle:
                    break
                # Due but held by another worker: look again soon, not at once.
                wait = min(wait, max(ahead, 0.01))
            elif until_idle is not None:
                break
            self._sleep(wait)
        return ticks

    def _recover_now_and_then(self) -> None:
        if self.recover_every is None or time.monotonic() < self._next_recovery:
            return
        self._next_recovery = time.monotonic() + self.recover_every
        from ._sweep import sweep

        try:
            sweep(self.runtime, dlq=False)
        except Exception:
            log.exception("could not look for stranded runs")

    def _tick_one(self, now: datetime) -> bool:
        """Claim and tick the run due first; False if none is due."""
        try:
            claimed = self.store.claim_due(now, self.runtime.lease)
        except Exception:
            log.exception("could not look for due runs")
            return False
        if claimed is None:
            return False
        run_id, workflow = claimed
        started = time.monotonic()
        try:
            report = self.runtime.tick(run_id)
        except Exception:
            log.exception("run %s (%s): the tick failed; it is retried after the lease", run_id,
                          workflow)  # fmt: skip
            return True
        log.info(
            "run %s (%s): %d step(s) in %.3fs, %s%s",
            run_id,
            workflow,
            report.steps_run,
            time.monotonic() - started,
            report.status.value,
            f", next wake-up {report.wake_at.isoformat(sep=' ', timespec='seconds')}"
            if report.wake_at
            else "",
        )
        return True

    def _sleep(self, seconds: float) -> None:
        if isinstance(self.runtime.clock, SystemClock):
            self._stop.wait(seconds)  # a stop request ends the wait at once
        else:
            self.runtime.clock.sleep(seconds)


def _close_old_connections() -> None:
    """``close_old_connections``, sparing connections inside an atomic block."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
