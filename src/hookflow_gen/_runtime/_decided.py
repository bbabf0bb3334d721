"""Storing what the engine decided by itself: race winners, cancelled losers, patches.

The replay engine adds these records to its journal while it advances
(``Replay.take_writes``); the runtime stores them with the records it writes
next, in the same transaction, wherever it advances a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from .._engine import Replay
from .._journal import StepRecord, StepStatus

if TYPE_CHECKING:
    from ._core import Runtime

__all__ = ["store_decided"]

log = logging.getLogger("hookflow_gen")

_CANCELLED = "hookflow_gen.exceptions.StepCancelled"


def store_decided(
    runtime: Runtime, run_id: str, replay: Replay, save: Callable[[StepRecord], None]
) -> None:
    """Save the engine's own records with ``save``; cancel the children of cancelled losers."""
    for record in replay.take_writes():
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
