"""Journal records: what a run has durably recorded about each step."""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = ["CANCELLED", "Attempt", "ErrorInfo", "StepRecord", "StepStatus", "storable"]

#: The recorded type of a cancellation, in a step's record and a run's error.
CANCELLED = "hookflow_gen.exceptions.Cancelled"
#: Bounds on recorded error text (characters).
MAX_MESSAGE = 4_000
MAX_TRACEBACK = 32_000


def storable(text: str, limit: int) -> str:
    """``text`` without NUL characters, cut to ``limit`` characters (marked)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) > limit:
        text = text[: limit - 20] + " ... [truncated]"
    return text


class StepStatus(StrEnum):
    """Where a step stands in its run's journal."""

    PENDING = "pending"  # reached, not settled: running, sleeping, waiting
    COMPLETED = "completed"
    FAILED = "failed"


_ExceptionType: TypeAlias = type[BaseException]  # `type` is a field name in ErrorInfo


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception, recorded as data so it survives restarts and replays.

    Attributes:
        type: qualified name of the exception class (``"builtins.ValueError"``).
        message: ``str()`` of the exception.
        mro: qualified names of the class and its bases, for
            ``StepFailed.caused_by``; never used to look a class up.
        traceback: the formatted traceback where one was available.
        cause: what it wraps: for a ``StepFailed`` (or ``WorkflowFailed``)
            the failed step's (or run's) recorded error, else the recorded
            ``__cause__`` (``raise X from exc``); None if nothing.
    """

    type: str
    message: str
    mro: tuple[str, ...] = ()
    traceback: str | None = None
    cause: ErrorInfo | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, *, _depth: int = 0) -> ErrorInfo:
        """Record ``exc``: its type names, message, traceback and cause.

        The text is made storable whatever the exception holds: NUL
        characters (which PostgreSQL's JSON and text columns refuse) are
        replaced, and the message and traceback are cut to a bounded size,
        so recording a failure can never itself fail.
        """
        mro = tuple(
            f"{klass.__module__}.{klass.__qualname__}"
            for klass in type(exc).__mro__
            if klass is not object
        )
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not lose the failure
            message = f"<{type(exc).__name__} whose str() raised>"
        text = "".join(_traceback.format_exception(exc)) if exc.__traceback__ else None
        cause: ErrorInfo | None = None
        wrapped = getattr(exc, "error", None)
        if isinstance(wrapped, ErrorInfo):
            cause = wrapped
        elif exc.__cause__ is not None and _depth < 8:
            cause = cls.from_exception(exc.__cause__, _depth=_depth + 1)
        return cls(
            type=mro[0],
            message=storable(message, MAX_MESSAGE),
            mro=mro,
            traceback=storable(text, MAX_TRACEBACK) if text is not None else None,
            cause=cause,
        )

    @property
    def is_cancellation(self) -> bool:
        """True for the record of a cancellation (``Cancelled`` thrown in)."""
        return self.type == CANCELLED

    @property
    def original(self) -> ErrorInfo:
        """The innermost error of the ``cause`` chain: what first went wrong.

        For a run that failed on an uncaught step failure this is the step
        function's own exception (``"builtins.ValueError"``, its message).
        """
        error = self
        while error.cause is not None:
            error = error.cause
        return error

    def caused_by(self, exc_type: _ExceptionType) -> bool:
        """Whether this error or one it wraps was an instance of ``exc_type`` (by name)."""
        name = f"{exc_type.__module__}.{exc_type.__qualname__}"
        error: ErrorInfo | None = self
        while error is not None:
            if name in error.mro:
                return True
            error = error.cause
        return False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form, for storage."""
        data: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "mro": list(self.mro),
            "traceback": self.traceback,
        }
        if self.cause is not None:
            data["cause"] = self.cause.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        """Inverse of ``to_json``."""
        return cls(
            type=str(data["type"]),
            message=str(data["message"]),
            mro=tuple(str(name) for name in data.get("mro", ())),
            traceback=data.get("traceback"),
            cause=cls.from_json(data["cause"]) if data.get("cause") else None,
        )


#: Bound on an earlier attempt's recorded message (characters): a summary.
MAX_ATTEMPT_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class Attempt:
    """An earlier attempt of a step: one that failed and was tried again.

    Only retried attempts are kept, so a step that succeeds at its first
    try records none; the last attempt is the step record itself.

    Attributes:
        attempt: its number (1 for the first try).
        started_at: when it was claimed (None if that is not known).
        ended_at: when it was recorded as failed (for a lapsed lease: when
            the lease ran out).
        error_type: the qualified name of what it raised.
        message: the error's message, cut to a summary.
        retry_at: when the next attempt was due.
    """

    attempt: int
    started_at: datetime | None
    ended_at: datetime
    error_type: str
    message: str
    retry_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form, for storage."""
        return {
            "attempt": self.attempt,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat(),
            "error_type": self.error_type,
            "message": self.message,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        """Inverse of ``to_json``."""
        started, retry = data.get("started_at"), data.get("retry_at")
        return cls(
            attempt=int(data["attempt"]),
            started_at=datetime.fromisoformat(started) if started else None,
            ended_at=datetime.fromisoformat(str(data["ended_at"])),
            error_type=str(data["error_type"]),
            message=str(data["message"]),
            retry_at=datetime.fromisoformat(retry) if retry else None,
        )


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a run, as recorded in its journal.

    Attributes:
        position: 0-based order in which the workflow reached the step; the
            branches of a ``gather`` take consecutive positions.
        kind: ``"run"``, ``"sleep"``, ``"call"``, ``"event"``, ``"invoke"`` or
            ``"reply"`` (an update's answer; ``ctx.receive`` is an ``"event"``).
        name: the step name given in the workflow code.
        status: pending, completed or failed.
        result: the result as JSON text, once completed.
        error: the final error, once failed.
        attempts: how many times the step was tried.
        completed_at: when it settled (the workflow clock, ``ctx.now()``,
            reads the latest of these).
        wake_at: for a pending step, when it is due (sleep end, event
            timeout, retry back-off).
        key: the event key of an event step, the child run id of an invoke,
            the update id of a reply.
        started_at: when the step was first reached.
        lease_until: while a worker runs the step, when its claim lapses
            (a crashed worker's step is claimed again after that).
        lease_owner: an id of the claim, so a worker whose lease lapsed
            cannot record over the step's new owner.
        past_attempts: the earlier attempts that failed and were retried,
            oldest first (empty for a step settled at its first try).
    """

    position: int
    kind: str
    name: str
    status: StepStatus = StepStatus.COMPLETED
    result: str | None = None
    error: ErrorInfo | None = None
    attempts: int = 1
    completed_at: datetime | None = None
    wake_at: datetime | None = None
    key: str | None = None
    started_at: datetime | None = field(default=None, compare=False)
    lease_until: datetime | None = field(default=None, compare=False)
    lease_owner: str | None = field(default=None, compare=False)
    past_attempts: tuple[Attempt, ...] = field(default=(), compare=False)

    @property
    def settled(self) -> bool:
        """True once the step has completed or failed for good."""
        return self.status is not StepStatus.PENDING

    def describe(self) -> str:
        """``run 'charge'``: the kind and name, as errors show them."""
        return f"{self.kind} {self.name!r}"
