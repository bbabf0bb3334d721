"""The warm cache: live generators kept between a run's wake-ups.

A run whose generator is still alive in this process skips its replay on
the next tick. The cache is shared by every thread of the process (request
threads of a threaded or ASGI server, a worker's tick threads), so every
operation holds a lock; a replay is *taken* out of the cache by the one
tick that uses it and put back when that tick ends, so two threads never
drive the same generator.

Eviction is not cancellation: an evicted generator is discarded with
``Replay.discard``, outside the lock and outside any tick, so a ``finally``
block in it can never carry out a step or raise into someone else's tick.
"""

from __future__ import annotations

import collections
import threading

from .._engine import Replay

__all__ = ["WarmCache"]


class WarmCache:
    """Up to ``size`` live replays, least recently used evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._replays: collections.OrderedDict[str, Replay] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._replays)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._replays

    def take(self, run_id: str) -> Replay | None:
        """Remove and return the run's replay, if one is kept."""
        with self._lock:
            return self._replays.pop(run_id, None)

    def put(self, run_id: str, replay: Replay) -> None:
        """Keep ``replay`` for the run's next tick (evicting the oldest beyond the size)."""
        if self.size <= 0:
            replay.discard()
            return
        evicted: list[Replay] = []
        with self._lock:
            previous = self._replays.pop(run_id, None)
            if previous is not None and previous is not replay:
                evicted.append(previous)
            self._replays[run_id] = replay
            while len(self._replays) > self.size:
                evicted.append(self._replays.popitem(last=False)[1])
        for old in evicted:
            old.discard()

    def drop(self, run_id: str) -> None:
        """Forget the run's replay (it finished, or its state no longer matches the store)."""
        replay = self.take(run_id)
        if replay is not None:
            replay.discard()

    def clear(self) -> None:
        """Discard every kept replay."""
        with self._lock:
            replays = list(self._replays.values())
            self._replays.clear()
        for replay in replays:
            replay.discard()
