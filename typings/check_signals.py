"""Typing contract of the Django signals: checked, never run.

Positives pin the event types receivers get; each negative carries a
``type: ignore[code]`` that mypy and pyright must both find necessary.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, assert_type

from hookflow_gen import ErrorInfo, RunStatus
from hookflow_gen.django import signals
from hookflow_gen.django.signals import (
    Receiver,
    RunFinished,
    RunStarted,
    StepCompleted,
    StepFailed,
    WorkflowSignal,
)

assert_type(signals.run_started, WorkflowSignal[RunStarted])
assert_type(signals.step_completed, WorkflowSignal[StepCompleted])
assert_type(signals.step_failed, WorkflowSignal[StepFailed])
assert_type(signals.run_finished, WorkflowSignal[RunFinished])


@signals.receiver(signals.step_failed)
def on_failed(sender: object, *, event: StepFailed, **kwargs: object) -> None:
    assert_type(event.attempt, int)
    assert_type(event.will_retry, bool)
    assert_type(event.retry_at, datetime | None)
    assert_type(event.error, ErrorInfo)


@signals.receiver(signals.run_finished)
def on_finished(sender: Any, *, event: RunFinished, **kwargs: Any) -> None:
    assert_type(event.status, RunStatus)
    assert_type(event.result, str | None)
    assert_type(event.error, ErrorInfo | None)


def on_started(sender: object, *, event: RunStarted, **kwargs: object) -> None:
    assert_type(event.parent_run_id, str | None)


started: Receiver[RunStarted] = on_started
# Plain Django connect takes it too, untyped as Django's signals are.
signals.run_started.connect(on_started)


def no_kwargs(sender: object, *, event: RunFinished) -> None: ...


def wrong_event(sender: object, *, event: StepFailed, **kwargs: object) -> None: ...


def check_negatives() -> None:
    # A receiver without **kwargs breaks Django's contract.
    signals.receiver(signals.run_finished)(no_kwargs)  # type: ignore[arg-type]
    # A receiver of another signal's event.
    signals.receiver(signals.run_finished)(wrong_event)  # type: ignore[arg-type]
    # Events are frozen.
    event = RunStarted(run_id="r", workflow="w", created_at=datetime.now(), parent_run_id=None)
    event.run_id = "other"  # type: ignore[misc]
