"""A timer heap on one thread that hands due work to a small worker pool."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["Scheduler"]

Task = Callable[[], None]


class Scheduler:
    """Run callables at monotonic times, tracking whether any work remains.

    Work is keyed (by message id) so a cancelled message leaves the heap at
    once; otherwise a cancelled day-long delay would keep the queue busy.
    Background work (a schedule's next firing) never makes the scheduler
    busy: a cron schedule would otherwise keep :meth:`wait_idle` waiting
    forever. What a background task starts (a delivery) is foreground work.
    """

    def __init__(self, workers: int, on_error: Callable[[BaseException], None]) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, str, Task, bool]] = []
        self._foreground = 0
        self._sequence = itertools.count()
        self._in_flight = 0
        self._stopping = False
        self._on_error = on_error
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qstash-delivery")
        self._thread = threading.Thread(target=self._run, name="qstash-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, delay: float, key: str, task: Task, *, background: bool = False) -> None:
        """Run ``task`` after ``delay`` real seconds; ignored once stopping.

        Args:
            delay: Real seconds to wait.
            key: What :meth:`discard` drops the task by.
            task: The callable.
            background: The pending task does not count as work for
                :meth:`idle` and :meth:`wait_idle`.
        """
        due = time.monotonic() + max(0.0, delay)
        with self._condition:
            if self._stopping:
                return
            heapq.heappush(self._heap, (due, next(self._sequence), key, task, background))
            if not background:
                self._foreground += 1
            self._condition.notify_all()

    def discard(self, key: str) -> int:
        """Drop every pending task scheduled under ``key``; return how many."""
        with self._condition:
            kept = [entry for entry in self._heap if entry[2] != key]
            dropped = len(self._heap) - len(kept)
            if dropped:
                heapq.heapify(kept)
                self._heap = kept
                self._foreground = sum(not entry[4] for entry in kept)
                self._condition.notify_all()
            return dropped

    def clear(self) -> None:
        """Drop every pending task."""
        with self._condition:
            self._heap.clear()
            self._foreground = 0
            self._condition.notify_all()

    def idle(self) -> bool:
        with self._condition:
            return self._foreground == 0 and self._in_flight == 0

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._foreground or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def stop(self) -> None:
        """Drop pending work, wait for running work, and join every thread."""
        with self._condition:
            self._stopping = True
            self._heap.clear()
            self._foreground = 0
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        with self._condition:
            while not self._stopping:
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                _, _, _, task, background = heapq.heappop(self._heap)
                if not background:
                    self._foreground -= 1
                # Counted before the lock is released so wait_idle never sees a gap
                # between "popped" and "running".
                self._in_flight += 1
                future = self._pool.submit(task)
                future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._on_error(error)
        with self._condition:
            self._in_flight -= 1
            self._condition.notify_all()
