"""Poison: a tick that raised is recorded so that it cannot recur without bound."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from .._journal import ErrorInfo, StepStatus, storable
from .._store import RunState, RunStatus
from . import _transitions as T
from ._base import RuntimeBase
from ._execute import (
    Outcome,
)

__all__ = ["PoisonMixin"]

log = logging.getLogger("hookflow_gen")
_PENDING = StepStatus.PENDING


class PoisonMixin(RuntimeBase):
    """Recording a tick's failure, for ``Runtime``."""

    # -- a tick that raised ------------------------------------------------------------

    def _tick_failed(self, run_id: str, exc: Exception, outcome: Outcome | None) -> None:
        """Record a tick's error so that it cannot recur without bound.

        A step outcome that could not be checkpointed is a failed attempt
        of that step (the retry policy bounds it); any other error counts
        against ``max_tick_failures``, after which the run fails. If even
        that cannot be written, the run fails with a bare error.
        """
        error = ErrorInfo.from_exception(exc)
        log.error("run %s: the tick failed: %s: %s", run_id, error.type, error.message)
        try:
            with self.store.atomic():
                run = self.store.lock_run(run_id)
                if run is None or run.status.finished:
                    return
                now = self.clock.now()
                if outcome is not None and self._refused(run, outcome, exc, error, now):
                    return
                if run.tick_failures + 1 >= self.max_tick_failures:
                    log.error("run %s: failed after %d failed ticks", run_id, run.tick_failures + 1)
                    self._finish(run, RunStatus.FAILED, error=error)
                    return
                delay = min(timedelta(seconds=2**run.tick_failures), self.lease)
                self._save_woken(T.tick_failed(run, error, now + delay))
        except Exception:
            log.exception("run %s: the tick's failure could not be recorded", run_id)
            self._fail_bare(run_id, error)

    def _refused(
        self, run: RunState, outcome: Outcome, exc: Exception, error: ErrorInfo, now: datetime
    ) -> bool:
        """The step's checkpoint was refused: record a failed attempt instead, if still ours."""
        position = outcome.pending.position
        records = self.store.steps(run.run_id, position)
        if not records or records[0].position != position:
            return False
        current = records[0]
        if current.status is not _PENDING or current.lease_owner != outcome.owner:
            return False
        refused = ErrorInfo(
            type=error.type,
            message=storable(f"the step's outcome could not be recorded: {error.message}", 4000),
            mro=error.mro,
            traceback=error.traceback,
        )
        record = self._failed_attempt(run, outcome.pending, current, exc, now, error=refused)
        self.store.save_step(run.run_id, record)
        self._wake(run, now)
        return True

    def _fail_bare(self, run_id: str, error: ErrorInfo) -> None:
        bare = ErrorInfo(type=error.type, message=ascii(error.message)[:500], mro=error.mro)
        try:
            with self.store.atomic():
                run = self.store.lock_run(run_id)
                if run is not None and not run.status.finished:
                    self.store.save_run(
                        T.finish(run, RunStatus.FAILED, self.clock.now(), error=bare)
                    )
        except Exception:
            log.exception("run %s: could not be failed; it is tried again later", run_id)
