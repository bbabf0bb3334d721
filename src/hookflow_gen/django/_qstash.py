"""The QStash scheduler: wake-ups and ``call`` steps as QStash messages.

Configure it with ``HOOKFLOW = {"SCHEDULER": "qstash", "QSTASH": {...}}``;
each key falls back to the environment variable in brackets::

    "QSTASH": {
        "TOKEN": "...",                    # [QSTASH_TOKEN] publishes messages
        "URL": "https://qstash.upstash.io",  # [QSTASH_URL] the QStash API
        "CURRENT_SIGNING_KEY": "sig_...",  # [QSTASH_CURRENT_SIGNING_KEY]
        "NEXT_SIGNING_KEY": "sig_...",     # [QSTASH_NEXT_SIGNING_KEY]
        "BASE_URL": "https://example.com", # the site as QStash reaches it
        "WEBHOOK_PATH": None,              # default: reverse("hookflow:qstash")
        "CALLBACK_PATH": None,             # default: reverse("hookflow:qstash-call")
        "SIGNATURE_BASE_URL": None,        # scheme and host QStash signs, behind a proxy
        "MAX_DELAY": 604800,               # longest delay of the plan; longer ones are chained
        "RETRIES": None,                   # QStash retries of a wake-up (its default: 3)
        "RETRY_DELAY": None,               # Upstash-Retry-Delay expression, in ms
        "PUBLISH_RETRIES": None,           # the client's own retries of a failed publish
        "CALL_LEASE": 3600,                # how long a call may stay in flight
        "CALL_RESPONSE_MAX_BYTES": 4194304,  # largest call answer kept; a larger one fails the step
        "RECOVER_AFTER": 600,              # a wake-up this late is re-published by the sweep
        "SWEEP_PATH": None,                # default: reverse("hookflow:qstash-sweep")
    }

A wake-up message carries only ``{"run_id": ..., "seq": ...}``: the journal
in the database is the source of truth, so a message's size does not grow
with the run. Its deduplication id is ``f"{run_id}-{seq}"``, so publishing
the same wake-up twice (two workers, a redelivered tick repairing a lost
publish) sends one message. Wake-ups are published only once the transaction
that set them commits: each is first written as an outbox row in that
transaction (``_outbox.py``), so a publish that fails after the commit is
retried by the next delivery of the run, a worker or the sweep
(``manage.py hookflow qstash-schedule`` makes QStash call it every minute).

Signatures are checked against the URL QStash was told to call: ``BASE_URL``
(or ``SIGNATURE_BASE_URL``) followed by the request's path and query, never
the scheme and host the request says it came to, so a TLS-terminating proxy
in front of the site does not turn every delivery into a 401.

System checks (with the QStash scheduler and ``DEBUG = False``):

==========================  ====================================================
``hookflow_gen.E101``       no QStash token
``hookflow_gen.E102``       a signing key is missing
``hookflow_gen.E103``       no ``BASE_URL``: QStash would not know where to deliver,
                            and signatures could not be checked against it
==========================  ====================================================

Signatures are verified in every case, ``DEBUG`` or not: without keys the
webhook refuses every delivery.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.core import checks
from qstash import QStash
from qstash.http import RetryConfig
from qstash.message import FlowControl

from .._codec import adapter_for
from ..exceptions import ConfigurationError
from ._settings import HookflowSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from django.core.management.base import CommandParser

    from .._flow import FlowGate
    from .._runtime import Runtime, StepInfo
    from .._steps import CallStep
    from .._store import RunState, Store

__all__ = [
    "QStashConfig",
    "QStashScheduler",
    "check_qstash",
    "qstash_dev",
    "qstash_dev_arguments",
    "qstash_flow_control",
]

log = logging.getLogger("hookflow_gen.qstash")

_ENV = {
    "TOKEN": "QSTASH_TOKEN",
    "URL": "QSTASH_URL",
    "CURRENT_SIGNING_KEY": "QSTASH_CURRENT_SIGNING_KEY",
    "NEXT_SIGNING_KEY": "QSTASH_NEXT_SIGNING_KEY",
}
_KEYS = frozenset(
    {
        *_ENV,
        "BASE_URL",
        "WEBHOOK_PATH",
        "CALLBACK_PATH",
        "SIGNATURE_BASE_URL",
        "MAX_DELAY",
        "RETRIES",
        "RETRY_DELAY",
        "PUBLISH_RETRIES",
        "CALL_LEASE",
        "CALL_RESPONSE_MAX_BYTES",
        "RECOVER_AFTER",
        "SWEEP_PATH",
    }
)
_DEFAULT_MAX_DELAY = timedelta(days=7)
# A call's answer arrives as a callback message, which QStash retries for about
# half an hour (12 s, 2.5 min, 30 min) if the site is down; the lease outlasts it.
_DEFAULT_CALL_LEASE = timedelta(hours=1)
_PUBLISHED_MEMORY = 4096
_DEFAULT_CALL_RESPONSE_MAX_BYTES = 4 * 1024 * 1024
# QStash retries a wake-up for about half an hour; one later than this was lost.
_DEFAULT_RECOVER_AFTER = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class QStashConfig:
    """The QStash scheduler's settings: ``HOOKFLOW["QSTASH"]`` over the environment.

    Attributes:
        token: the QStash token (``QSTASH_TOKEN``).
        url: the QStash API (``QSTASH_URL``); None: the hosted service.
        current_signing_key: verifies deliveries (``QSTASH_CURRENT_SIGNING_KEY``).
        next_signing_key: the key after rotation (``QSTASH_NEXT_SIGNING_KEY``).
        base_url: the site's public base URL, e.g. ``https://example.com``.
        webhook_path: the wake-up webhook's path; None: ``reverse("hookflow:qstash")``.
        callback_path: the call-callback path; None: ``reverse("hookflow:qstash-call")``.
        signature_base_url: the base URL deliveries are signed for, when it
            differs from ``base_url``; None: ``base_url``. The signed URL is
            this base followed by the request's path and query; only with
            neither set (``DEBUG``) is it rebuilt from the request.
        max_delay: the plan's longest delay; a longer wait is chained.
        retries: QStash retries of a wake-up message; None: QStash's default.
        retry_delay: an ``Upstash-Retry-Delay`` expression (milliseconds).
        publish_retries: retries of a failed publish inside the client.
        call_lease: how long a ``call`` handed to QStash may stay in flight.
        call_response_max_bytes: the largest ``call`` answer body accepted;
            a larger one fails the step with a non-retryable error.
        recover_after: how late a wake-up may be before the sweep takes its
            message for lost and wakes the run again.
        sweep_path: the sweep's path; None: ``reverse("hookflow:qstash-sweep")``.
    """

    token: str | None = None
    url: str | None = None
    current_signing_key: str | None = None
    next_signing_key: str | None = None
    base_url: str | None = None
    webhook_path: str | None = None
    callback_path: str | None = None
    signature_base_url: str | None = None
    max_delay: timedelta = _DEFAULT_MAX_DELAY
    retries: int | None = None
    retry_delay: str | None = None
    publish_retries: int | None = None
    call_lease: timedelta = _DEFAULT_CALL_LEASE
    call_response_max_bytes: int = _DEFAULT_CALL_RESPONSE_MAX_BYTES
    recover_after: timedelta = _DEFAULT_RECOVER_AFTER
    sweep_path: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: HookflowSettings | Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> QStashConfig:
        """Read the ``QSTASH`` dict (settings win) and the environment.

        Args:
            settings: the typed ``HOOKFLOW`` settings, or the ``QSTASH`` dict
                itself; None reads ``settings.HOOKFLOW``.
            environ: the environment (default ``os.environ``).

        Raises:
            ConfigurationError: an unknown key or a value of the wrong type.
        """
        if settings is None:
            from ._settings import get_settings

            settings = get_settings()
        options = settings.qstash if isinstance(settings, HookflowSettings) else settings
        env = os.environ if environ is None else environ
        unknown = sorted(str(key) for key in options if key not in _KEYS)
        if unknown:
            raise ConfigurationError(
                f"HOOKFLOW['QSTASH'] has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(_KEYS))}"
            )

        def text(key: str) -> str | None:
            value = options.get(key)
            if value is None and key in _ENV:
                value = env.get(_ENV[key]) or None
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"HOOKFLOW['QSTASH'][{key!r}] must be a string")
            return value or None

        def url(key: str) -> str | None:
            value = text(key)
            if value is not None and not value.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"HOOKFLOW['QSTASH'][{key!r}] must be an http(s) URL, got {value!r}"
                )
            return value.rstrip("/") if value else None

        return cls(
            token=text("TOKEN"),
            url=url("URL"),
            current_signing_key=text("CURRENT_SIGNING_KEY"),
            next_signing_key=text("NEXT_SIGNING_KEY"),
            base_url=url("BASE_URL"),
            webhook_path=text("WEBHOOK_PATH"),
            callback_path=text("CALLBACK_PATH"),
            signature_base_url=url("SIGNATURE_BASE_URL"),
            max_delay=_duration("MAX_DELAY", options.get("MAX_DELAY"), _DEFAULT_MAX_DELAY),
            retries=_count("RETRIES", options.get("RETRIES")),
            retry_delay=text("RETRY_DELAY"),
            publish_retries=_count("PUBLISH_RETRIES", options.get("PUBLISH_RETRIES")),
            call_lease=_duration("CALL_LEASE", options.get("CALL_LEASE"), _DEFAULT_CALL_LEASE),
            call_response_max_bytes=_size(
                "CALL_RESPONSE_MAX_BYTES", options.get("CALL_RESPONSE_MAX_BYTES")
            ),
            recover_after=_duration(
                "RECOVER_AFTER", options.get("RECOVER_AFTER"), _DEFAULT_RECOVER_AFTER
            ),
            sweep_path=text("SWEEP_PATH"),
        )


def _duration(key: str, value: object, default: timedelta) -> timedelta:
    if value is None:
        return default
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        delta = timedelta(seconds=value)
    else:
        raise ConfigurationError(
            f"HOOKFLOW['QSTASH'][{key!r}] must be seconds or a timedelta, got {value!r}"
        )
    if delta < timedelta(seconds=1):
        raise ConfigurationError(f"HOOKFLOW['QSTASH'][{key!r}] must be at least one second")
    return delta


def _count(key: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"HOOKFLOW['QSTASH'][{key!r}] must be an integer >= 0")
    return value


def _size(key: str, value: object) -> int:
    if value is None:
        return _DEFAULT_CALL_RESPONSE_MAX_BYTES
    if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
        raise ConfigurationError(f"HOOKFLOW['QSTASH'][{key!r}] must be a byte count >= 1024")
    return value


def _backoff(attempt: int) -> float:
    """Milliseconds before the client's next try of a failed publish (its own default curve)."""
    return math.exp(attempt) * 50


class QStashScheduler:
    """Delivers wake-ups and makes ``call`` steps through QStash.

    A wake-up becomes a message to the webhook view, published once the
    transaction that set it commits. QStash redelivers a delivery the site
    did not answer with 2xx, so a crashed tick is retried without a
    lease wake-up (``lease_wakeups = False``). ``call`` steps are published
    to their URL with the call-callback view as QStash's callback, so no
    worker waits on a slow API.

    Args:
        settings: the typed ``HOOKFLOW`` settings, the ``QSTASH`` dict, or a
            ``QStashConfig``; None reads ``settings.HOOKFLOW``.
        client: the ``qstash.QStash`` client to publish with (default: one
            built from the token and URL, on first use).
    """

    lease_wakeups = False

    def __init__(
        self,
        settings: HookflowSettings | Mapping[str, Any] | QStashConfig | None = None,
        *,
        client: QStash | None = None,
    ) -> None:
        self.config = (
            settings if isinstance(settings, QStashConfig) else QStashConfig.from_settings(settings)
        )
        self.call_lease = self.config.call_lease
        self._client = client
        self._own_client = client is None
        self._lock = threading.Lock()
        # Deduplication ids this process published: repairing a hand-off after
        # a tick then costs no request when nothing was lost.
        self._published: collections.OrderedDict[str, None] = collections.OrderedDict()

    @classmethod
    def from_settings(cls, settings: HookflowSettings | None = None) -> QStashScheduler:
        """The scheduler ``settings.HOOKFLOW`` (or ``settings``) configures."""
        return cls(settings)

    def __repr__(self) -> str:
        return f"QStashScheduler(url={self.config.url!r}, base_url={self.config.base_url!r})"

    @property
    def client(self) -> QStash:
        """The ``qstash.QStash`` client.

        Raises:
            ConfigurationError: no token is configured.
        """
        with self._lock:
            if self._client is None:
                if not self.config.token:
                    raise ConfigurationError(
                        "the QStash scheduler has no token: set HOOKFLOW['QSTASH']['TOKEN'] "
                        "or QSTASH_TOKEN"
                    )
                retry: RetryConfig | None = None
                if self.config.publish_retries is not None:
                    retry = {"retries": self.config.publish_retries, "backoff": _backoff}
                self._client = QStash(self.config.token, retry=retry, base_url=self.config.url)
            return self._client

    def close(self) -> None:
        """Close the HTTP connections of a client this scheduler built."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._own_client:
            # The client exposes no close(); its httpx client is one attribute down.
            http = getattr(getattr(client, "http", None), "_client", None)
            close = getattr(http, "close", None)
            if callable(close):
                close()

    # -- URLs -------------------------------------------------------------------

    def webhook_url(self) -> str:
        """The absolute URL of the wake-up webhook.

        Raises:
            ConfigurationError: no ``BASE_URL``, or the view is not routed.
        """
        return self._absolute(self.config.webhook_path, "hookflow:qstash", "WEBHOOK_PATH")

    def callback_url(self, run_id: str, position: int, owner: str) -> str:
        """The absolute call-callback URL for one claimed ``call`` step."""
        base = self._absolute(self.config.callback_path, "hookflow:qstash-call", "CALLBACK_PATH")
        # In the query string, not in forwarded headers: the signature covers the URL.
        query = urlencode({"run": run_id, "position": position, "owner": owner})
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def sweep_url(self) -> str:
        """The absolute URL of the sweep, which a QStash schedule calls."""
        return self._absolute(self.config.sweep_path, "hookflow:qstash-sweep", "SWEEP_PATH")

    def schedule_url(self, schedule: str) -> str:
        """The absolute URL a QStash cron schedule calls to start the named schedule's runs."""
        base = self._absolute(None, "hookflow:qstash-schedule", "SCHEDULE_PATH")
        return f"{base}{'&' if '?' in base else '?'}{urlencode({'schedule': schedule})}"

    def _absolute(self, path: str | None, name: str, key: str) -> str:
        if not self.config.base_url:
            raise ConfigurationError(
                "the QStash scheduler has no BASE_URL: set HOOKFLOW['QSTASH']['BASE_URL'] to "
                "the site's public URL, e.g. 'https://example.com'"
            )
        if path is None:
            from django.urls import NoReverseMatch, reverse

            try:
                path = reverse(name)
            except NoReverseMatch as exc:
                raise ConfigurationError(
                    f"the QStash webhook is not routed: include 'hookflow_gen.django.urls' in "
                    f"your URLconf, or set HOOKFLOW['QSTASH'][{key!r}]"
                ) from exc
        return self.config.base_url + "/" + path.lstrip("/")

    # -- wake-ups ---------------------------------------------------------------

    def wake(self, store: Store, run: RunState) -> None:
        """Owe the run's wake-up in the open transaction; publish it once that commits.

        On the Django store the debt is an outbox row written in the same
        transaction (see ``_outbox``), so a failed publish is retried later
        and never raises out of the commit. On another store (tests) the
        wake-up is published after the commit and a failure raises.
        """
        wake_at = run.wake_at
        if wake_at is None:
            return
        run_id, seq = run.run_id, run.wake_seq
        from ._store import DjangoStore

        if isinstance(store, DjangoStore):
            from . import _outbox

            using = store.db
            key = _outbox.owe(using, run_id, seq, wake_at)

            def send() -> None:
                _outbox.send_owed(self, using, key, run_id=run_id, seq=seq, wake_at=wake_at)

            store.on_commit(send)
            return

        def publish() -> None:
            self.publish_wakeup(run_id, seq, wake_at)

        store.on_commit(publish)

    def wake_gated(self, store: Store, run: RunState, gate: FlowGate) -> None:
        """``wake`` for a run whose next step is flow-controlled: the message carries the gate.

        QStash then holds the delivery back while ``gate.max_active``
        deliveries of the key are in flight, or the key's rate is spent
        (``Upstash-Flow-Control-Key`` / ``-Value``), so waiting runs cost no
        deliveries that would only be denied. The database still enforces
        the limits exactly: QStash counts deliveries, not running steps.
        """
        wake_at = run.wake_at
        if wake_at is None:
            return
        run_id, seq = run.run_id, run.wake_seq
        flow = qstash_flow_control(gate)
        from ._store import DjangoStore

        if isinstance(store, DjangoStore):
            from . import _outbox

            using = store.db
            key = _outbox.owe(using, run_id, seq, wake_at, flow=flow)

            def send() -> None:
                _outbox.send_owed(
                    self, using, key, run_id=run_id, seq=seq, wake_at=wake_at, flow=flow
                )

            store.on_commit(send)
            return

        def publish() -> None:
            self.publish_wakeup(run_id, seq, wake_at, flow=flow)

        store.on_commit(publish)

    def publish_wakeup(
        self,
        run_id: str,
        seq: int,
        wake_at: datetime,
        *,
        after: str | None = None,
        flow: FlowControl | None = None,
    ) -> str | None:
        """Publish one wake-up message now; the message id, or None if already sent.

        Args:
            run_id: the run.
            seq: its ``wake_seq``.
            wake_at: when it is due; a time further away than ``MAX_DELAY``
                is reached in hops, each a message the webhook re-publishes.
            after: the id of a delivery that came before ``wake_at`` (a hop,
                or a clock ahead of ours); it makes the deduplication id new,
                so the re-published wake-up is not dropped as a duplicate.
            flow: QStash flow control for the delivery (the run's next step
                is flow-controlled).

        Raises:
            qstash.errors.QStashError: QStash refused the message.
            httpx.HTTPError: QStash could not be reached.
        """
        delay = wake_at.timestamp() - time.time()
        max_delay = self.config.max_delay.total_seconds()
        hops = max(0, math.ceil(delay / max_delay) - 1) if delay > 0 else 0
        dedup = f"{run_id}-{seq}"
        if hops:
            dedup += f"-h{hops}"
        if after:
            dedup += f"-{after}"
        not_before: int | None = None
        if delay > 0:
            # Whole seconds, rounded up: never deliver before the run is due.
            not_before = math.ceil(wake_at.timestamp() - hops * max_delay)
        if self._seen(dedup):
            return None
        response: Any = self.client.message.publish_json(
            url=self.webhook_url(),
            body={"run_id": run_id, "seq": seq},
            deduplication_id=dedup,
            not_before=not_before,
            retries=self.config.retries,
            retry_delay=self.config.retry_delay,
            flow_control=flow,
        )
        self._remember(dedup)
        message_id: str = response.message_id
        return message_id

    def _seen(self, dedup: str) -> bool:
        with self._lock:
            return dedup in self._published

    def _remember(self, dedup: str) -> None:
        with self._lock:
            self._published[dedup] = None
            while len(self._published) > _PUBLISHED_MEMORY:
                self._published.popitem(last=False)

    # -- calls ------------------------------------------------------------------

    def dispatch_call(self, info: StepInfo, owner: str, step: CallStep[Any]) -> None:
        """Have QStash make a ``call`` step's request; its answer comes to the callback view.

        QStash makes one attempt (``retries=0``): retries follow the step's
        own retry policy, as they do without QStash. The callback also serves
        as the failure callback, so an attempt that got no answer is reported
        too.
        """
        callback = self.callback_url(info.run_id, info.position, owner)
        options: dict[str, Any] = {
            "url": step.url,
            "method": step.method,
            "headers": dict(step.headers) or None,
            "retries": 0,
            "callback": callback,
            "failure_callback": callback,
            "deduplication_id": f"{info.run_id}-{info.position}-{owner}",
        }
        if step.timeout is not None:
            options["timeout"] = max(1, math.ceil(step.timeout.total_seconds()))
        body = step.body
        if body is None:
            self.client.message.publish(**options)
        elif isinstance(body, bytes | str):
            self.client.message.publish(body=body, **options)
        else:
            data = adapter_for(Any).dump_python(body, mode="json")
            self.client.message.publish_json(body=data, **options)

    def repair(self, runtime: Runtime, run: RunState, delivered_seq: int, message_id: str) -> int:
        """Re-publish what a tick of ``run`` may have failed to hand off; messages sent.

        The run's current wake-up is published again (deduplication makes it
        free when it went out before). A wake-up that is not due yet although
        the delivery of its own sequence number arrived is a hop or an early
        delivery: it goes out again after this delivery.
        """
        sent = 0
        wake_at = run.wake_at
        if wake_at is not None and not run.status.finished:
            if run.wake_seq != delivered_seq:
                sent += self.publish_wakeup(run.run_id, run.wake_seq, wake_at) is not None
            elif wake_at > runtime.clock.now():
                after = message_id or "early"
                sent += (
                    self.publish_wakeup(run.run_id, run.wake_seq, wake_at, after=after) is not None
                )
        return sent


def qstash_flow_control(gate: FlowGate) -> FlowControl:
    """A flow-control gate as the ``qstash`` client's ``FlowControl``.

    The key keeps letters, digits, ``-``, ``_`` and ``.`` (any other
    character becomes ``_``: keys that then coincide share QStash's limits,
    which is stricter, never looser). QStash counts the rate's period in
    whole seconds: a fraction is rounded up, which again only slows it.
    """
    key = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in gate.key)
    control: FlowControl = {"key": key}
    if gate.max_active is not None:
        control["parallelism"] = gate.max_active
    if gate.rate is not None and gate.period is not None:
        control["rate"] = gate.rate
        control["period"] = max(1, math.ceil(gate.period.total_seconds()))
    return control


# -- system checks ----------------------------------------------------------------


def check_qstash(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """With the QStash scheduler and ``DEBUG = False``: token, keys and ``BASE_URL`` are set."""
    from django.conf import settings

    from ._settings import get_settings

    try:
        parsed = get_settings()
    except ConfigurationError:
        return []  # the app's own checks report it
    if parsed.scheduler != "qstash" or settings.DEBUG:
        return []
    try:
        config = QStashConfig.from_settings(parsed)
    except ConfigurationError:
        return []  # hookflow_gen.E003: the scheduler cannot be built
    messages: list[checks.CheckMessage] = []
    if not config.token:
        messages.append(
            checks.Error(
                "the QStash scheduler has no token",
                hint="Set HOOKFLOW['QSTASH']['TOKEN'] or the QSTASH_TOKEN environment variable.",
                id="hookflow_gen.E101",
            )
        )
    missing = [
        name
        for name, value in (
            ("CURRENT_SIGNING_KEY", config.current_signing_key),
            ("NEXT_SIGNING_KEY", config.next_signing_key),
        )
        if not value
    ]
    if missing:
        messages.append(
            checks.Error(
                f"the QStash webhook has no {' or '.join(missing)}: it refuses every delivery",
                hint=(
                    "Set HOOKFLOW['QSTASH'][...] or QSTASH_CURRENT_SIGNING_KEY and "
                    "QSTASH_NEXT_SIGNING_KEY; signatures are always verified."
                ),
                id="hookflow_gen.E102",
            )
        )
    if not config.base_url:
        messages.append(
            checks.Error(
                "the QStash scheduler has no BASE_URL",
                hint=(
                    "Set HOOKFLOW['QSTASH']['BASE_URL'] to the site's public URL "
                    "(e.g. 'https://example.com'), where QStash delivers wake-ups. Signatures "
                    "are checked against BASE_URL plus the request's path, so it must be the "
                    "URL QStash calls (the proxy's https address, not the app server's)."
                ),
                id="hookflow_gen.E103",
            )
        )
    return messages


checks.register(check_qstash)


# -- manage.py hookflow qstash-dev ---------------------------------------------------


def qstash_dev_arguments(parser: CommandParser) -> None:
    """The arguments of ``manage.py hookflow qstash-dev``: those of ``hookflow-qstash-dev``."""
    from ..testing._qstash_cli import add_arguments

    add_arguments(parser)


def qstash_dev(command: Any, options: dict[str, Any]) -> None:
    """Run the local QStash-compatible server in the foreground (``hookflow-qstash-dev``)."""
    from django.core.management.base import CommandError

    from ..testing._qstash_cli import main

    argv = [
        "--host",
        str(options["host"]),
        "--port",
        str(options["port"]),
        "--time-scale",
        str(options["time_scale"]),
    ]
    if options.get("quiet"):
        argv.append("--quiet")
    status = main(argv)
    if status:
        raise CommandError(f"the QStash server stopped with status {status}")
