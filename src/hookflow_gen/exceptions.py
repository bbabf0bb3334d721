"""Every error hookflow_gen raises, under one root.

The tree::

    HookflowError                   root of everything raised by hookflow_gen
    ├── WorkflowDefinitionError     misuse found in user code: not a generator
    │   │                           function, duplicate workflow or step name,
    │   │                           naive datetime, bad annotation, ...
    │   └── DuplicateWorkflowError  two workflows registered under one name
    ├── PayloadValidationError      a payload, event or step result failed its
    │                               declared type (also a ``ValueError``)
    ├── InvalidIdError              a run id or event key that cannot be stored
    │                               (also a ``ValueError``)
    ├── NonDeterminismError         replayed code no longer matches its journal
    ├── StepFailed                  a step failed for good; thrown into the
    │                               workflow at the ``yield from``
    ├── StepCancelled               recorded for a race's losers (never raised
    │                               into a workflow; seen in journals)
    ├── WorkflowFailed              waited on the result of a run that failed
    ├── RunCancelled                waited on the result of a cancelled run
    ├── UnknownWorkflowError        no workflow is registered under that name
    ├── UnknownRunError             no run has that id
    ├── RunNotFinished              asked for the result of a run still going
    ├── UpdateError                 an update got no answer (or its id was reused)
    │   ├── UpdateRejected          the workflow refused it (``ctx.reject``)
    │   ├── UpdateTimeout           no answer within the caller's timeout
    │   │                           (also a ``TimeoutError``)
    │   └── UpdateRunFinished       the run ended before it answered
    └── ConfigurationError          settings or setup are wrong

Errors a *step function* raises to steer retries (they are ordinary
exceptions, raised by user code, never control flow of the engine):

    NonRetryableError               fail the step now, skipping retries
    RetryAfter                      retry after the given delay

The engine itself needs no exception for control flow: a workflow suspends by
yielding. Cancelling a run throws ``Cancelled`` into the workflow at its
current ``yield``; it is a ``BaseException`` (like ``asyncio.CancelledError``),
so a workflow's ``except Exception`` cannot swallow it by accident, and a
workflow catches it by name to run cleanup steps.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._journal import ErrorInfo

__all__ = [
    "Cancelled",
    "ConfigurationError",
    "DuplicateWorkflowError",
    "HookflowError",
    "InvalidIdError",
    "NonDeterminismError",
    "NonRetryableError",
    "PayloadValidationError",
    "RetryAfter",
    "RunCancelled",
    "RunNotFinished",
    "StepCancelled",
    "StepFailed",
    "UnknownRunError",
    "UnknownWorkflowError",
    "UpdateError",
    "UpdateRejected",
    "UpdateRunFinished",
    "UpdateTimeout",
    "WorkflowDefinitionError",
    "WorkflowFailed",
]


class HookflowError(Exception):
    """Root of every error raised by hookflow_gen."""


class WorkflowDefinitionError(HookflowError, TypeError):
    """User code uses the API wrongly; fix the code, retrying cannot help."""


class DuplicateWorkflowError(WorkflowDefinitionError):
    """Two different functions were registered under one workflow name."""


class PayloadValidationError(HookflowError, ValueError):
    """A payload, event or step result does not match its declared type."""


class InvalidIdError(HookflowError, ValueError):
    """A run id or an event key that cannot be stored: not a string, empty,
    longer than 255 characters, or holding a NUL character."""


class ConfigurationError(HookflowError):
    """hookflow_gen is set up wrongly (settings, installed apps, ...)."""


class UnknownWorkflowError(HookflowError, LookupError):
    """No workflow is registered under the given name."""


class UnknownRunError(HookflowError, LookupError):
    """No run exists with the given id."""


class RunNotFinished(HookflowError):
    """The run has no result yet."""


class UpdateError(HookflowError):
    """An update sent with ``RunHandle.update`` got no answer.

    Raised as itself when an update id is used again for another update
    or request of the same run; its subclasses say why no answer came.

    Attributes:
        run_id: the run that has the update: the one it was sent to, or the
            run of its continue-as-new chain that got it.
        update_id: the update's id (call ``update`` again with it to go on
            waiting for the same update).
    """

    def __init__(self, message: str, *, run_id: str, update_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.update_id = update_id


class UpdateRejected(UpdateError):
    """The workflow refused the update with ``ctx.reject(received, reason)``.

    Attributes:
        reason: the workflow's reason.
    """

    def __init__(self, message: str, *, run_id: str, update_id: str, reason: str) -> None:
        super().__init__(message, run_id=run_id, update_id=update_id)
        self.reason = reason


class UpdateTimeout(UpdateError, TimeoutError):
    """The workflow did not answer within the caller's timeout.

    The update stays accepted: the workflow may still answer it, and
    ``update`` called again with the same ``update_id`` waits for that answer.
    """


class UpdateRunFinished(UpdateError):
    """The run had ended when the update was sent, or ended without answering it.

    For a run that continued as new, "the run" is the last run of its chain.
    """


class NonDeterminismError(HookflowError):
    """The workflow code no longer produces the steps recorded in its journal.

    Attributes:
        position: the journal position where code and record part ways.
        recorded: what the journal holds there (``"run 'charge'"``), or None.
        current: what the code asked for now, or None if it stopped asking.
    """

    def __init__(self, message: str, *, position: int, recorded: str | None, current: str | None):
        super().__init__(message)
        self.position = position
        self.recorded = recorded
        self.current = current


class StepFailed(HookflowError):
    """A step failed for good (retries exhausted or a non-retryable error).

    Thrown into the workflow generator at the step's ``yield from``, so a
    workflow can catch it and compensate. The original exception object is
    not kept (it may not survive a process restart); its type and message
    are, the same on a fresh run and on replay.

    Attributes:
        step_name: the failed step's name.
        position: its position in the run's journal.
        error_type: qualified name of the original exception type.
        message: ``str()`` of the original exception.
        attempts: how many times the step was tried.
        error: the full recorded error.
    """

    def __init__(self, *, step_name: str, position: int, error: ErrorInfo, attempts: int):
        self.step_name = step_name
        self.position = position
        self.error = error
        self.error_type: str = error.type
        self.message: str = error.message
        self.attempts = attempts
        plural = "s" if attempts != 1 else ""
        super().__init__(
            f"step {step_name!r} (position {position}) failed after {attempts} attempt{plural}: "
            f"{error.type}: {error.message}"
        )

    def caused_by(self, exc_type: type[BaseException]) -> bool:
        """Tell whether the original exception was an instance of ``exc_type``.

        Compares qualified names along the original exception's class
        hierarchy (and those of the errors it wraps, as for a failed child
        run), recorded when it was raised, so it answers the same on replay
        as on the first run.
        """
        return self.error.caused_by(exc_type)


class StepCancelled(HookflowError):
    """The error recorded for a race's losers, settled as cancelled when it was won.

    It only appears in journals (``StepRecord.error.type``, ``hookflow
    show``): the workflow resumes with the winner, never with this.
    """


class WorkflowFailed(HookflowError):
    """The run failed; raised by ``RunHandle.result()``.

    Attributes:
        run_id: the failed run.
        error: the recorded error that ended it.
    """

    def __init__(self, run_id: str, error: ErrorInfo):
        super().__init__(f"run {run_id} failed: {error.type}: {error.message}")
        self.run_id = run_id
        self.error = error

    def caused_by(self, exc_type: type[BaseException]) -> bool:
        """Whether the run's error, or one it wraps, was an ``exc_type`` (by name).

        A run that failed on an uncaught step failure records the
        ``StepFailed`` and, as its cause, the step function's exception:
        ``failed.caused_by(ValueError)`` looks through both.
        """
        return self.error.caused_by(exc_type)


class RunCancelled(HookflowError):
    """The run was cancelled; raised by ``RunHandle.result()``."""


class Cancelled(BaseException):
    """Thrown into a workflow at its current ``yield`` when its run is cancelled.

    Catch it to run cleanup steps; they run durably, like any step, and
    further steps may be yielded until the workflow ends. A workflow that
    lets it propagate (or raises it again) ends as cancelled; one that
    catches it and returns ends as completed, with its return value.
    """

    def __init__(self, message: str = "the run was cancelled") -> None:
        super().__init__(message)


class NonRetryableError(Exception):
    """Raise from a step function to fail the step at once, without retries."""


class RetryAfter(Exception):
    """Raise from a step function to retry it after ``delay``.

    The attempt still counts against the retry policy's maximum.
    """

    def __init__(self, delay: timedelta | float, message: str = "") -> None:
        self.delay: timedelta = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
        super().__init__(message or f"retry after {self.delay.total_seconds():g}s")
