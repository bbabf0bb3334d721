"""Updates: a typed request into a running workflow that gets an answer back.

An ``Update`` names the request and carries both of its types; the caller
and the workflow share it::

    approve = Update("approve", ApproveRequest, ApproveAnswer)

    # the workflow, at a yield point
    req = yield from ctx.receive(approve)          # Received[ApproveRequest, ApproveAnswer]
    yield from ctx.reply(req, ApproveAnswer(...))  # recorded once, in the journal

    # the caller
    answer = handle.update(approve, ApproveRequest(...), timeout=10)  # ApproveAnswer

The request travels as an event on a key private to the run and the update
(buffered until the workflow receives it, as events are); the answer is
written with the ``reply`` step's record, in the same transaction, to the
update's row, which the caller polls. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeGuard, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter

from ._codec import adapter_for
from .exceptions import WorkflowDefinitionError

__all__ = [
    "Received",
    "Update",
    "UpdateState",
    "UpdateStatus",
    "is_update_key",
    "update_key",
    "update_name_in",
]

Q = TypeVar("Q")
A = TypeVar("A")

#: The longest update name: it is the name of the ``receive`` and ``reply`` steps.
MAX_NAME = 150
_KEY_PREFIX = "hookflow.update:"


class Update(Generic[Q, A]):
    """The definition of an update: its name, request type and answer type.

    Define it once, next to the workflow, and use the same object on both
    sides: ``ctx.receive(update)`` in the workflow, ``handle.update(update,
    request)`` in the caller. The types are pydantic-validated on both ends
    (a request that does not fit is refused before anything is stored).

    Args:
        name: the update's name, unique within the workflow that receives it.
        request: the request's type (usually a pydantic model).
        answer: the answer's type (``type(None)`` for an update that answers
            nothing but its acceptance).
    """

    __slots__ = ("answer_adapter", "answer_type", "name", "request_adapter", "request_type")

    def __init__(self, name: str, request: type[Q], answer: type[A]) -> None:
        if not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise WorkflowDefinitionError(f"an update name must be a string, got {name!r}")
        if not name:
            raise WorkflowDefinitionError(
                f"an update name must be a non-empty string, got {name!r}"
            )
        if len(name) > MAX_NAME or "\x00" in name:
            raise WorkflowDefinitionError(
                f"update name {name[:40]!r}... must be at most {MAX_NAME} characters, without NUL"
            )
        self.name: str = name
        self.request_type: type[Q] = request
        self.answer_type: type[A] = answer
        self.request_adapter: TypeAdapter[Q] = adapter_for(request)
        self.answer_adapter: TypeAdapter[A] = adapter_for(answer)

    def __repr__(self) -> str:
        return (
            f"Update({self.name!r}, {getattr(self.request_type, '__name__', self.request_type)}, "
            f"{getattr(self.answer_type, '__name__', self.answer_type)})"
        )

    @property
    def received_type(self) -> type[Received[Q, A]]:
        """``Received[Q, A]``: what ``ctx.receive`` gives the workflow."""
        generic: Any = Received  # parametrised at run time with the stored types
        received: type[Received[Q, A]] = generic[self.request_type, self.answer_type]
        return received


class Received(BaseModel, Generic[Q, A]):
    """An update the workflow received: its id, name and typed request.

    Answer it with ``yield from ctx.reply(received, answer)`` (typed ``A``)
    or refuse it with ``yield from ctx.reject(received, reason)``.

    Attributes:
        id: the update's id (the caller's, or one made for it); a retried
            ``handle.update`` with the same id gets the same answer.
        name: the update's name.
        request: the request, validated as the update's request type.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    id: str
    name: str
    request: Q


def answer_type_of(received: Received[Any, Any]) -> Any:
    """The answer type ``A`` of a ``Received[Q, A]`` (``Any`` for an unparametrised one)."""
    args: tuple[Any, ...] = type(received).__pydantic_generic_metadata__["args"]
    return args[1] if len(args) == 2 else Any


def update_key(run_id: str, name: str) -> str:
    """The event key an update's requests travel on: private to the run and the update.

    A key that would not fit the store (255 characters) is a digest instead.
    """
    key = f"{_KEY_PREFIX}{name}:{run_id}"
    if len(key) <= 255:
        return key
    digest = hashlib.blake2b(f"{name}\x00{run_id}".encode(), digest_size=24).hexdigest()
    return f"{_KEY_PREFIX}{digest}"


def is_update_key(key: str | None) -> TypeGuard[str]:
    """True for the key of an update's requests (a ``ctx.receive`` waits on one)."""
    return key is not None and key.startswith(_KEY_PREFIX)


def update_name_in(key: str, run_id: str) -> str | None:
    """The update name in ``update_key(run_id, name)``; None for a digest or another key."""
    suffix = f":{run_id}"
    if not is_update_key(key) or not key.endswith(suffix):
        return None
    return key[len(_KEY_PREFIX) : -len(suffix)] or None


class UpdateStatus(StrEnum):
    """Where an update stands."""

    PENDING = "pending"  # accepted, not answered yet
    ANSWERED = "answered"
    REJECTED = "rejected"
    #: The run continued as new before receiving it: the update was handed on,
    #: under the same id, to the next run of the chain, which answers it.
    CONTINUED = "continued"

    @property
    def settled(self) -> bool:
        """True once the workflow answered or rejected it."""
        return self is UpdateStatus.ANSWERED or self is UpdateStatus.REJECTED


@dataclass(frozen=True, slots=True)
class UpdateState:
    """An update, as stored.

    Attributes:
        run_id: the run that has it: the one it was sent to, or the run of
            that run's continue-as-new chain that was live then.
        update_id: its id, unique within the run (looked up along its chain).
        name: the update's name.
        request: the request as JSON text.
        status: pending, answered, rejected, or continued (handed on to the
            next run of the chain, unreceived, which has its own row).
        answer: the answer as JSON text, once answered.
        reason: why the workflow rejected it, once rejected.
        created_at: when it was accepted.
        answered_at: when the workflow answered or rejected it.
    """

    run_id: str
    update_id: str
    name: str
    request: str
    status: UpdateStatus = UpdateStatus.PENDING
    answer: str | None = None
    reason: str | None = None
    created_at: datetime | None = None
    answered_at: datetime | None = None
