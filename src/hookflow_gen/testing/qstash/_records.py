"""Read-only snapshots the server hands to tests: messages, attempts, DLQ, counters."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DeliveryAttempt",
    "DlqEntry",
    "MessageKind",
    "MessageState",
    "PublishedMessage",
    "ScheduleRecord",
    "Stats",
    "WorkflowRunRecord",
]

MessageState = Literal["CREATED", "ACTIVE", "RETRY", "DELIVERED", "FAILED", "CANCELLED"]
"""Where a message is in its life, named as QStash's logs name the states."""

MessageKind = Literal["publish", "callback", "failure_callback"]
"""Why the message exists: published through the API, or made by the server for a callback."""


@dataclasses.dataclass(frozen=True, slots=True)
class PublishedMessage:
    """A message as the server holds it, copied at the moment it was asked for.

    Attributes:
        message_id: The id returned to the publisher and sent as ``Upstash-Message-Id``.
        kind: ``"publish"`` for API messages; callbacks are messages too, as in QStash.
        url: The destination, exactly as it will be called and signed.
        method: The HTTP method of the delivery.
        headers: The headers of the publish request (names lower-cased).
        forward_headers: The headers delivered to the destination, prefix stripped.
        body: The raw body.
        content_type: The ``Content-Type`` delivered, if any.
        published_at: Real unix time of the publish.
        not_before: Unix time in the server's (unscaled) QStash time before
            which the message is not delivered.
        max_retries: Retries allowed after the first attempt.
        state: The current state.
        attempts: How many attempts were made (duplicated copies not counted).
        deduplication_id: The explicit or content-based deduplication key, if any.
        callback: The ``Upstash-Callback`` URL, if any.
        failure_callback: The ``Upstash-Failure-Callback`` URL, if any.
        queue: The queue name for ``/v2/enqueue`` messages.
        label: The ``Upstash-Label`` value, if any.
        source_message_id: For callbacks, the message whose attempt triggered it.
        schedule_id: For a schedule's message, the schedule.
        fired_at: For a schedule's message, the cron tick that made it, in
            QStash time (its ``createdAt`` in the REST API).
    """

    message_id: str
    kind: MessageKind
    url: str
    method: str
    headers: Mapping[str, str]
    forward_headers: Mapping[str, str]
    body: bytes
    content_type: str | None
    published_at: float
    not_before: float
    max_retries: int
    state: MessageState
    attempts: int
    deduplication_id: str | None
    callback: str | None
    failure_callback: str | None
    queue: str | None
    label: str | None
    source_message_id: str | None
    schedule_id: str | None = None
    fired_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One HTTP request made to a destination.

    Attributes:
        message_id: The message delivered.
        url: The URL called.
        retried: The ``Upstash-Retried`` value sent (0 for the first attempt).
        copy: 0 for the attempt that decides the outcome; 1, 2, ... for extra
            copies made by fault injection.
        status: The answer's status code, or ``None`` when no answer counted
            (connection error, timeout, or a dropped answer).
        error: Why no answer counted, if so.
        response_headers: The answer's headers (names lower-cased).
        response_body: The answer's body.
        due_at: Real unix time the attempt was due.
        started_at: Real unix time the request started.
        finished_at: Real unix time the answer (or error) came back.
        next_delay: QStash seconds (unscaled) until the next retry, or ``None``
            when no retry follows this attempt.
        fault: The injected fault that shaped the attempt, if any.
    """

    message_id: str
    url: str
    retried: int
    copy: int
    status: int | None
    error: str | None
    response_headers: Mapping[str, str]
    response_body: bytes
    due_at: float
    started_at: float
    finished_at: float
    next_delay: float | None
    fault: str | None

    @property
    def succeeded(self) -> bool:
        """Whether the destination answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@dataclasses.dataclass(frozen=True, slots=True)
class DlqEntry:
    """A message that ended in the dead-letter queue.

    Attributes:
        dlq_id: The id used by ``/v2/dlq/{dlqId}``.
        message: The message, in its final state.
        response_status: Status of the last attempt (0 when there was no answer).
        response_headers: Headers of the last answer.
        response_body: Body of the last answer.
        failed_at: Real unix time the message failed.
    """

    dlq_id: str
    message: PublishedMessage
    response_status: int
    response_headers: Mapping[str, str]
    response_body: bytes
    failed_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A cron schedule as the server holds it (``/v2/schedules``).

    Attributes:
        schedule_id: The id returned by ``client.schedule.create``.
        destination: The URL (or queue destination) each firing publishes to.
        cron: The cron expression, as given.
        paused: Whether firings are suspended.
        created_at: Real unix time the schedule was created (or last replaced).
        last_fired_at: QStash time (see :meth:`QStashServer.now`) of the last
            firing, if any.
        next_fire_at: QStash time of the next firing; ``None`` while paused.
        message_ids: The messages published by firings, oldest first.
    """

    schedule_id: str
    destination: str
    cron: str
    paused: bool
    created_at: float
    last_fired_at: float | None
    next_fire_at: float | None
    message_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Counters since the server started (or since :meth:`QStashServer.reset`).

    Attributes:
        published: Messages accepted through the API (publish, enqueue and
            batch), duplicates excluded. This is what QStash bills.
        published_bytes: Total body bytes of those messages.
        deduplicated: Publishes answered with an earlier message's id.
        callbacks: Callback and failure-callback messages the server made.
        callback_bytes: Total body bytes of those callback messages.
        attempts: HTTP requests made to destinations, fault copies included.
        delivered: Messages that ended with a 2xx answer.
        failed: Messages that ended in the DLQ.
        cancelled: Messages cancelled before delivery.
        delivered_bytes: Total body bytes sent to destinations, every attempt
            and copy counted (a workflow delivery carries its whole step list).
        largest_delivery: The largest body sent to a destination, in bytes.
    """

    published: int
    published_bytes: int
    deduplicated: int
    callbacks: int
    callback_bytes: int
    attempts: int
    delivered: int
    failed: int
    cancelled: int
    delivered_bytes: int
    largest_delivery: int


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowRunRecord:
    """An Upstash Workflow run as the server holds it.

    Attributes:
        run_id: ``Upstash-Workflow-RunId``.
        url: The workflow endpoint.
        state: ``RUN_STARTED``, ``RUN_SUCCESS``, ``RUN_FAILED`` or ``RUN_CANCELED``.
        created_at: Real unix time the run started.
        completed_at: Real unix time it ended, if it has.
        initial_body: The run's initial payload.
        steps: The finished steps, decoded, in the order they came due.
        message_ids: Every message of the run, oldest first.
    """

    run_id: str
    url: str
    state: Literal["RUN_STARTED", "RUN_SUCCESS", "RUN_FAILED", "RUN_CANCELED"]
    created_at: float
    completed_at: float | None
    initial_body: bytes
    steps: tuple[Mapping[str, Any], ...]
    message_ids: tuple[str, ...]
