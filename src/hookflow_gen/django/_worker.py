"""The database scheduler's worker loop (``manage.py hookflow worker`` runs it)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from .._clock import SystemClock
from ..exceptions import ConfigurationError
from ._store import DjangoStore

if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from datetime import datetime

    from .._runtime import Runtime
    from .._store import RunState
    from ._store import Claimed

__all__ = ["Worker"]

log = logging.getLogger("hookflow_gen.worker")


class Worker:
    """Ticks runs as they fall due: the database scheduler's worker loop.

    Each round claims the run that is due first (``DjangoStore.claim_due``:
    row-locked, skipping runs other workers hold, its ``wake_at`` moved a
    lease ahead so the wake-up is taken once) and ticks it. Errors in a tick
    are logged and never stop the worker; the run is due again when the
    claim's lease has passed. Any number of workers can run side by side.

    With ``concurrency`` above 1, up to that many ticks run at once, each on
    a thread of its own with its own database connection (closed when
    unusable or obsolete around each tick, as Django does around requests,
    and closed when the thread ends): steps that wait on I/O overlap. The
    calling thread claims the runs and hands them to the tick threads; a run
    one of them is ticking is never claimed again until that tick ends.
    ``stop`` lets the ticks in flight finish.

    Args:
        runtime: the runtime whose ``tick`` is called; its store must be a
            ``DjangoStore``.
        poll_interval: seconds to wait when nothing is due.
        close_connections: close unusable or expired database connections
            between ticks, as Django does between requests (a long-lived
            worker outlives database restarts and ``CONN_MAX_AGE``).
        recover_every: seconds between sweeps for runs that nothing would
            wake (``_sweep.sweep``: also the QStash outbox); None: never.
        concurrency: how many ticks may run at once (1: in the calling
            thread, one after the other).
        schedules: start the runs of the registered cron schedules as their
            ticks fall due (``_schedules.start_due_schedules``: once per
            tick across every worker). Off on a QStash site, where QStash
            schedules start them.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        poll_interval: float,
        close_connections: bool = False,
        recover_every: float | None = 60.0,
        concurrency: int = 1,
        schedules: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(
                f"the worker's concurrency must be at least 1, not {concurrency}"
            )
        self.runtime = runtime
        store = runtime.store
        if not isinstance(store, DjangoStore):
            raise ConfigurationError(f"the worker needs the Django store, not {store!r}")
        self.store = store
        self.poll_interval = poll_interval
        self.close_connections = close_connections
        self.recover_every = recover_every
        self.concurrency = concurrency
        self.schedules = schedules
        # When the next schedule tick falls; None: look at the next round.
        self._next_schedule_tick: datetime | None = None
        self._next_recovery = time.monotonic()
        self._stop = threading.Event()
        # Set when a tick thread finishes a tick, or on stop: the claiming loop waits on it.
        self._changed = threading.Event()

    def stop(self) -> None:
        """Stop after the ticks in progress (safe from a signal handler)."""
        self._stop.set()
        self._changed.set()

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
        if self.concurrency > 1:
            return self._run_threaded(once=once, until_idle=until_idle, max_ticks=max_ticks)
        ticks = 0
        clock = self.runtime.clock
        while not self.stopping and (max_ticks is None or ticks < max_ticks):
            if self.close_connections:
                _close_old_connections()
            self._recover_now_and_then()
            now = clock.now()
            self._start_scheduled(now)
            if self._tick_one(now):
                ticks += 1
                continue
            if once:
                break
            next_due = self._next_due()
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

    def _next_due(self) -> datetime | None:
        """When a run or a schedule tick falls due next."""
        times = [self.store.next_wake(), self._next_schedule_tick if self.schedules else None]
        return min((t for t in times if t is not None), default=None)

    def _start_scheduled(self, now: datetime) -> None:
        """Start the runs of the schedule ticks due at ``now`` (when one may be)."""
        if not self.schedules:
            return
        if self._next_schedule_tick is not None and now < self._next_schedule_tick:
            return
        from ._schedules import start_due_schedules

        try:
            _, self._next_schedule_tick = start_due_schedules(self.runtime, now)
        except Exception:
            log.exception("could not start the scheduled runs")
            self._next_schedule_tick = None

    def _recover_now_and_then(self) -> None:
        if self.recover_every is None or time.monotonic() < self._next_recovery:
            return
        self._next_recovery = time.monotonic() + self.recover_every
        from ._sweep import sweep

        try:
            sweep(self.runtime, dlq=False)
        except Exception:
            log.exception("could not look for stranded runs")

    def _run_threaded(self, *, once: bool, until_idle: float | None, max_ticks: int | None) -> int:
        """``run`` with up to ``concurrency`` ticks at once on tick threads."""
        ticks = 0
        clock = self.runtime.clock
        pool = _TickThreads(self.concurrency, self._tick, self._changed.set)
        try:
            while not self.stopping and (max_ticks is None or ticks < max_ticks):
                self._changed.clear()
                if pool.full():
                    self._changed.wait(self.poll_interval)
                    continue
                if self.close_connections:
                    _close_old_connections()
                self._recover_now_and_then()
                now = clock.now()
                self._start_scheduled(now)
                claimed = self._claim(now, pool.in_flight())
                if claimed is not None:
                    pool.submit(claimed.run_id, claimed.workflow)
                    ticks += 1
                    continue
                if pool.busy():
                    # Nothing is due but what is in flight: look again when a tick ends.
                    self._changed.wait(self.poll_interval)
                    continue
                if once:
                    break
                next_due = self._next_due()
                wait = self.poll_interval
                if next_due is not None:
                    ahead = (next_due - now).total_seconds()
                    if until_idle is not None and ahead > until_idle:
                        break
                    wait = min(wait, max(ahead, 0.01))
                elif until_idle is not None:
                    break
                self._sleep(wait)
        finally:
            pool.join()
        return ticks

    def _claim(self, now: datetime, exclude: Collection[str] = ()) -> Claimed | None:
        try:
            return self.store.claim_due(now, self.runtime.lease, exclude)
        except Exception:
            log.exception("could not look for due runs")
            return None

    def _tick_one(self, now: datetime) -> bool:
        """Claim and tick the run due first; False if none is due."""
        claimed = self._claim(now)
        if claimed is None:
            return False
        fresh = claimed.run if claimed.fresh else None
        self._tick(claimed.run_id, claimed.workflow, fresh)
        return True

    def _tick(self, run_id: str, workflow: str, fresh: RunState | None = None) -> None:
        """Tick a claimed run, logging the outcome; never raises an ``Exception``."""
        started = time.monotonic()
        try:
            if fresh is None:
                report = self.runtime.tick(run_id)
            else:
                report = self.runtime.tick(run_id, fresh=fresh)
        except Exception:
            log.exception("run %s (%s): the tick failed; it is retried after the lease", run_id,
                          workflow)  # fmt: skip
            return
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

    def _sleep(self, seconds: float) -> None:
        if isinstance(self.runtime.clock, SystemClock):
            self._stop.wait(seconds)  # a stop request ends the wait at once
        else:
            self.runtime.clock.sleep(seconds)


class _TickThreads:
    """``size`` tick threads fed by a queue, and the runs they are ticking."""

    def __init__(
        self, size: int, tick: Callable[[str, str], None], done: Callable[[], None]
    ) -> None:
        self._tick = tick
        self._done = done
        self._size = size
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._threads = [
            threading.Thread(target=self._serve, name=f"hookflow-tick-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def in_flight(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._in_flight)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight)

    def full(self) -> bool:
        with self._lock:
            return len(self._in_flight) >= self._size

    def submit(self, run_id: str, workflow: str) -> None:
        with self._lock:
            self._in_flight.add(run_id)
        self._queue.put((run_id, workflow))

    def join(self) -> None:
        """Let the ticks in flight finish, then end every thread."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        from django.db import connections

        try:
            while (item := self._queue.get()) is not None:
                run_id, workflow = item
                try:
                    _close_old_connections()
                    self._tick(run_id, workflow)
                except BaseException:
                    log.exception("run %s (%s): the tick thread failed", run_id, workflow)
                finally:
                    try:
                        _close_old_connections()
                    except Exception:
                        log.exception("could not close the tick thread's database connection")
                    with self._lock:
                        self._in_flight.discard(run_id)
                    self._done()
        finally:
            connections.close_all()


def _close_old_connections() -> None:
    """``close_old_connections``, sparing connections inside an atomic block."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
