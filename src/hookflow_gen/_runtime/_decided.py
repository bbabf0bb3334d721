"""Storing what the engine decided by itself: race winners, cancelled losers, patches.

The replay engine adds these records to its journal while it advances
(``Replay.take_writes``); the runtime stores them with the records it writes
next, in the same transaction, wherever it advances a run. It also reopens
an ``invoke`` step whose child failed under a retry policy; the runtime then
starts the next child run here once the back-off has passed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

from .._engine import Pending, Replay
from .._journal import StepRecord, StepStatus
from .._steps import InvokeStep
from .._store import RunState

if TYPE_CHECKING:
    from ._core import Runtime

__all__ = ["save_decided", "start_next_child", "store_decided"]

log = logging.getLogger("hookflow_gen")

_CANCELLED = "hookflow_gen.exceptions.StepCancelled"


def store_decided(
    runtime: Runtime, run_id: str, replay: Replay, save: Callable[[StepRecord], None]
) -> None:
    """Save the engine's own records with ``save``; cancel the children of cancelled losers."""
    save_decided(runtime, run_id, replay.take_writes(), save)


def save_decided(
    runtime: Runtime,
    run_id: str,
    records: Iterable[StepRecord],
    save: Callable[[StepRecord], None],
) -> None:
    """``store_decided`` for records already taken from the replay."""
    for record in records:
        save(record)
        if (
            record.kind == "invoke"
            and record.key
            and record.status is StepStatus.FAILED
            and record.error is not None
            and record.error.type == _CANCELLED
        ):
            runtime.store.on_commit(partial(_cancel_child, runtime, run_id, record.key))


def _cancel_child(runtime: Runtime, run_id: str, child: str) -> None:
    try:
        runtime.cancel(child)
    except Exception:
        log.exception("run %s: could not cancel child run %s of a lost race", run_id, child)


def start_next_child(
    runtime: Runtime,
    run: RunState,
    pending: Pending,
    record: StepRecord,
    save: Callable[[StepRecord], None],
) -> StepRecord:
    """Start attempt ``record.attempts + 1`` of a reopened ``invoke`` step; its record.

    ``save`` stores the record: the same writer ``store_decided`` used, so the
    reopened record cannot be written over the started one.
    """
    step = pending.step
    assert isinstance(step, InvokeStep)
    attempt = record.attempts + 1
    base = step.run_id or f"{run.run_id}-{pending.position}"
    child, _ = runtime.start_run(
        step.workflow,
        step.payload,
        run_id=f"{base}-attempt-{attempt}",
        parent=(run.run_id, pending.position),
    )
    started = dataclasses.replace(record, key=child.run_id, attempts=attempt, wake_at=None)
    save(started)
    return started
