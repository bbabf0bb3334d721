"""Schedulers: how a run's next wake-up reaches a worker.

The runtime records when a run is next due (``RunState.wake_at`` and
``wake_seq``) in the run's own transaction, then calls ``Scheduler.wake`` so
the scheduler can make sure a tick happens then:

- ``DatabaseScheduler``: nothing more to do; workers poll ``wake_at``.
- ``InlineScheduler``: ticks in this process, in time order, until every run
  is finished or waits for an event (scripts and tests).
- the QStash scheduler (``hookflow_gen.django``) publishes a message.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._clock import Clock
    from ._runtime import Runtime
    from ._store import RunState, Store

__all__ = ["DatabaseScheduler", "InlineScheduler", "Scheduler"]


class Scheduler(Protocol):
    """Delivers wake-ups; see the module docstring."""

    #: Whether a wake-up must also be set for when a running step's lease
    #: lapses. A scheduler whose deliveries are redelivered until answered
    #: (QStash) recovers a crashed tick by itself and needs none.
    lease_wakeups: bool

    def wake(self, store: Store, run: RunState) -> None:
        """The run's ``wake_at``/``wake_seq`` were just set, in an open transaction."""
        ...


class DatabaseScheduler:
    """Workers poll runs whose ``wake_at`` has passed (``manage.py hookflow worker``)."""

    lease_wakeups = True
    #: ``wake`` adds nothing to the transaction that saved the run, so a
    #: run's start can be its insert alone (a scheduler without this
    #: attribute is woken inside the start's transaction).
    transactional_wake = False

    def wake(self, store: Store, run: RunState) -> None:
        pass  # the run row itself is the wake-up


class InlineScheduler:
    """Runs ticks in this process, in time order, sleeping on the clock between them.

    ``wake`` only queues; the queue is drained once the transaction that
    scheduled the wake-up commits, outside any transaction. Draining stops
    when no run has a timed wake-up left (they are done, or wait for events).
    """

    lease_wakeups = False

    def __init__(self, *, auto_advance: bool = True) -> None:
        #: With False, only wake-ups already due run; move the clock to reach
        #: later ones (a test that must send an event before a timeout).
        self.auto_advance = auto_advance
        self._queue: list[tuple[datetime, int, str, int]] = []
        self._order = itertools.count()
        self._draining = False
        self.runtime: Runtime | None = None

    def bind(self, runtime: Runtime) -> None:
        """Attach the runtime whose ``tick`` the queue calls."""
        self.runtime = runtime

    def wake(self, store: Store, run: RunState) -> None:
        if run.wake_at is None:
            return
        entry = (run.wake_at, next(self._order), run.run_id, run.wake_seq)
        heapq.heappush(self._queue, entry)
        store.on_commit(self.drain)

    def drain(self) -> None:
        """Tick queued runs in time order until the queue is empty."""
        if self._draining or self.runtime is None:
            return
        runtime = self.runtime
        clock: Clock = runtime.clock
        self._draining = True
        try:
            while self._queue:
                if not self.auto_advance and self._queue[0][0] > clock.now():
                    break
                at, _, run_id, seq = heapq.heappop(self._queue)
                run = runtime.store.get_run(run_id)
                if run is None or run.status.finished or run.wake_seq != seq:
                    continue  # stale: a later wake-up replaced this one
                wait = (at - clock.now()).total_seconds()
                if wait > 0:
                    clock.sleep(wait)
                runtime.tick(run_id)
        finally:
            self._draining = False
