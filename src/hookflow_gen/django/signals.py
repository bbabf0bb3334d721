"""Django signals for runs and steps, sent once the change they report is committed.

Four signals, each sent with the run's ``Workflow`` as ``sender`` (None for a
run whose workflow this code does not know) and one keyword argument,
``event``, a frozen dataclass:

======================  ====================  ===========================================
signal                  ``event``             sent when
======================  ====================  ===========================================
``run_started``         ``RunStarted``        a run was created (``start``, ``invoke``)
``step_completed``      ``StepCompleted``     a step settled with a result
``step_failed``         ``StepFailed``        an attempt failed (``will_retry`` says if
                                              the retry policy tries again)
``run_finished``        ``RunFinished``       a run completed, failed, was cancelled or
                                              continued as new (``status``)
======================  ====================  ===========================================

Receivers run after the transaction that made the change commits, so they
see committed state, and a change that rolled back sends nothing. A
receiver's exception is logged (``hookflow_gen`` logger) and does not reach
the runtime: the change it reports is already durable. Connect them as any
Django signal, or with ``receiver`` for a typed check of the receiver::

    from hookflow_gen.django import signals

    @signals.receiver(signals.run_finished)
    def on_finished(sender: object, *, event: signals.RunFinished, **kwargs: object) -> None:
        if event.status is RunStatus.FAILED: ...

    signals.step_failed.connect(on_failure, sender=checkout)  # one workflow's only

A receiver is told each event where it was made: in the worker process
that ticked the run (or the one that called ``start``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from django.dispatch import Signal

from .._runtime._observe import RunEvent, RunFinished, RunStarted, StepCompleted, StepFailed
from .._workflow import Workflow, get_workflow
from ..exceptions import UnknownWorkflowError

__all__ = [
    "Receiver",
    "RunFinished",
    "RunStarted",
    "SignalObserver",
    "StepCompleted",
    "StepFailed",
    "WorkflowSignal",
    "receiver",
    "run_finished",
    "run_started",
    "step_completed",
    "step_failed",
]

log: logging.Logger = logging.getLogger("hookflow_gen")

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)


class Receiver(Protocol[E_contra]):
    """A receiver of a ``WorkflowSignal[E]``: ``(sender, *, event: E, **kwargs) -> None``.

    ``sender`` is the run's ``Workflow`` (or None); ``**kwargs`` is required
    by Django, which may add arguments later.
    """

    def __call__(self, sender: Any, *, event: E_contra, **kwargs: Any) -> None:
        """Handle ``event``."""
        ...


class WorkflowSignal(Signal, Generic[E]):
    """A ``django.dispatch.Signal`` whose receivers get ``event: E``.

    Args:
        event: the event class this signal carries.
    """

    def __init__(self, event: type[E]) -> None:
        super().__init__()
        self.event = event

    def __repr__(self) -> str:
        return f"<WorkflowSignal {self.event.__name__}>"


#: A run was created: ``event`` is a ``RunStarted``.
run_started: WorkflowSignal[RunStarted] = WorkflowSignal(RunStarted)
#: A step settled with a result: ``event`` is a ``StepCompleted``.
step_completed: WorkflowSignal[StepCompleted] = WorkflowSignal(StepCompleted)
#: An attempt of a step failed: ``event`` is a ``StepFailed`` (``will_retry``, ``attempt``).
step_failed: WorkflowSignal[StepFailed] = WorkflowSignal(StepFailed)
#: A run reached a final state: ``event`` is a ``RunFinished`` (``status``).
run_finished: WorkflowSignal[RunFinished] = WorkflowSignal(RunFinished)

_BY_EVENT: dict[type[Any], WorkflowSignal[Any]] = {
    RunStarted: run_started,
    StepCompleted: step_completed,
    StepFailed: step_failed,
    RunFinished: run_finished,
}


def receiver(
    signal: WorkflowSignal[E],
    *,
    sender: Workflow[Any, Any] | None = None,
    dispatch_uid: str | None = None,
) -> Callable[[Receiver[E]], Receiver[E]]:
    """Connect the decorated function to ``signal``, checked against its event type.

    Django's own ``@receiver`` works too; this one makes a type checker
    check the receiver's signature against ``signal``'s event.

    Args:
        signal: one of this module's signals.
        sender: only this workflow's runs (None: every run).
        dispatch_uid: a unique id, so a receiver is connected once.
    """

    def connect(fn: Receiver[E]) -> Receiver[E]:
        signal.connect(fn, sender=sender, dispatch_uid=dispatch_uid)
        return fn

    return connect


class SignalObserver:
    """The runtime's ``Observer`` that sends this module's signals (installed by the app)."""

    def wants(self, kind: type[RunEvent]) -> bool:
        """Whether the signal for ``kind`` has a receiver."""
        return bool(_BY_EVENT[kind].receivers)

    def observe(self, event: RunEvent) -> None:
        """Send ``event``'s signal; a receiver's exception is logged."""
        signal = _BY_EVENT[type(event)]
        try:
            sender: Workflow[Any, Any] | None = get_workflow(event.workflow)
        except UnknownWorkflowError:
            sender = None
        for fn, answer in signal.send_robust(sender, event=event):
            if isinstance(answer, Exception):
                log.error(
                    "a receiver of %s (%r) raised: %r",
                    type(event).__name__,
                    fn,
                    answer,
                    exc_info=answer,
                )
