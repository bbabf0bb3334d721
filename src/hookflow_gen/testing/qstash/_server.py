"""The in-memory QStash-compatible server: REST API, scheduler and deliveries."""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from ._config import (
    DEDUPLICATION_WINDOW,
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    DEFAULT_RETRIES,
    DEFAULT_TOKEN,
    RetryDelayError,
    compile_retry_delay,
    default_backoff,
    parse_duration,
)
from ._cron import Cron, CronError
from ._faults import FaultPlan, Faults
from ._records import (
    DeliveryAttempt,
    DlqEntry,
    MessageKind,
    MessageState,
    PublishedMessage,
    ScheduleRecord,
    Stats,
    WorkflowRunRecord,
)
from ._scheduler import Scheduler
from ._signing import sign
from ._workflows import Run, Waiter, WorkflowRole

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

__all__ = ["QStashServer"]

_USER_AGENT: Final = "Upstash-QStash"
_PENDING: Final[frozenset[MessageState]] = frozenset({"CREATED", "ACTIVE", "RETRY"})
_FORWARD = "upstash-forward-"
_CALLBACK_FORWARD = "upstash-callback-forward-"
_FAILURE_CALLBACK_FORWARD = "upstash-failure-callback-forward-"
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

JSON = Any
"""A decoded JSON value (the REST payloads are heterogeneous by nature)."""


_Dispatch = Callable[[str, str, Iterable[tuple[str, str]], bytes], tuple[int, JSON]]


class _HttpError(Exception):
    """Answer the current API request with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(slots=True)
class _Draft:
    """A validated publish request, not yet stored."""

    url: str
    method: str
    headers: dict[str, str]
    forward_headers: dict[str, str]
    body: bytes
    content_type: str | None
    max_retries: int
    retry_delay: Callable[[int], float] | None
    retry_delay_expression: str | None
    delay: float
    timeout: float | None
    deduplication_key: str | None
    callback: str | None
    failure_callback: str | None
    callback_headers: dict[str, str]
    failure_callback_headers: dict[str, str]
    queue: str | None
    label: str | None
    kind: MessageKind = "publish"
    source_message_id: str | None = None
    flow_key: str | None = None
    flow: _FlowConfig | None = None
    schedule_id: str | None = None
    url_group: str | None = None
    endpoint_name: str | None = None
    workflow_run_id: str | None = None
    workflow_role: WorkflowRole | None = None
    workflow_url: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _FlowConfig:
    """``Upstash-Flow-Control-Value``: at most ``parallelism`` deliveries at once,
    at most ``rate`` started per ``period`` QStash seconds."""

    parallelism: int | None
    rate: int | None
    period: float

    def as_json(self) -> dict[str, JSON]:
        answer: dict[str, JSON] = {"period": int(self.period)}
        if self.parallelism is not None:
            answer["parallelism"] = self.parallelism
        if self.rate is not None:
            answer["rate"] = self.rate
        return answer


@dataclasses.dataclass(slots=True)
class _FlowState:
    """One flow-control key: its latest configuration and what it admits now."""

    config: _FlowConfig
    active: int = 0
    window_start: float = 0.0
    window_count: int = 0
    waiting: collections.deque[tuple[str, int, float, FaultPlan]] = dataclasses.field(
        default_factory=collections.deque[tuple[str, int, float, FaultPlan]]
    )
    paused: bool = False
    pinned_parallelism: int | None = None
    pinned_rate: tuple[int, float] | None = None

    def effective(self, incoming: _FlowConfig) -> _FlowConfig:
        """A message's configuration with the key's pinned values in its place."""
        rate, period = incoming.rate, incoming.period
        if self.pinned_rate is not None:
            rate, period = self.pinned_rate
        parallelism = incoming.parallelism
        if self.pinned_parallelism is not None:
            parallelism = self.pinned_parallelism
        return _FlowConfig(parallelism=parallelism, rate=rate, period=period)


@dataclasses.dataclass(slots=True)
class _Queue:
    """A queue of ``/v2/enqueue``: messages delivered in order, ``parallelism`` at a time."""

    name: str
    created_at: float
    parallelism: int = 1
    paused: bool = False
    updated_at: float = 0.0


@dataclasses.dataclass(slots=True)
class _UrlGroup:
    """A URL group (``/v2/topics``): a publish to its name reaches every endpoint."""

    name: str
    created_at: float
    updated_at: float
    endpoints: list[tuple[str, str | None]] = dataclasses.field(
        default_factory=list[tuple[str, str | None]]
    )


@dataclasses.dataclass(slots=True)
class _Schedule:
    """A cron schedule; mutated only under the server lock."""

    schedule_id: str
    destination: str
    cron: Cron
    pairs: list[tuple[str, str]]
    lowered: dict[str, str]
    body: bytes
    template: _Draft
    created_at: float
    paused: bool = False
    generation: int = 0
    last_fired_at: float | None = None
    next_fire_at: float | None = None
    message_ids: list[str] = dataclasses.field(default_factory=list[str])
    error: str | None = None

    def snapshot(self) -> ScheduleRecord:
        return ScheduleRecord(
            schedule_id=self.schedule_id,
            destination=self.destination,
            cron=self.cron.text,
            paused=self.paused,
            created_at=self.created_at,
            last_fired_at=self.last_fired_at,
            next_fire_at=self.next_fire_at,
            message_ids=tuple(self.message_ids),
        )


@dataclasses.dataclass(slots=True)
class _Message:
    """A stored message; mutated only under the server lock."""

    message_id: str
    draft: _Draft
    published_at: float
    not_before: float
    state: MessageState = "CREATED"
    attempts: int = 0
    # A schedule's message: when it fired on the QStash clock (its createdAt,
    # as QStash reports a scheduled message's creation at the cron tick).
    fired_at: float | None = None

    def snapshot(self) -> PublishedMessage:
        draft = self.draft
        return PublishedMessage(
            message_id=self.message_id,
            kind=draft.kind,
            url=draft.url,
            method=draft.method,
            headers=dict(draft.headers),
            forward_headers=dict(draft.forward_headers),
            body=draft.body,
            content_type=draft.content_type,
            published_at=self.published_at,
            not_before=self.not_before,
            max_retries=draft.max_retries,
            state=self.state,
            attempts=self.attempts,
            deduplication_id=draft.deduplication_key,
            callback=draft.callback,
            failure_callback=draft.failure_callback,
            queue=draft.queue,
            label=draft.label,
            source_message_id=draft.source_message_id,
            schedule_id=draft.schedule_id,
            fired_at=self.fired_at,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """What one HTTP request to a destination produced."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None
    started_at: float
    finished_at: float


@dataclasses.dataclass(slots=True)
class _Counters:
    published: int = 0
    published_bytes: int = 0
    deduplicated: int = 0
    callbacks: int = 0
    callback_bytes: int = 0
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    cancelled: int = 0
    delivered_bytes: int = 0
    largest_delivery: int = 0


class QStashServer:
    """A QStash-compatible server in memory, for tests and offline development.

    It speaks the REST API the ``qstash`` client uses (publish, enqueue,
    batch, messages, DLQ, keys), delivers messages with QStash's headers,
    signatures, retries, back-off, callbacks and dead-lettering, and lets
    tests compress time, inject faults and inspect everything it did.

    Time: every QStash duration (delays, not-before, back-off,
    ``Retry-After``, the deduplication window, fault delays) is multiplied by
    ``time_scale`` before the server waits, so ``time_scale=0.001`` turns the
    12 s first back-off into 12 ms. Signatures always carry the real time.
    ``Upstash-Timeout`` and ``delivery_timeout`` are network timeouts and are
    not scaled.

    Cron schedules (``/v2/schedules``) fire on the server's QStash clock
    (:meth:`now`, which runs ``1 / time_scale`` times as fast as real time),
    each firing a normal signed message. Flow control
    (``Upstash-Flow-Control-Key`` / ``-Value``) caps the deliveries of a key
    in flight (``parallelism``) and started per period (``rate``, ``period``).

    Upstash Workflow runs (messages with ``Upstash-Workflow-RunId``) are kept
    as QStash keeps them: each delivery to the workflow carries the run's
    accumulated step list, ``context.call`` goes through a callback,
    ``/v2/wait`` and ``/v2/notify`` park and resume steps, and
    ``/v2/workflows/runs`` ends or cancels runs (see ``_workflows.py``).

    Queues (``/v2/queues``, ``/v2/enqueue``) deliver in order, at most
    ``parallelism`` at a time, and hold their messages while paused; URL
    groups (``/v2/topics``) fan a publish out to every endpoint; ``/v2/events``
    logs every state change of a message.

    Not modelled: flow control on a queued message (the queue's
    parallelism applies instead); callbacks of callbacks. A callback is
    sent only after attempts that got an HTTP answer.

    Example:
        >>> with QStashServer(time_scale=0.001) as qs:  # doctest: +SKIP
        ...     client = QStash(qs.token, base_url=qs.url)
        ...     client.message.publish_json(url="http://127.0.0.1:9000/hook", body={})
        ...     qs.wait_idle()
        ...     assert qs.stats.delivered == 1
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str = DEFAULT_TOKEN,
        current_signing_key: str = DEFAULT_CURRENT_SIGNING_KEY,
        next_signing_key: str = DEFAULT_NEXT_SIGNING_KEY,
        time_scale: float = 1.0,
        workers: int = 8,
        delivery_timeout: float = 30.0,
        deduplication_window: float = DEDUPLICATION_WINDOW,
        on_attempt: Callable[[DeliveryAttempt], None] | None = None,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        Args:
            host: Interface to listen on.
            port: Port to listen on; 0 picks a free one (read :attr:`url`).
            token: The bearer token clients must present.
            current_signing_key: Key that signs deliveries.
            next_signing_key: Key reported as ``next`` by ``/v2/keys``.
            time_scale: Factor applied to every QStash duration before waiting.
            workers: Deliveries that may run at the same time.
            delivery_timeout: Real seconds a destination may take to answer
                when the message has no ``Upstash-Timeout``.
            deduplication_window: QStash seconds a deduplication key is kept.
            on_attempt: Called on a worker thread after every recorded attempt.
        """
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._host = host
        self._port = port
        self.token: str = token
        """The bearer token clients must present."""
        self.current_signing_key: str = current_signing_key
        """The key that signs deliveries (``QSTASH_CURRENT_SIGNING_KEY``)."""
        self.next_signing_key: str = next_signing_key
        """The next key (``QSTASH_NEXT_SIGNING_KEY``)."""
        self.time_scale: float = time_scale
        """Factor applied to every QStash duration before the server waits."""
        self.faults: Faults = Faults()
        """Fault-injection rules applied to delivery attempts."""
        self._workers = workers
        self._delivery_timeout = delivery_timeout
        self._deduplication_window = deduplication_window
        self._on_attempt = on_attempt
        self._lock = threading.RLock()
        self._messages: dict[str, _Message] = {}
        self._attempts: list[DeliveryAttempt] = []
        self._dlq: dict[str, DlqEntry] = {}
        self._dedup: dict[str, tuple[str, float]] = {}
        self._counters = _Counters()
        self._errors: list[BaseException] = []
        self._dlq_sequence = itertools.count()
        self._schedules: dict[str, _Schedule] = {}
        self._runs: dict[str, Run] = {}
        self._waiters: dict[str, Waiter] = {}
        self._queues: dict[str, _Queue] = {}
        self._reserved: dict[str, str] = {}
        self._url_groups: dict[str, _UrlGroup] = {}
        self._events: list[dict[str, JSON]] = []
        self._flows: dict[str, _FlowState] = {}
        self._origin = (time.time(), time.monotonic())
        self._httpd: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._scheduler: Scheduler | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Bind the socket and start the HTTP and delivery threads.

        Returns:
            The server itself, so ``qs = QStashServer().start()`` works.

        Raises:
            RuntimeError: If the server is already running.
        """
        if self._httpd is not None:
            raise RuntimeError("the server is already running")
        self._client = httpx.Client(
            timeout=self._delivery_timeout, follow_redirects=False, trust_env=False
        )
        self._scheduler = Scheduler(self._workers, self._errors.append)
        self._scheduler.start()
        httpd = _HTTPServer((self._host, self._port), self._dispatch)
        self._httpd = httpd
        self._http_thread = threading.Thread(
            target=functools.partial(httpd.serve_forever, poll_interval=0.05),
            name="qstash-http",
            daemon=True,
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop pending deliveries and join every thread.

        Deliveries already running finish first. Calling it twice is harmless.
        """
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._http_thread is not None:
            self._http_thread.join()
            self._http_thread = None
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        """Start the server for the ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give clients (``QSTASH_URL``), e.g. ``http://127.0.0.1:8080``.

        Raises:
            RuntimeError: If the server is not running.
        """
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{_host_text(str(host))}:{port}"

    # -- introspection -------------------------------------------------------

    def messages(self, *, kind: MessageKind | None = None) -> list[PublishedMessage]:
        """Return every stored message, oldest first.

        Args:
            kind: Only messages of this kind (e.g. ``"publish"``).
        """
        with self._lock:
            return [
                message.snapshot()
                for message in self._messages.values()
                if kind is None or message.draft.kind == kind
            ]

    def message(self, message_id: str) -> PublishedMessage:
        """Return one message by id.

        Raises:
            KeyError: If no such message exists.
        """
        with self._lock:
            return self._messages[message_id].snapshot()

    def attempts(self, message_id: str | None = None) -> list[DeliveryAttempt]:
        """Return the delivery attempts recorded so far, in the order they finished.

        Args:
            message_id: Only attempts for this message.
        """
        with self._lock:
            return [a for a in self._attempts if message_id in (None, a.message_id)]

    def dlq(self) -> list[DlqEntry]:
        """Return the dead-letter queue, oldest first."""
        with self._lock:
            return list(self._dlq.values())

    @property
    def stats(self) -> Stats:
        """Counters of messages, bytes and outcomes; see :class:`Stats`."""
        with self._lock:
            return Stats(**dataclasses.asdict(self._counters))

    def now(self) -> float:
        """The server's QStash clock: unix seconds that run ``1 / time_scale`` times as fast.

        Cron schedules fire and flow-control periods roll on this clock, so
        with ``time_scale=0.001`` an every-minute schedule fires every 60 ms.
        It starts at the real time when the server is created.
        """
        real, monotonic = self._origin
        return real + (time.monotonic() - monotonic) / self.time_scale

    def workflow_runs(self) -> list[WorkflowRunRecord]:
        """Return every Upstash Workflow run the server has seen, oldest first."""
        with self._lock:
            return [_run_record(run) for run in self._runs.values()]

    def schedules(self) -> list[ScheduleRecord]:
        """Return every cron schedule, oldest first."""
        with self._lock:
            return [schedule.snapshot() for schedule in self._schedules.values()]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no delivery is pending or running.

        A message delayed far into the future keeps the server busy; cancel
        it or use a smaller ``time_scale``. A schedule's next firing does not
        count as work; the messages it publishes do. Messages held by a
        paused queue or flow-control key do not count either.

        Args:
            timeout: Real seconds to wait.

        Raises:
            TimeoutError: If work remains after ``timeout``.
            RuntimeError: If a delivery task failed inside the server.
        """
        scheduler = self._require_scheduler()
        idle = scheduler.wait_idle(timeout)
        if self._errors:
            raise RuntimeError("a delivery task failed inside the server") from self._errors[0]
        if not idle:
            with self._lock:
                pending = [m.message_id for m in self._messages.values() if m.state in _PENDING]
            raise TimeoutError(f"still busy after {timeout}s; pending messages: {pending}")

    def reset(self) -> None:
        """Forget every message, attempt, DLQ entry, deduplication key, counter and fault."""
        if self._scheduler is not None:
            self._scheduler.clear()
        self.faults.clear()
        with self._lock:
            self._messages.clear()
            self._attempts.clear()
            self._dlq.clear()
            self._dedup.clear()
            self._schedules.clear()
            self._flows.clear()
            self._runs.clear()
            self._waiters.clear()
            self._queues.clear()
            self._reserved.clear()
            self._url_groups.clear()
            self._events.clear()
            self._counters = _Counters()
            self._errors.clear()

    # -- REST API ------------------------------------------------------------

    def _dispatch(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> tuple[int, JSON]:
        """Answer one API request: ``(status, JSON payload or None)``."""
        pairs = list(headers)
        lowered = {name.lower(): value for name, value in pairs}
        try:
            if not target.startswith("/v2/"):
                raise _HttpError(404, f"no route for {method} {target.split('?', maxsplit=1)[0]}")
            if lowered.get("authorization") != f"Bearer {self.token}":
                raise _HttpError(401, "Unauthorized")
            return self._route(method, target, pairs, lowered, body)
        except _HttpError as error:
            return error.status, {"error": error.message}

    def _route(
        self,
        method: str,
        target: str,
        pairs: list[tuple[str, str]],
        lowered: dict[str, str],
        body: bytes,
    ) -> tuple[int, JSON]:
        # Publish and enqueue carry the destination URL, query string and all,
        # raw in the path, so they are matched before the query is split off.
        if method == "POST" and target.startswith("/v2/publish/"):
            destination = target[len("/v2/publish/") :]
            if unquote(destination) in self._url_groups:
                return self._publish_to_group(unquote(destination), pairs, lowered, body, None)
            draft = self._parse(destination, pairs, lowered, body, None)
            return self._accept(draft)
        if method == "POST" and target.startswith("/v2/enqueue/"):
            queue, _, destination = target[len("/v2/enqueue/") :].partition("/")
            if unquote(destination) in self._url_groups:
                group = unquote(destination)
                return self._publish_to_group(group, pairs, lowered, body, unquote(queue))
            draft = self._parse(destination, pairs, lowered, body, unquote(queue))
            return self._accept(draft)
        if method == "POST" and target.startswith("/v2/schedules/"):
            return self._create_schedule(target[len("/v2/schedules/") :], pairs, lowered, body)
        path, _, query = target.partition("?")
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        parts = path.rstrip("/").split("/")[2:]
        match method, parts:
            case "POST", ["batch"]:
                return self._batch(body)
            case "GET", ["messages", message_id]:
                return 200, self._get_message(message_id)
            case "DELETE", ["messages", message_id]:
                self._cancel_one(message_id)
                return 202, None
            case "DELETE", ["messages"]:
                return 200, {"cancelled": self._cancel_many(body)}
            case "GET", ["dlq"]:
                return 200, self._list_dlq(params)
            case "GET", ["dlq", dlq_id]:
                return 200, self._dlq_json(self._dlq_entry(dlq_id))
            case "DELETE", ["dlq", dlq_id]:
                with self._lock:
                    self._dlq_entry(dlq_id)
                    del self._dlq[dlq_id]
                return 200, None
            case "DELETE", ["dlq"]:
                return 200, {"deleted": self._delete_dlq_many(body)}
            case "GET", ["schedules"]:
                with self._lock:
                    return 200, [self._schedule_json(s) for s in self._schedules.values()]
            case "GET", ["schedules", schedule_id]:
                with self._lock:
                    return 200, self._schedule_json(self._schedule(schedule_id))
            case "DELETE", ["schedules", schedule_id]:
                self._delete_schedule(schedule_id)
                return 200, None
            case "PATCH" | "POST", ["schedules", schedule_id, "pause"]:
                self._pause_schedule(schedule_id, paused=True)
                return 200, None
            case "PATCH" | "POST", ["schedules", schedule_id, "resume"]:
                self._pause_schedule(schedule_id, paused=False)
                return 200, None
            case "GET", ["flowControl"]:
                with self._lock:
                    return 200, [_flow_json(k, v) for k, v in self._flows.items()]
            case "GET", ["flowControl", key]:
                with self._lock:
                    state = self._flows.get(unquote(key))
                    if state is None:
                        raise _HttpError(404, f"flow control key {unquote(key)} not found")
                    return 200, _flow_json(unquote(key), state)
            case "POST", ["flowControl", key, action]:
                self._flow_action(unquote(key), action, params)
                return 200, None
            case "GET", ["globalParallelism"]:
                with self._lock:
                    active = sum(state.active for state in self._flows.values())
                return 200, {"parallelismMax": 0, "parallelismCount": active}
            case "DELETE", ["workflows", "runs", run_id]:
                self._end_run(run_id, cancel=params.get("cancel", "false").lower() == "true")
                return 200, None
            case "DELETE", ["workflows", "runs"]:
                return 200, {"cancelled": self._cancel_runs(params, body)}
            case "GET", ["workflows", "logs" | "events"]:
                return 200, self._workflow_logs(params)
            case "POST", ["wait", event_id]:
                return 200, self._wait(unquote(event_id), pairs, lowered, body)
            case "POST", ["notify", event_id]:
                return 200, self._notify(None, unquote(event_id), body)
            case "POST", ["notify", run_id, event_id]:
                return 200, self._notify(run_id, unquote(event_id), body)
            case "GET", ["waiters", event_id]:
                with self._lock:
                    found = [w for w in self._waiters.values() if w.event_id == unquote(event_id)]
                    return 200, [w.as_json() for w in found]
            case "GET", ["events"]:
                return 200, self._list_events(params)
            case "POST", ["queues"]:
                self._upsert_queue(body)
                return 200, None
            case "GET", ["queues"]:
                with self._lock:
                    return 200, [self._queue_json(q) for q in self._queues.values()]
            case "GET", ["queues", name]:
                with self._lock:
                    return 200, self._queue_json(self._queue(name))
            case "DELETE", ["queues", name]:
                self._delete_queue(name)
                return 200, None
            case "POST", ["queues", name, "pause"]:
                self._pause_queue(name, paused=True)
                return 200, None
            case "POST", ["queues", name, "resume"]:
                self._pause_queue(name, paused=False)
                return 200, None
            case "POST", ["topics", name, "endpoints"]:
                self._add_endpoints(unquote(name), body)
                return 200, None
            case "DELETE", ["topics", name, "endpoints"]:
                self._remove_endpoints(unquote(name), body)
                return 200, None
            case "GET", ["topics"]:
                with self._lock:
                    return 200, [self._url_group_json(g) for g in self._url_groups.values()]
            case "GET", ["topics", name]:
                with self._lock:
                    return 200, self._url_group_json(self._url_group(unquote(name)))
            case "DELETE", ["topics", name]:
                with self._lock:
                    self._url_group(unquote(name))
                    del self._url_groups[unquote(name)]
                return 200, None
            case "GET", ["keys"]:
                return 200, {"current": self.current_signing_key, "next": self.next_signing_key}
            case "POST", ["keys", "rotate"]:
                with self._lock:
                    self.current_signing_key = self.next_signing_key
                    self.next_signing_key = f"sig_{uuid.uuid4().hex[:28]}"
                    return 200, {"current": self.current_signing_key, "next": self.next_signing_key}
            case _:
                raise _HttpError(404, f"no route for {method} {path}")

    def _parse(
        self,
        destination: str,
        pairs: list[tuple[str, str]],
        lowered: Mapping[str, str],
        body: bytes,
        queue: str | None,
    ) -> _Draft:
        url = _destination_url(destination)
        method = lowered.get("upstash-method", "POST").upper()
        if method not in _METHODS:
            raise _HttpError(400, f"invalid Upstash-Method: {method}")
        max_retries = _int_header(lowered, "upstash-retries", DEFAULT_RETRIES)
        expression = lowered.get("upstash-retry-delay")
        retry_delay = None
        if expression is not None:
            try:
                retry_delay = compile_retry_delay(expression)
            except RetryDelayError as error:
                raise _HttpError(400, str(error)) from error
        published = time.time()
        delay = _duration_header(lowered, "upstash-delay") or 0.0
        if "upstash-not-before" in lowered:
            # Not-before wins over a delay, as in QStash.
            delay = _int_header(lowered, "upstash-not-before", 0) - published
        timeout = _duration_header(lowered, "upstash-timeout")
        forward = _prefixed(pairs, _FORWARD)
        content_type = lowered.get("content-type")
        dedup_key = None
        if "upstash-deduplication-id" in lowered:
            dedup_key = "id:" + lowered["upstash-deduplication-id"]
        elif lowered.get("upstash-content-based-deduplication", "").lower() == "true":
            digest = hashlib.sha256()
            for part in (url, method, content_type or "", *sorted(forward.items())):
                digest.update(repr(part).encode())
            digest.update(body)
            dedup_key = "content:" + digest.hexdigest()
        flow_key = lowered.get("upstash-flow-control-key")
        flow: _FlowConfig | None = None
        if flow_key is not None:
            flow = _flow_config(lowered.get("upstash-flow-control-value", ""))
        elif "upstash-flow-control-value" in lowered:
            raise _HttpError(400, "Upstash-Flow-Control-Value needs Upstash-Flow-Control-Key")
        run_id = lowered.get("upstash-workflow-runid")
        role: WorkflowRole | None = None
        if run_id is not None:
            if lowered.get("upstash-workflow-calltype", "").lower() == "tocallback":
                role = "call"
            elif lowered.get("upstash-workflow-init", "").lower() == "true":
                role = "init"
            else:
                role = "step"
        draft = _Draft(
            url=url,
            method=method,
            headers=dict(lowered),
            forward_headers=forward,
            body=body,
            content_type=content_type,
            max_retries=max_retries,
            retry_delay=retry_delay,
            retry_delay_expression=expression,
            delay=max(0.0, delay),
            timeout=timeout,
            deduplication_key=dedup_key,
            callback=_optional_url(lowered, "upstash-callback"),
            failure_callback=_optional_url(lowered, "upstash-failure-callback"),
            callback_headers=_prefixed(pairs, _CALLBACK_FORWARD),
            failure_callback_headers=_prefixed(pairs, _FAILURE_CALLBACK_FORWARD),
            queue=queue,
            label=lowered.get("upstash-label"),
            flow_key=flow_key,
            flow=flow,
            workflow_run_id=run_id,
            workflow_role=role,
            workflow_url=_optional_url(lowered, "upstash-workflow-url") if run_id else None,
        )
        _check_draft(draft)
        return draft

    def _accept(self, draft: _Draft) -> tuple[int, JSON]:
        message_id, deduplicated = self._store(draft)
        return (202 if deduplicated else 201), {
            "messageId": message_id,
            "deduplicated": deduplicated,
        }

    def _batch(self, body: bytes) -> tuple[int, JSON]:
        try:
            items: object = json.loads(body or b"null")
        except ValueError as error:
            raise _HttpError(400, "the batch body is not JSON") from error
        if not isinstance(items, list):
            raise _HttpError(400, "the batch body must be a JSON array")
        drafts: list[_Draft | list[_Draft]] = []
        # Validate the whole batch before storing any of it, so a bad item
        # does not leave half a batch published.
        for raw_item in cast("list[object]", items):
            if not isinstance(raw_item, dict):
                raise _HttpError(400, "each batch item must be a JSON object")
            item = cast("dict[str, object]", raw_item)
            destination = item.get("destination")
            if not isinstance(destination, str):
                raise _HttpError(400, "each batch item needs a destination")
            raw_headers = item.get("headers")
            header_map: dict[str, object] = {}
            if raw_headers is not None:
                if not isinstance(raw_headers, dict):
                    raise _HttpError(400, "batch item headers must be a JSON object")
                header_map = cast("dict[str, object]", raw_headers)
            pairs = [(name, str(value)) for name, value in header_map.items()]
            lowered = {name.lower(): value for name, value in pairs}
            content = item.get("body")
            raw = content.encode() if isinstance(content, str) else b""
            queue = item.get("queue")
            queue_name = queue if isinstance(queue, str) else None
            if destination in self._url_groups:
                drafts.append(self._group_drafts(destination, pairs, lowered, raw, queue_name))
            else:
                drafts.append(self._parse(destination, pairs, lowered, raw, queue_name))
        answers: list[JSON] = []
        for draft in drafts:
            if isinstance(draft, list):
                answers.append(self._store_group(draft))
                continue
            message_id, deduplicated = self._store(draft)
            answers.append({"messageId": message_id, "deduplicated": deduplicated})
        return 201, answers

    def _get_message(self, message_id: str) -> JSON:
        with self._lock:
            message = self._messages.get(message_id)
            if message is None or message.state not in _PENDING:
                raise _HttpError(404, f"message {message_id} not found")
            return _message_json(message)

    def _cancel_one(self, message_id: str) -> None:
        if not self._cancel(message_id):
            raise _HttpError(404, f"message {message_id} not found or already delivered")

    def _cancel_many(self, body: bytes) -> int:
        ids: list[str]
        if body.strip():
            try:
                ids = [str(i) for i in json.loads(body).get("messageIds", [])]
            except (ValueError, AttributeError) as error:
                raise _HttpError(400, 'expected {"messageIds": [...]}') from error
        else:
            with self._lock:
                ids = list(self._messages)
        return sum(self._cancel(message_id) for message_id in ids)

    def _cancel(self, message_id: str) -> bool:
        with self._lock:
            message = self._messages.get(message_id)
            # An attempt already on the wire cannot be recalled, as in QStash.
            if message is None or message.state not in {"CREATED", "RETRY"}:
                return False
            message.state = "CANCELLED"
            self._counters.cancelled += 1
            self._event(message, "CANCELED")
            reserved = self._reserved.pop(message_id, None)
        self._require_scheduler().discard(message_id)
        if reserved is not None:
            # It was woken for a free slot and dropped before it ran: pass the slot on.
            self._release(reserved)
        return True

    def _dlq_entry(self, dlq_id: str) -> DlqEntry:
        with self._lock:
            entry = self._dlq.get(dlq_id)
        if entry is None:
            raise _HttpError(404, f"DLQ message {dlq_id} not found")
        return entry

    def _list_dlq(self, params: Mapping[str, str]) -> JSON:
        with self._lock:
            entries = list(self._dlq.values())
        filters: dict[str, Callable[[DlqEntry, str], bool]] = {
            "messageId": lambda e, v: e.message.message_id == v,
            "url": lambda e, v: e.message.url == v,
            "queueName": lambda e, v: e.message.queue == v,
            "label": lambda e, v: e.message.label == v,
            "responseStatus": lambda e, v: str(e.response_status) == v,
            "fromDate": lambda e, v: e.failed_at * 1000 >= float(v),
            "toDate": lambda e, v: e.failed_at * 1000 <= float(v),
        }
        try:
            for name, keep in filters.items():
                if name in params:
                    entries = [e for e in entries if keep(e, params[name])]
            start = int(params.get("cursor", "0"))
            count = min(100, int(params.get("count", "100")))
        except ValueError as error:
            raise _HttpError(400, f"invalid DLQ query: {error}") from error
        page = entries[start : start + count]
        answer: dict[str, JSON] = {"messages": [_dlq_json(e) for e in page]}
        if start + count < len(entries):
            answer["cursor"] = str(start + count)
        return answer

    def _dlq_json(self, entry: DlqEntry) -> JSON:
        return _dlq_json(entry)

    def _delete_dlq_many(self, body: bytes) -> int:
        try:
            ids = [str(i) for i in json.loads(body or b"{}").get("dlqIds", [])]
        except (ValueError, AttributeError) as error:
            raise _HttpError(400, 'expected {"dlqIds": [...]}') from error
        with self._lock:
            return sum(self._dlq.pop(dlq_id, None) is not None for dlq_id in ids)

    # -- events, queues and URL groups -------------------------------------------

    def _event(
        self, message: _Message, state: str, extra: Mapping[str, JSON] | None = None
    ) -> None:
        """Log a state change of a message for ``/v2/events`` (under the lock)."""
        draft = message.draft
        if draft.kind != "publish":
            return
        event: dict[str, JSON] = {
            "time": _milliseconds(time.time()),
            "messageId": message.message_id,
            "state": state,
            "url": draft.url,
            "method": draft.method,
            "header": _listed(draft.forward_headers),
            "body": base64.b64encode(draft.body).decode("ascii"),
            "maxRetries": draft.max_retries,
        }
        optional: dict[str, JSON] = {
            "topicName": draft.url_group,
            "endpointName": draft.endpoint_name,
            "queueName": draft.queue,
            "scheduleId": draft.schedule_id,
            "label": draft.label,
            "callback": draft.callback,
            "failureCallback": draft.failure_callback,
        }
        event.update({key: value for key, value in optional.items() if value is not None})
        event.update(_flow_fields(draft))
        event.update(extra or {})
        self._events.append(event)

    def _list_events(self, params: Mapping[str, str]) -> JSON:
        filters = {
            "messageId": "messageId",
            "state": "state",
            "url": "url",
            "topicName": "topicName",
            "queueName": "queueName",
            "scheduleId": "scheduleId",
            "label": "label",
        }
        with self._lock:
            events = list(reversed(self._events))
        for param, field in filters.items():
            if param in params:
                events = [e for e in events if str(e.get(field)) == params[param]]
        try:
            if "fromDate" in params:
                events = [e for e in events if e["time"] >= int(params["fromDate"])]
            if "toDate" in params:
                events = [e for e in events if e["time"] <= int(params["toDate"])]
            start = int(params.get("cursor") or "0")
            count = min(1000, int(params.get("count") or "1000"))
        except ValueError as error:
            raise _HttpError(400, f"invalid events query: {error}") from error
        answer: dict[str, JSON] = {"events": events[start : start + count]}
        if start + count < len(events):
            answer["cursor"] = str(start + count)
        return answer

    def _queue_json(self, queue: _Queue) -> dict[str, JSON]:
        lag = sum(
            1
            for message in self._messages.values()
            if message.draft.queue == queue.name and message.state in _PENDING
        )
        return {
            "name": queue.name,
            "parallelism": queue.parallelism,
            "createdAt": _milliseconds(queue.created_at),
            "updatedAt": _milliseconds(queue.updated_at or queue.created_at),
            "lag": lag,
            "paused": queue.paused,
        }

    def _upsert_queue(self, body: bytes) -> None:
        try:
            fields: object = json.loads(body or b"null")
        except ValueError as error:
            raise _HttpError(400, "the queue body is not JSON") from error
        if not isinstance(fields, dict):
            raise _HttpError(400, 'expected {"queueName": ..., "parallelism": ...}')
        config = cast("dict[str, object]", fields)
        name, parallelism = config.get("queueName"), config.get("parallelism", 1)
        if not isinstance(name, str) or not name:
            raise _HttpError(400, "a queue needs a queueName")
        if not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1:
            raise _HttpError(400, f"invalid queue parallelism: {parallelism!r}")
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = _Queue(name, time.time())
            queue.parallelism = parallelism
            queue.paused = bool(config.get("paused", False))
            queue.updated_at = time.time()
            self._wake(f"queue:{name}")

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(unquote(name))
        if queue is None:
            raise _HttpError(404, f"queue {unquote(name)} not found")
        return queue

    def _pause_queue(self, name: str, *, paused: bool) -> None:
        with self._lock:
            queue = self._queue(name)
            queue.paused = paused
            queue.updated_at = time.time()
            self._wake(f"queue:{queue.name}")

    def _delete_queue(self, name: str) -> None:
        with self._lock:
            queue = self._queue(name)
            del self._queues[queue.name]
            pending = [
                m.message_id
                for m in self._messages.values()
                if m.draft.queue == queue.name and m.state in {"CREATED", "RETRY"}
            ]
        for message_id in pending:
            self._cancel(message_id)

    def _url_group_json(self, group: _UrlGroup) -> dict[str, JSON]:
        return {
            "name": group.name,
            "createdAt": _milliseconds(group.created_at),
            "updatedAt": _milliseconds(group.updated_at),
            "endpoints": [
                {"url": url, **({"name": name} if name else {})} for url, name in group.endpoints
            ],
        }

    def _endpoints(self, body: bytes) -> list[tuple[str | None, str | None]]:
        try:
            fields: object = json.loads(body or b"null")
        except ValueError as error:
            raise _HttpError(400, "the endpoints body is not JSON") from error
        raw = None
        if isinstance(fields, dict):
            raw = cast("dict[str, object]", fields).get("endpoints")
        if not isinstance(raw, list):
            raise _HttpError(400, 'expected {"endpoints": [{"url": ..., "name": ...}]}')
        endpoints: list[tuple[str | None, str | None]] = []
        for item in cast("list[object]", raw):
            if not isinstance(item, dict):
                raise _HttpError(400, "each endpoint must be a JSON object")
            entry = cast("dict[str, object]", item)
            url, name = entry.get("url"), entry.get("name")
            endpoints.append(
                (
                    _destination_url(url) if isinstance(url, str) else None,
                    name if isinstance(name, str) else None,
                )
            )
        return endpoints

    def _add_endpoints(self, name: str, body: bytes) -> None:
        endpoints = self._endpoints(body)
        if any(url is None for url, _ in endpoints):
            raise _HttpError(400, "each endpoint needs a url")
        now = time.time()
        with self._lock:
            group = self._url_groups.get(name)
            if group is None:
                group = self._url_groups[name] = _UrlGroup(name, now, now)
            for url, endpoint_name in endpoints:
                assert url is not None  # Checked above.
                group.endpoints = [e for e in group.endpoints if e[0] != url]
                group.endpoints.append((url, endpoint_name))
            group.updated_at = now

    def _remove_endpoints(self, name: str, body: bytes) -> None:
        endpoints = self._endpoints(body)
        with self._lock:
            group = self._url_group(name)
            urls = {url for url, _ in endpoints if url is not None}
            names = {name for _, name in endpoints if name is not None}
            group.endpoints = [
                (url, name)
                for url, name in group.endpoints
                if url not in urls and (name is None or name not in names)
            ]
            group.updated_at = time.time()

    def _url_group(self, name: str) -> _UrlGroup:
        group = self._url_groups.get(name)
        if group is None:
            raise _HttpError(404, f"url group {name} not found")
        return group

    def _publish_to_group(
        self,
        name: str,
        pairs: list[tuple[str, str]],
        lowered: dict[str, str],
        body: bytes,
        queue: str | None,
    ) -> tuple[int, JSON]:
        """A publish to a URL group's name: one message per endpoint."""
        drafts = self._group_drafts(name, pairs, lowered, body, queue)
        return 201, self._store_group(drafts)

    def _group_drafts(
        self,
        name: str,
        pairs: list[tuple[str, str]],
        lowered: dict[str, str],
        body: bytes,
        queue: str | None,
    ) -> list[_Draft]:
        with self._lock:
            endpoints = list(self._url_group(name).endpoints)
        if not endpoints:
            raise _HttpError(400, f"url group {name} has no endpoints")
        drafts: list[_Draft] = []
        for url, endpoint_name in endpoints:
            draft = self._parse(url, pairs, lowered, body, queue)
            draft.url_group, draft.endpoint_name = name, endpoint_name
            if draft.deduplication_key is not None:
                draft.deduplication_key += f"|{url}"
            drafts.append(draft)
        return drafts

    def _store_group(self, drafts: list[_Draft]) -> list[JSON]:
        answers: list[JSON] = []
        for draft in drafts:
            message_id, deduplicated = self._store(draft)
            answer = {"messageId": message_id, "url": draft.url, "deduplicated": deduplicated}
            answers.append(answer)
        return answers

    # -- schedules -------------------------------------------------------------

    def _create_schedule(
        self,
        destination: str,
        pairs: list[tuple[str, str]],
        lowered: dict[str, str],
        body: bytes,
    ) -> tuple[int, JSON]:
        cron_text = lowered.get("upstash-cron", "").strip()
        if not cron_text:
            raise _HttpError(400, "a schedule needs an Upstash-Cron header")
        try:
            cron = Cron.parse(cron_text)
            cron.next_after(self.now())
        except CronError as error:
            raise _HttpError(400, f"invalid Upstash-Cron: {error}") from error
        # Validated like a publish now, so a bad header fails the create, not a firing.
        template = self._parse(destination, pairs, lowered, body, lowered.get("upstash-queue-name"))
        schedule_id = lowered.get("upstash-schedule-id") or f"scd_{uuid.uuid4().hex}"
        with self._lock:
            previous = self._schedules.pop(schedule_id, None)
            schedule = _Schedule(
                schedule_id=schedule_id,
                destination=template.url,
                cron=cron,
                pairs=list(pairs),
                lowered=dict(lowered),
                body=body,
                template=template,
                created_at=time.time(),
                generation=0 if previous is None else previous.generation,
            )
            self._schedules[schedule_id] = schedule
            self._arm(schedule)
        return 201, {"scheduleId": schedule_id}

    def _schedule(self, schedule_id: str) -> _Schedule:
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            raise _HttpError(404, f"schedule {schedule_id} not found")
        return schedule

    def _delete_schedule(self, schedule_id: str) -> None:
        with self._lock:
            schedule = self._schedule(schedule_id)
            del self._schedules[schedule_id]
            schedule.generation += 1
        self._require_scheduler().discard(_schedule_key(schedule_id))

    def _pause_schedule(self, schedule_id: str, *, paused: bool) -> None:
        with self._lock:
            schedule = self._schedule(schedule_id)
            if schedule.paused != paused or schedule.next_fire_at is None:
                schedule.paused = paused
                self._arm(schedule)

    def _arm(self, schedule: _Schedule) -> None:
        """Plan the schedule's next firing on the QStash clock (under the lock)."""
        scheduler = self._require_scheduler()
        schedule.generation += 1
        scheduler.discard(_schedule_key(schedule.schedule_id))
        if schedule.paused:
            schedule.next_fire_at = None
            return
        now = self.now()
        due = schedule.cron.next_after(now)
        schedule.next_fire_at = due
        scheduler.schedule(
            (due - now) * self.time_scale,
            _schedule_key(schedule.schedule_id),
            functools.partial(self._fire, schedule.schedule_id, schedule.generation),
            background=True,
        )

    def _fire(self, schedule_id: str, generation: int) -> None:
        """Publish one message for a schedule, then plan the next firing.

        Firings missed while the server was slow are skipped, not caught up,
        as QStash does.
        """
        with self._lock:
            schedule = self._schedules.get(schedule_id)
            if schedule is None or schedule.generation != generation or schedule.paused:
                return
            fired_at = schedule.next_fire_at
            draft = dataclasses.replace(schedule.template, schedule_id=schedule_id)
        try:
            message_id, _ = self._store(draft, fired_at)
        finally:
            with self._lock:
                current = self._schedules.get(schedule_id) is schedule
                if current and schedule.generation == generation:
                    self._arm(schedule)
        with self._lock:
            schedule.last_fired_at = fired_at
            schedule.message_ids.append(message_id)

    def _schedule_json(self, schedule: _Schedule) -> dict[str, JSON]:
        draft = schedule.template
        answer: dict[str, JSON] = {
            "scheduleId": schedule.schedule_id,
            "cron": schedule.cron.text,
            "createdAt": _milliseconds(schedule.created_at),
            "destination": draft.url,
            "method": draft.method,
            "header": _listed(draft.forward_headers),
            "retries": draft.max_retries,
            "isPaused": schedule.paused,
            "callerIP": "127.0.0.1",
            **_body_fields(schedule.body, "body", "bodyBase64"),
        }
        states: dict[str, JSON] | None = None
        if schedule.message_ids:
            last = self._messages.get(schedule.message_ids[-1])
            if last is not None:
                states = {last.message_id: _SCHEDULE_STATES.get(last.state, "IN_PROGRESS")}
        optional: dict[str, JSON] = {
            **_callback_fields(draft),
            "delay": int(draft.delay) if draft.delay else None,
            "timeout": int(draft.timeout) if draft.timeout is not None else None,
            "lastScheduleTime": (
                None if schedule.last_fired_at is None else _milliseconds(schedule.last_fired_at)
            ),
            "nextScheduleTime": (
                None if schedule.next_fire_at is None else _milliseconds(schedule.next_fire_at)
            ),
            "lastScheduleStates": states,
        }
        answer.update({key: value for key, value in optional.items() if value is not None})
        answer.update(_flow_fields(draft))
        return answer

    # -- flow control ------------------------------------------------------------

    def _gate(self, draft: _Draft) -> tuple[str, _FlowConfig, bool] | None:
        """The gate an attempt passes: its queue, else its flow-control key (under the lock).

        Returns:
            ``(key, configuration, paused)``, or ``None`` for an ungated message.
        """
        if draft.queue is not None and draft.kind == "publish":
            queue = self._queues.get(draft.queue)
            if queue is None:
                # Enqueueing to an unknown queue creates it, as in QStash.
                queue = self._queues[draft.queue] = _Queue(draft.queue, time.time())
            config = _FlowConfig(parallelism=queue.parallelism, rate=None, period=1.0)
            return f"queue:{draft.queue}", config, queue.paused
        if draft.flow_key is not None and draft.flow is not None:
            return draft.flow_key, draft.flow, False
        return None

    def _admit(
        self, draft: _Draft, message_id: str, retried: int, due_at: float, plan: FaultPlan
    ) -> bool:
        """Take a slot of the message's gate for an attempt, or park it (under the lock).

        Returns:
            Whether the attempt may go now. A parked attempt waits, in order,
            for a parallelism slot or a resumed queue (woken by :meth:`_wake`),
            or is rescheduled for the start of the next rate period.
        """
        gate = self._gate(draft)
        if gate is None:
            return True
        key, config, paused = gate
        state = self._flows.get(key)
        if state is None:
            state = self._flows[key] = _FlowState(config=config, window_start=self.now())
        # The latest message's configuration is the key's (unless pinned), as in QStash.
        config = state.config = state.effective(config)
        paused = paused or state.paused
        full = config.parallelism is not None and state.active >= config.parallelism
        if paused or full or state.waiting:
            state.waiting.append((message_id, retried, due_at, plan))
            return False
        if config.rate is not None:
            now = self.now()
            if now - state.window_start >= config.period:
                state.window_start, state.window_count = now, 0
            if state.window_count >= config.rate:
                wait = state.window_start + config.period - now
                self._require_scheduler().schedule(
                    wait * self.time_scale,
                    message_id,
                    functools.partial(self._attempt, message_id, retried, due_at, plan),
                )
                return False
            state.window_count += 1
        state.active += 1
        return True

    def _release(self, key: str) -> None:
        """Give back a slot of a gate and wake whoever waits for it."""
        with self._lock:
            state = self._flows.get(key)
            if state is None:
                return
            state.active = max(0, state.active - 1)
            self._wake(key)

    def _wake(self, key: str) -> None:
        """Hand free slots of a gate to the attempts parked there, in order (under the lock).

        Each woken attempt holds its slot from here on (a reservation), so a
        message arriving meanwhile cannot overtake it.
        """
        state = self._flows.get(key)
        if state is None:
            return
        if key.startswith("queue:"):
            queue = self._queues.get(key.removeprefix("queue:"))
            if queue is None or queue.paused:
                return
            state.config = _FlowConfig(parallelism=queue.parallelism, rate=None, period=1.0)
        elif state.paused:
            return
        limit = state.config.parallelism
        while state.waiting and (limit is None or state.active < limit):
            message_id, retried, due_at, plan = state.waiting.popleft()
            message = self._messages.get(message_id)
            if message is None or message.state not in {"CREATED", "RETRY"}:
                continue
            state.active += 1
            self._reserved[message_id] = key
            self._require_scheduler().schedule(
                0.0,
                message_id,
                functools.partial(self._attempt, message_id, retried, due_at, plan, admitted=True),
            )

    def _flow_action(self, key: str, action: str, params: Mapping[str, str]) -> None:
        """``POST /v2/flowControl/{key}/{pause|resume|pin|unpin|resetRate}``."""
        with self._lock:
            state = self._flows.get(key)
            if state is None:
                # Acting on a key before its first message prepares the key.
                empty = _FlowConfig(parallelism=None, rate=None, period=1.0)
                state = self._flows[key] = _FlowState(config=empty, window_start=self.now())
            try:
                if action == "pause":
                    state.paused = True
                elif action == "resume":
                    state.paused = False
                elif action == "resetRate":
                    state.window_start, state.window_count = self.now(), 0
                elif action == "pin":
                    if "parallelism" in params:
                        state.pinned_parallelism = _positive_param(params["parallelism"])
                    if "rate" in params:
                        period = float(_positive_param(params.get("period", "1")))
                        state.pinned_rate = (_positive_param(params["rate"]), period)
                elif action == "unpin":
                    if params.get("parallelism", "").lower() == "true":
                        state.pinned_parallelism = None
                    if params.get("rate", "").lower() == "true":
                        state.pinned_rate = None
                else:
                    raise _HttpError(404, f"no route for POST /v2/flowControl/{key}/{action}")
            except ValueError as error:
                raise _HttpError(400, f"invalid flow control {action}: {error}") from error
            state.config = state.effective(state.config)
            self._wake(key)

    # -- Upstash Workflow ---------------------------------------------------------

    def _track_run(self, draft: _Draft, message_id: str, now: float) -> None:
        """Start a run or add a message to one (under the lock)."""
        run_id = draft.workflow_run_id
        if run_id is None:
            return
        run = self._runs.get(run_id)
        if draft.workflow_role == "init":
            if run is None:
                run = Run(
                    run_id=run_id,
                    url=draft.workflow_url or draft.url,
                    created_at=now,
                    initial_message_id=message_id,
                    initial_body=draft.body,
                )
                self._runs[run_id] = run
        elif run is None or not run.running:
            if draft.kind == "publish":
                raise _HttpError(400, f"workflow run {run_id} does not exist or has ended")
            return
        run.message_ids.append(message_id)

    def _delivery_body(self, message: _Message) -> bytes:
        """The body a delivery carries: a workflow's step list, or the message body."""
        draft = message.draft
        if draft.workflow_run_id is None or draft.workflow_role not in {"init", "step"}:
            return draft.body
        run = self._runs.get(draft.workflow_run_id)
        if run is None:
            return draft.body
        if draft.workflow_role == "step":
            run.add_step(message.message_id, draft.body, time.time())
        return run.delivery_body(message.message_id)

    def _end_run(self, run_id: str, *, cancel: bool) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise _HttpError(404, f"workflow run {run_id} not found")
            if not cancel:
                run.end("RUN_SUCCESS", time.time())
                return
            if not run.running:
                raise _HttpError(400, f"workflow run {run_id} has already ended ({run.state})")
            run.end("RUN_CANCELED", time.time())
            message_ids = list(run.message_ids)
            waiters = [w for w in self._waiters.values() if w.run_id == run_id]
            for waiter in waiters:
                del self._waiters[waiter.waiter_id]
        scheduler = self._require_scheduler()
        for waiter in waiters:
            scheduler.discard(_waiter_key(waiter.waiter_id))
        for message_id in message_ids:
            self._cancel(message_id)

    def _cancel_runs(self, params: Mapping[str, str], body: bytes) -> int:
        filters: dict[str, JSON] = dict(params)
        if body.strip():
            try:
                decoded: object = json.loads(body)
            except ValueError as error:
                raise _HttpError(400, "the cancel body is not JSON") from error
            if isinstance(decoded, dict):
                filters.update(cast("dict[str, JSON]", decoded))
        ids_value = filters.get("workflowRunIds")
        ids: set[str] | None = None
        if isinstance(ids_value, str):
            ids = {i for i in ids_value.split(",") if i}
        elif isinstance(ids_value, list):
            ids = {str(i) for i in cast("list[object]", ids_value)}
        url = filters.get("workflowUrl")
        prefix = filters.get("workflowUrlStartingWith")
        everything = str(filters.get("all", "")).lower() == "true"
        if ids is None and url is None and prefix is None and not everything:
            raise _HttpError(
                400, "give workflowRunIds, workflowUrl, workflowUrlStartingWith or all=true"
            )
        with self._lock:
            chosen = [
                run.run_id
                for run in self._runs.values()
                if run.running
                and (ids is None or run.run_id in ids)
                and (url is None or run.url == url)
                and (prefix is None or run.url.startswith(str(prefix)))
            ]
        for run_id in chosen:
            self._end_run(run_id, cancel=True)
        return len(chosen)

    def _workflow_logs(self, params: Mapping[str, str]) -> JSON:
        with self._lock:
            states = {
                mid: _STEP_STATES.get(message.state, "STEP_SUCCESS")
                for mid, message in self._messages.items()
            }
            runs = [
                run.as_log(states)
                for run in reversed(self._runs.values())
                if params.get("workflowRunId") in (None, run.run_id)
                and params.get("workflowUrl") in (None, run.url)
                and params.get("state") in (None, run.state)
            ]
        try:
            start = int(params.get("cursor") or "0")
            count = min(1000, int(params.get("count") or "10"))
        except ValueError as error:
            raise _HttpError(400, f"invalid logs query: {error}") from error
        answer: dict[str, JSON] = {"runs": runs[start : start + count]}
        if start + count < len(runs):
            answer["cursor"] = str(start + count)
        return answer

    def _wait(
        self, event_id: str, pairs: list[tuple[str, str]], lowered: dict[str, str], body: bytes
    ) -> JSON:
        """``POST /v2/wait/{eventId}``: park a step until a notify or its timeout."""
        run_id = lowered.get("upstash-workflow-runid")
        if not run_id:
            raise _HttpError(400, "a wait needs an Upstash-Workflow-RunId header")
        try:
            request: object = json.loads(body)
        except ValueError as error:
            raise _HttpError(400, "the wait body is not JSON") from error
        if not isinstance(request, dict):
            raise _HttpError(400, "the wait body must be a JSON object")
        fields = cast("dict[str, JSON]", request)
        url = _destination_url(str(fields.get("url") or ""))
        timeout_url = _destination_url(str(fields.get("timeoutUrl") or url))
        step = fields.get("step")
        if not isinstance(step, dict):
            raise _HttpError(400, "the wait body needs a step object")
        try:
            timeout = parse_duration(str(fields.get("timeout") or "7d"))
        except ValueError as error:
            raise _HttpError(400, f"invalid wait timeout: {fields.get('timeout')!r}") from error
        raw_timeout_headers: JSON = fields.get("timeoutHeaders") or {}
        if not isinstance(raw_timeout_headers, dict):
            raise _HttpError(400, "timeoutHeaders must be a JSON object")
        timeout_headers: list[tuple[str, str]] = []
        for name, values in cast("dict[str, object]", raw_timeout_headers).items():
            timeout_headers.append((str(name), _first_value(values)))
        timeout_body = fields.get("timeoutBody")
        waiter = Waiter(
            waiter_id=f"wtr_{uuid.uuid4().hex}",
            event_id=event_id,
            run_id=run_id,
            url=url,
            headers=[(n, v) for n, v in pairs if _is_publish_setting(n)],
            timeout_url=timeout_url,
            timeout_headers=timeout_headers,
            timeout_body=timeout_body if isinstance(timeout_body, str) else None,
            deadline=self.now() + timeout,
            step=cast("dict[str, JSON]", step),
        )
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or not run.running:
                raise _HttpError(400, f"workflow run {run_id} does not exist or has ended")
            early = run.lookback.get(event_id)
            event_data = early.pop(0) if early else None
            if event_data is None:
                self._waiters[waiter.waiter_id] = waiter
        if event_data is not None:
            # Notified before it waited (a run-scoped notify): resume at once.
            return {"messageId": self._publish_wait_step(waiter, event_data)}
        self._require_scheduler().schedule(
            timeout * self.time_scale,
            _waiter_key(waiter.waiter_id),
            functools.partial(self._wait_timed_out, waiter.waiter_id),
        )
        return {"messageId": None}

    def _wait_timed_out(self, waiter_id: str) -> None:
        with self._lock:
            waiter = self._waiters.pop(waiter_id, None)
        if waiter is not None:
            self._publish_wait_step(waiter, None)

    def _publish_wait_step(self, waiter: Waiter, event_data: bytes | None) -> str:
        """Publish the ``Wait`` step to the workflow: the event's data, or a timeout."""
        if event_data is None:
            url, pairs = waiter.timeout_url, waiter.timeout_headers
        else:
            url, pairs = waiter.url, waiter.headers
        lowered = {name.lower(): value for name, value in pairs}
        draft = self._parse(url, pairs, lowered, waiter.step_body(event_data=event_data), None)
        message_id, _ = self._store(draft)
        return message_id

    def _notify(self, run_id: str | None, event_id: str, body: bytes) -> JSON:
        """``POST /v2/notify/[{runId}/]{eventId}``: resume every matching waiter."""
        with self._lock:
            waiters = [
                w
                for w in self._waiters.values()
                if w.event_id == event_id and run_id in (None, w.run_id)
            ]
            for waiter in waiters:
                del self._waiters[waiter.waiter_id]
            if not waiters and run_id is not None:
                run = self._runs.get(run_id)
                if run is None:
                    raise _HttpError(404, f"workflow run {run_id} not found")
                if run.running:
                    # A run-scoped notify is kept until the run waits for it.
                    run.lookback.setdefault(event_id, []).append(body)
            created = {
                w.waiter_id: _milliseconds(self._runs[w.run_id].created_at)
                for w in waiters
                if w.run_id in self._runs
            }
        scheduler = self._require_scheduler()
        answers: list[JSON] = []
        for waiter in waiters:
            scheduler.discard(_waiter_key(waiter.waiter_id))
            answers.append(
                {
                    "waiter": waiter.as_json(),
                    "messageId": self._publish_wait_step(waiter, body),
                    "deduplicated": False,
                    "workflowRunId": waiter.run_id,
                    "workflowCreatedAt": created.get(waiter.waiter_id, 0),
                }
            )
        return answers

    # -- storing and delivering ---------------------------------------------

    def _store(self, draft: _Draft, fired_at: float | None = None) -> tuple[str, bool]:
        """Store a draft and schedule its first attempt; return ``(id, deduplicated)``.

        ``fired_at``: the QStash-clock time of the schedule tick that made it.
        """
        scheduler = self._require_scheduler()
        now = time.monotonic()
        with self._lock:
            key = draft.deduplication_key
            if key is not None:
                self._dedup = {k: v for k, v in self._dedup.items() if v[1] > now}
                if key in self._dedup:
                    self._counters.deduplicated += 1
                    return self._dedup[key][0], True
            message_id = f"msg_{uuid.uuid4().hex}"
            published = time.time()
            self._track_run(draft, message_id, published)
            message = _Message(
                message_id=message_id,
                draft=draft,
                published_at=published,
                not_before=published + draft.delay,
                fired_at=fired_at,
            )
            self._messages[message_id] = message
            self._event(message, "CREATED")
            if key is not None:
                expiry = now + self._deduplication_window * self.time_scale
                self._dedup[key] = (message_id, expiry)
            if draft.kind == "publish":
                self._counters.published += 1
                self._counters.published_bytes += len(draft.body)
            else:
                self._counters.callbacks += 1
                self._counters.callback_bytes += len(draft.body)
        due = published + draft.delay * self.time_scale
        scheduler.schedule(
            draft.delay * self.time_scale,
            message_id,
            functools.partial(self._attempt, message_id, 0, due, None),
        )
        return message_id, False

    def _attempt(
        self,
        message_id: str,
        retried: int,
        due_at: float,
        plan: FaultPlan | None,
        *,
        admitted: bool = False,
    ) -> None:
        """Make an attempt of a due message, if it is still pending.

        Args:
            message_id: The message.
            retried: The ``Upstash-Retried`` value of this attempt.
            due_at: Real unix time the attempt was due.
            plan: The fault plan, once taken.
            admitted: The attempt already holds a slot of its gate (see :meth:`_wake`).
        """
        with self._lock:
            message = self._messages.get(message_id)
            reserved = self._reserved.pop(message_id, None) if admitted else None
            if message is None or message.state not in {"CREATED", "RETRY"}:
                if reserved is not None:
                    self._release(reserved)
                return
            draft = message.draft
            gate = reserved if admitted else None
        if plan is None:
            plan = self.faults.take(draft.url)
            if plan.extra_delay > 0:
                # Hold the attempt back; the plan travels along so it is not taken twice.
                self._require_scheduler().schedule(
                    plan.extra_delay * self.time_scale,
                    message_id,
                    functools.partial(
                        self._attempt, message_id, retried, due_at, plan, admitted=admitted
                    ),
                )
                if reserved is not None:
                    with self._lock:
                        self._reserved[message_id] = reserved
                return
        with self._lock:
            if message.state not in {"CREATED", "RETRY"}:
                if gate is not None:
                    self._release(gate)
                return
            if gate is None:
                if not self._admit(draft, message_id, retried, due_at, plan):
                    return
                found = self._gate(draft)
                gate = None if found is None else found[0]
            message.state = "ACTIVE"
            self._event(message, "ACTIVE")
            message.attempts += 1
        try:
            with self._lock:
                body = self._delivery_body(message)
            signature = sign(key=self.current_signing_key, url=draft.url, body=body)
            answers = self._send_copies(draft, message_id, retried, plan, signature, body=body)
            with self._lock:
                sent = len(body) * len(answers)
                self._counters.delivered_bytes += sent
                self._counters.largest_delivery = max(self._counters.largest_delivery, len(body))
            self._settle(message, retried, due_at, plan, answers)
        except Exception as error:
            # Whatever went wrong, the attempt ends as a failed attempt (so a
            # retry or a dead letter), never as a message stuck ACTIVE.
            self._recover(message, retried, due_at, plan, error)
        finally:
            if gate is not None:
                self._release(gate)

    def _recover(
        self,
        message: _Message,
        retried: int,
        due_at: float,
        plan: FaultPlan,
        error: Exception,
    ) -> None:
        with self._lock:
            active = message.state == "ACTIVE"
        if not active:
            # The outcome was already recorded; only a later step (a callback
            # or the on_attempt hook) failed. wait_idle() reports it.
            self._errors.append(error)
            return
        now = time.time()
        reason = f"internal error: {type(error).__name__}: {error}"
        answer = _Answer(None, {}, b"", reason, now, now)
        try:
            self._settle(message, retried, due_at, plan, [answer])
        except Exception as second:
            with self._lock:
                message.state = "FAILED"
                self._counters.failed += 1
            self._errors.append(second)

    def _settle(
        self,
        message: _Message,
        retried: int,
        due_at: float,
        plan: FaultPlan,
        answers: list[_Answer],
    ) -> None:
        """Record the answers of one attempt and retry, deliver or dead-letter the message."""
        message_id, draft = message.message_id, message.draft
        first = answers[0]
        if plan.drop_answer:
            first = dataclasses.replace(
                first, status=None, error="answer dropped (fault injection)"
            )
        status = first.status
        succeeded = status is not None and 200 <= status < 300
        non_retryable = (
            status == 489 and first.headers.get("upstash-nonretryable-error", "").lower() == "true"
        )
        next_delay: float | None = None
        if not succeeded and not non_retryable and retried < draft.max_retries:
            next_delay = self._retry_delay(draft, retried, first)
        attempts = [
            _record(
                answer,
                index,
                message_id=message_id,
                url=draft.url,
                retried=retried,
                due_at=due_at,
                plan=plan,
            )
            for index, answer in enumerate(answers)
        ]
        attempts[0] = dataclasses.replace(
            attempts[0],
            status=first.status,
            error=first.error,
            next_delay=next_delay,
        )
        dlq_entry: DlqEntry | None = None
        with self._lock:
            if message_id not in self._messages:
                return  # reset() ran while the request was on the wire.
            self._attempts.extend(attempts)
            self._counters.attempts += len(attempts)
            outcome: dict[str, JSON] = {} if status is None else {"responseStatus": status}
            if first.error is not None:
                outcome["error"] = first.error
            if succeeded:
                message.state = "DELIVERED"
                self._counters.delivered += 1
                self._event(message, "DELIVERED", outcome)
            elif next_delay is not None:
                message.state = "RETRY"
                self._event(message, "ERROR", outcome)
                retry_at = _milliseconds(time.time() + next_delay)
                self._event(message, "RETRY", {"nextDeliveryTime": retry_at})
            else:
                message.state = "FAILED"
                self._counters.failed += 1
                self._run_failed(draft)
                self._event(message, "ERROR", outcome)
                self._event(message, "FAILED", outcome)
                dlq_id = f"{int(time.time() * 1000)}-{next(self._dlq_sequence)}"
                dlq_entry = DlqEntry(
                    dlq_id=dlq_id,
                    message=message.snapshot(),
                    response_status=status or 0,
                    response_headers=first.headers,
                    response_body=first.body,
                    failed_at=time.time(),
                )
                self._dlq[dlq_id] = dlq_entry
        if next_delay is not None:
            real_delay = next_delay * self.time_scale
            self._require_scheduler().schedule(
                real_delay,
                message_id,
                functools.partial(
                    self._attempt, message_id, retried + 1, time.time() + real_delay, None
                ),
            )
        if self._on_attempt is not None:
            for attempt in attempts:
                try:
                    self._on_attempt(attempt)
                except Exception as error:  # A failing hook must not stop the callbacks.
                    self._errors.append(error)
        if draft.kind == "failure_callback":
            self._record_failure_function(draft, message_id, succeeded, next_delay is None)
        if draft.kind != "publish":
            return
        if draft.callback is not None and status is not None:
            payload = self._workflow_fields(draft, _callback_json(message, first, retried))
            self._store(_callback_draft(draft, "callback", message_id, payload))
        if dlq_entry is not None and draft.failure_callback is not None:
            payload = self._workflow_fields(draft, _callback_json(message, first, retried))
            payload["dlqId"] = dlq_entry.dlq_id
            self._store(_callback_draft(draft, "failure_callback", message_id, payload))

    def _run_failed(self, draft: _Draft) -> None:
        """A run's message dead-lettered: the run failed (under the lock)."""
        if draft.workflow_run_id is None or draft.kind == "failure_callback":
            return
        run = self._runs.get(draft.workflow_run_id)
        if run is not None:
            run.end("RUN_FAILED", time.time())

    def _record_failure_function(
        self, draft: _Draft, message_id: str, succeeded: bool, final: bool
    ) -> None:
        with self._lock:
            run = self._runs.get(draft.workflow_run_id or "")
            if run is None:
                return
            state = "CALLBACK_SUCCESS" if succeeded else "CALLBACK_INPROGRESS"
            if final and not succeeded:
                state = "CALLBACK_FAIL"
            run.failure = {"messageId": message_id, "url": draft.url, "state": state}

    def _workflow_fields(self, draft: _Draft, payload: dict[str, JSON]) -> dict[str, JSON]:
        """Callbacks of a workflow's messages name the run and carry its initial body."""
        if draft.workflow_run_id is None:
            return payload
        with self._lock:
            run = self._runs.get(draft.workflow_run_id)
            if run is None:
                return payload
            payload["workflowRunId"] = run.run_id
            payload["workflowCreatedAt"] = _milliseconds(run.created_at)
            if draft.workflow_role in {"init", "step"}:
                # The failure function's context gets the run's initial payload.
                payload["sourceBody"] = base64.b64encode(run.initial_body).decode("ascii")
        return payload

    def _retry_delay(self, draft: _Draft, retried: int, answer: _Answer) -> float:
        """QStash seconds before the next attempt."""
        retry_after = answer.headers.get("retry-after", "").strip()
        if answer.status is not None and retry_after.isdigit():
            return float(retry_after)
        if draft.retry_delay is not None:
            return draft.retry_delay(retried)
        return default_backoff(retried + 1)

    def _send_copies(
        self,
        draft: _Draft,
        message_id: str,
        retried: int,
        plan: FaultPlan,
        signature: str,
        *,
        body: bytes,
    ) -> list[_Answer]:
        def fresh() -> str:
            return (
                signature
                if plan.replay
                else sign(key=self.current_signing_key, url=draft.url, body=body)
            )

        answers: list[_Answer | None] = [None] * plan.concurrent_copies
        if plan.concurrent_copies > 1:
            signatures = [signature] + [fresh() for _ in range(plan.concurrent_copies - 1)]
            # A barrier makes the copies leave together instead of one by one.
            barrier = threading.Barrier(plan.concurrent_copies)

            def run(index: int) -> None:
                barrier.wait()
                answers[index] = self._send(draft, message_id, retried, signatures[index], body)

            threads = [
                threading.Thread(target=run, args=(i,), name=f"qstash-copy-{i}")
                for i in range(1, plan.concurrent_copies)
            ]
            for thread in threads:
                thread.start()
            run(0)
            for thread in threads:
                thread.join()
        else:
            answers[0] = self._send(draft, message_id, retried, signature, body)
        done = [answer for answer in answers if answer is not None]
        for _ in range(plan.duplicates):
            done.append(self._send(draft, message_id, retried, fresh(), body))
        return done

    def _send(
        self, draft: _Draft, message_id: str, retried: int, signature: str, body: bytes
    ) -> _Answer:
        own = {
            "Upstash-Message-Id": message_id,
            "Upstash-Retried": str(retried),
            "Upstash-Signature": signature,
            "User-Agent": _USER_AGENT,
        }
        if draft.content_type is not None:
            own["Content-Type"] = draft.content_type
        if draft.schedule_id is not None:
            own["Upstash-Schedule-Id"] = draft.schedule_id
        if draft.workflow_run_id is not None and draft.workflow_role != "call":
            own["Upstash-Workflow-RunId"] = draft.workflow_run_id
            if draft.workflow_url is not None:
                own["Upstash-Workflow-Url"] = draft.workflow_url
        headers = _delivery_headers(draft.forward_headers, own)
        client = self._client
        started = time.time()
        if client is None:
            return _Answer(None, {}, b"", "server stopped", started, started)
        timeout = draft.timeout if draft.timeout is not None else self._delivery_timeout
        try:
            response = client.request(
                draft.method, draft.url, content=body, headers=headers, timeout=timeout
            )
        except Exception as error:
            # Not only httpx.HTTPError: h11 raises its own errors for some
            # malformed requests, and any of them is a failed attempt.
            return _Answer(None, {}, b"", f"{type(error).__name__}: {error}", started, time.time())
        return _Answer(
            status=response.status_code,
            headers={name.lower(): value for name, value in response.headers.items()},
            body=response.content,
            error=None,
            started_at=started,
            finished_at=time.time(),
        )

    def _require_scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the server is not running; call start() first")
        return self._scheduler


# -- helpers -------------------------------------------------------------------


_SCHEDULE_STATES: Final[dict[MessageState, str]] = {
    "DELIVERED": "SUCCESS",
    "FAILED": "FAIL",
    "CANCELLED": "FAIL",
}


_STEP_STATES: Final[dict[MessageState, str]] = {
    "CREATED": "STEP_PROGRESS",
    "ACTIVE": "STEP_PROGRESS",
    "RETRY": "STEP_RETRY",
    "FAILED": "STEP_FAILED",
    "CANCELLED": "STEP_CANCELED",
}


def _waiter_key(waiter_id: str) -> str:
    """The scheduler key of a waiter's timeout (never a message id)."""
    return f"waiter:{waiter_id}"


def _first_value(values: object) -> str:
    """A header value from JSON: a list of values (QStash's form) or a single one."""
    if isinstance(values, list):
        listed = cast("list[object]", values)
        return str(listed[0]) if listed else ""
    return str(values)


def _is_publish_setting(name: str) -> bool:
    """Headers of an API request that configure the message it publishes."""
    lowered = name.lower()
    return lowered.startswith("upstash-") or lowered == "content-type"


def _run_record(run: Run) -> WorkflowRunRecord:
    steps: list[Mapping[str, JSON]] = []
    for _, body, _ in run.steps:
        try:
            decoded: object = json.loads(body)
        except ValueError:
            decoded = {}
        steps.append(cast("dict[str, JSON]", decoded) if isinstance(decoded, dict) else {})
    return WorkflowRunRecord(
        run_id=run.run_id,
        url=run.url,
        state=run.state,
        created_at=run.created_at,
        completed_at=run.completed_at,
        initial_body=run.initial_body,
        steps=tuple(steps),
        message_ids=tuple(run.message_ids),
    )


def _schedule_key(schedule_id: str) -> str:
    """The scheduler key of a schedule's next firing (never a message id)."""
    return f"schedule:{schedule_id}"


def _flow_config(text: str) -> _FlowConfig:
    """Parse ``parallelism=3, rate=10, period=1m`` (any order, any subset)."""
    values: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not equals or name not in {"parallelism", "rate", "period"}:
            raise _HttpError(400, f"invalid Upstash-Flow-Control-Value part: {part.strip()!r}")
        values[name] = value.strip()

    def positive(name: str) -> int | None:
        if name not in values:
            return None
        if not values[name].isdigit() or int(values[name]) < 1:
            raise _HttpError(400, f"invalid flow control {name}: {values[name]!r}")
        return int(values[name])

    period = 1.0
    if "period" in values:
        try:
            period = parse_duration(values["period"])
        except ValueError as error:
            raise _HttpError(400, f"invalid flow control period: {values['period']!r}") from error
        if period <= 0:
            raise _HttpError(400, f"invalid flow control period: {values['period']!r}")
    parallelism, rate = positive("parallelism"), positive("rate")
    if parallelism is None and rate is None:
        raise _HttpError(400, "flow control needs a parallelism or a rate")
    return _FlowConfig(parallelism=parallelism, rate=rate, period=period)


def _flow_fields(draft: _Draft) -> dict[str, JSON]:
    if draft.flow_key is None or draft.flow is None:
        return {}
    return {"flowControlKey": draft.flow_key, **draft.flow.as_json()}


def _flow_json(key: str, state: _FlowState) -> dict[str, JSON]:
    config = state.config
    return {
        "flowControlKey": key,
        "waitListSize": len(state.waiting),
        "parallelismMax": config.parallelism or 0,
        "parallelismCount": state.active,
        "rateMax": config.rate or 0,
        "rateCount": state.window_count,
        "ratePeriod": int(config.period),
        "ratePeriodStart": int(state.window_start),
        "isPaused": state.paused,
        "isPinnedParallelism": state.pinned_parallelism is not None,
        "isPinnedRate": state.pinned_rate is not None,
    }


def _positive_param(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive integer")
    return int(text)


_TRANSPORT_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)
"""Headers the HTTP layer computes for each request; forwarded copies are dropped."""


def _delivery_headers(
    forward: Mapping[str, str], own: Mapping[str, str]
) -> list[tuple[bytes, bytes]]:
    """Merge forwarded headers with QStash's own, names compared without case.

    QStash's own headers win over forwarded ones of the same name, and the
    transport's (``Host``, ``Content-Length``, ...) are never taken from the
    publisher. Values are sent as the bytes that arrived (Latin-1, as
    :mod:`http.server` decodes them), or as UTF-8 when they came from JSON.
    """
    merged: dict[str, tuple[str, str]] = {}
    for name, value in forward.items():
        lowered = name.lower()
        if lowered not in _TRANSPORT_HEADERS:
            merged[lowered] = (name, value)
    for name, value in own.items():
        merged[name.lower()] = (name, value)
    return [(_header_bytes(name), _header_bytes(value)) for name, value in merged.values()]


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _check_draft(draft: _Draft) -> None:
    """Refuse at publish time what would otherwise fail at delivery time."""
    for headers in (draft.forward_headers, draft.callback_headers, draft.failure_callback_headers):
        for name, value in headers.items():
            if not name or "\r" in value or "\n" in value or "\0" in value:
                raise _HttpError(400, f"invalid forwarded header {name!r}")
    for kind, url in (("callback", draft.callback), ("failure_callback", draft.failure_callback)):
        if url is not None:
            try:
                _callback_draft(draft, cast("MessageKind", kind), "", {})
            except RetryDelayError as error:
                raise _HttpError(400, f"invalid {kind} retry delay: {error}") from error


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _destination_url(destination: str) -> str:
    """Recover the destination URL from the raw path of a publish request."""
    url = destination
    if not url.lower().startswith(("http://", "https://")):
        # Clients may percent-encode the whole destination.
        url = unquote(url)
    lower = url.lower()
    # Some proxies collapse "//" to "/"; QStash accepts "https:/host" as well.
    for scheme in ("http:", "https:"):
        if lower.startswith(scheme + "/") and not lower.startswith(scheme + "//"):
            url = scheme + "//" + url[len(scheme) + 1 :]
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise _HttpError(400, f"invalid destination url: {destination!r}")
    return url


def _optional_url(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else _destination_url(value)


def _int_header(headers: Mapping[str, str], name: str, default: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError as error:
        raise _HttpError(400, f"invalid {name}: {value!r}") from error
    if number < 0:
        raise _HttpError(400, f"invalid {name}: {value!r}")
    return number


def _duration_header(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise _HttpError(400, f"invalid {name}: {value!r}") from error


def _prefixed(pairs: Iterable[tuple[str, str]], prefix: str) -> dict[str, str]:
    """Headers starting with ``prefix`` (any case), prefix removed, name case kept."""
    return {name[len(prefix) :]: value for name, value in pairs if name.lower().startswith(prefix)}


def _milliseconds(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _listed(headers: Mapping[str, str]) -> dict[str, list[str]]:
    return {name: [value] for name, value in headers.items()}


def _body_fields(body: bytes, text_key: str, base64_key: str) -> dict[str, str]:
    """QStash returns UTF-8 bodies as text and anything else as base64."""
    try:
        return {text_key: body.decode("utf-8")}
    except UnicodeDecodeError:
        return {base64_key: base64.b64encode(body).decode("ascii")}


def _message_json(message: _Message) -> dict[str, JSON]:
    draft = message.draft
    answer: dict[str, JSON] = {
        "messageId": message.message_id,
        "url": draft.url,
        "method": draft.method,
        "header": _listed(draft.forward_headers),
        "maxRetries": draft.max_retries,
        "notBefore": _milliseconds(message.not_before),
        "createdAt": _milliseconds(_created_at(message)),
        **_body_fields(draft.body, "body", "bodyBase64"),
    }
    optional: dict[str, JSON] = {
        **_callback_fields(draft),
        "scheduleId": draft.schedule_id,
        "topicName": draft.url_group,
        "endpointName": draft.endpoint_name,
    }
    answer.update({key: value for key, value in optional.items() if value is not None})
    answer.update(_flow_fields(draft))
    return answer


def _callback_fields(draft: _Draft) -> dict[str, JSON]:
    """A message's callbacks, queue, label and retry delay, as QStash's API lists them."""
    return {
        "callback": draft.callback,
        "failureCallback": draft.failure_callback,
        "callbackHeader": _listed(draft.callback_headers) if draft.callback_headers else None,
        "failureCallbackHeader": (
            _listed(draft.failure_callback_headers) if draft.failure_callback_headers else None
        ),
        "queueName": draft.queue,
        "label": draft.label,
        "retryDelayExpression": draft.retry_delay_expression,
    }


def _snapshot_json(message: PublishedMessage) -> dict[str, JSON]:
    answer: dict[str, JSON] = {
        "messageId": message.message_id,
        "url": message.url,
        "method": message.method,
        "header": _listed(message.forward_headers),
        "maxRetries": message.max_retries,
        "notBefore": _milliseconds(message.not_before),
        "createdAt": _milliseconds(message.published_at),
        **_body_fields(message.body, "body", "bodyBase64"),
    }
    optional: dict[str, JSON] = {
        "callback": message.callback,
        "failureCallback": message.failure_callback,
        "queueName": message.queue,
        "label": message.label,
    }
    answer.update({key: value for key, value in optional.items() if value is not None})
    return answer


def _dlq_json(entry: DlqEntry) -> dict[str, JSON]:
    answer = _snapshot_json(entry.message)
    answer.update(
        {
            "dlqId": entry.dlq_id,
            "responseStatus": entry.response_status,
            "responseHeader": _listed(entry.response_headers),
            **_body_fields(entry.response_body, "responseBody", "responseBodyBase64"),
        }
    )
    return answer


def _callback_json(message: _Message, answer: _Answer, retried: int) -> dict[str, JSON]:
    """The body QStash posts to ``Upstash-Callback`` / ``Upstash-Failure-Callback``."""
    draft = message.draft
    body = answer.body if answer.status is not None else (answer.error or "").encode()
    return {
        "status": answer.status or 0,
        "header": _listed(answer.headers),
        "body": base64.b64encode(body).decode("ascii"),
        "retried": retried,
        "maxRetries": draft.max_retries,
        "sourceMessageId": message.message_id,
        "topicName": draft.url_group or "",
        "endpointName": draft.endpoint_name or "",
        "url": draft.url,
        "method": draft.method,
        "sourceHeader": _listed(draft.forward_headers),
        "sourceBody": base64.b64encode(draft.body).decode("ascii"),
        "notBefore": str(_milliseconds(message.not_before)),
        "createdAt": str(_milliseconds(_created_at(message))),
        "scheduleId": draft.schedule_id or "",
        "callerIP": "127.0.0.1",
    }


def _callback_draft(
    source: _Draft, kind: MessageKind, source_message_id: str, payload: dict[str, JSON]
) -> _Draft:
    """A callback is a message of its own, configured by ``Upstash-[Failure-]Callback-*``."""
    role: WorkflowRole
    if kind == "callback":
        url, forward, prefix = source.callback, source.callback_headers, "upstash-callback-"
        role = "callback"
    else:
        role = "failure_callback"
        url = source.failure_callback
        forward = source.failure_callback_headers
        prefix = "upstash-failure-callback-"
    assert url is not None  # The caller checked that the source has this callback.
    config = source.headers
    expression = config.get(prefix + "retry-delay")
    return _Draft(
        url=url,
        method=config.get(prefix + "method", "POST").upper(),
        headers={},
        forward_headers=dict(forward),
        body=json.dumps(payload).encode(),
        content_type="application/json",
        max_retries=_int_header(config, prefix + "retries", DEFAULT_RETRIES),
        retry_delay=compile_retry_delay(expression) if expression else None,
        retry_delay_expression=expression,
        delay=_duration_header(config, prefix + "delay") or 0.0,
        timeout=_duration_header(config, prefix + "timeout"),
        deduplication_key=None,
        callback=None,
        failure_callback=None,
        callback_headers={},
        failure_callback_headers={},
        queue=None,
        label=source.label,
        kind=kind,
        source_message_id=source_message_id,
        workflow_run_id=config.get(prefix + "workflow-runid"),
        workflow_role=role if config.get(prefix + "workflow-runid") else None,
        workflow_url=config.get(prefix + "workflow-url"),
    )


def _record(
    answer: _Answer,
    copy: int,
    *,
    message_id: str,
    url: str,
    retried: int,
    due_at: float,
    plan: FaultPlan,
) -> DeliveryAttempt:
    return DeliveryAttempt(
        message_id=message_id,
        url=url,
        retried=retried,
        copy=copy,
        status=answer.status,
        error=answer.error,
        response_headers=answer.headers,
        response_body=answer.body,
        due_at=due_at,
        started_at=answer.started_at,
        finished_at=answer.finished_at,
        next_delay=None,
        fault=plan.description,
    )


class _HTTPServer(ThreadingHTTPServer):
    # Request threads are joined on close so stop() leaves no thread behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], dispatch: _Dispatch) -> None:
        self.dispatch = dispatch
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    # One request per connection: keep-alive would park a thread per client
    # connection and make shutdown wait for idle clients.
    protocol_version = "HTTP/1.0"
    server_version = "hookflow-qstash"
    timeout = 10
    # Headers and body leave in two writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK (about 40 ms on Linux) on every call.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; attempts are observable through the server."""

    def _answer(self) -> None:
        dispatch = cast("_HTTPServer", self.server).dispatch
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, payload = dispatch(self.command, self.path, self.headers.items(), body)
        except Exception as error:  # An API bug must answer 500, not drop the connection.
            status, payload = 500, {"error": f"internal error: {error}"}
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _created_at(message: _Message) -> float:
    """A message's ``createdAt``: a scheduled one's is its tick on the QStash clock."""
    return message.published_at if message.fired_at is None else message.fired_at
