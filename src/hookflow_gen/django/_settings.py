"""``settings.HOOKFLOW``, read once into one typed, frozen ``HookflowSettings``.

Every key is optional::

    HOOKFLOW = {
        "SCHEDULER": "database",   # "database", "inline" or "qstash"
        "TICK_BUDGET": 10,         # seconds one tick may keep running steps
        "LEASE": 300,              # seconds a claimed step may run before it is reclaimed
        "DEFAULT_RETRY": {"maximum_attempts": 3},  # or a RetryPolicy
        "WARM_RUNS": 256,          # live generators kept between ticks
        "POLL_INTERVAL": 0.5,      # seconds an idle worker waits between polls
        "AUTODISCOVER": "workflows",  # module imported from every installed app
        "QSTASH": {...},           # the QStash scheduler's own settings
        "STORE": None,             # dotted path of a DjangoStore subclass (tests)
        "TRACING": True,           # OpenTelemetry spans, when opentelemetry-api is installed
    }
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, cast

from .._steps import RetryPolicy
from ..exceptions import ConfigurationError

__all__ = ["SCHEDULERS", "HookflowSettings", "get_settings"]

#: The scheduler names ``SCHEDULER`` accepts.
SCHEDULERS = ("database", "inline", "qstash")

_RETRY_FIELDS = {f.name for f in dataclasses.fields(RetryPolicy)}


@dataclass(frozen=True, slots=True)
class HookflowSettings:
    """The typed form of ``settings.HOOKFLOW``.

    Attributes:
        scheduler: how wake-ups are delivered: ``"database"`` (workers poll,
            ``manage.py hookflow worker``), ``"inline"`` (in this process, at
            once; scripts and tests) or ``"qstash"``.
        tick_budget: how long one tick may keep running steps before it
            hands the run back to the scheduler.
        lease: how long a claimed step (or a claimed wake-up) may take before
            another worker may claim it again; keep it above the slowest step.
        default_retry: the retry policy of steps and workflows that set none.
        warm_runs: how many live generators a process keeps between ticks.
        poll_interval: how long an idle worker waits before it looks again.
        autodiscover: the module imported from every installed app when
            Django is ready, so its workflows register (None: import none).
        qstash: the ``QSTASH`` sub-dict, passed to the QStash scheduler as is.
        store: the dotted path of a ``DjangoStore`` subclass to use instead of
            ``DjangoStore`` (a test suite's checking wrapper), or None.
        tracing: open OpenTelemetry spans for ticks and step attempts when
            ``opentelemetry-api`` is installed (the ``otel`` extra); False: never.
    """

    scheduler: str = "database"
    tick_budget: timedelta = timedelta(seconds=10)
    lease: timedelta = timedelta(seconds=300)
    default_retry: RetryPolicy = field(default_factory=RetryPolicy)
    warm_runs: int = 256
    poll_interval: timedelta = timedelta(seconds=0.5)
    autodiscover: str | None = "workflows"
    qstash: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    store: str | None = None
    tracing: bool = True

    @classmethod
    def from_dict(cls, data: object) -> HookflowSettings:
        """Validate and convert a ``HOOKFLOW`` dict.

        Raises:
            ConfigurationError: ``data`` is not a dict, has an unknown key,
                or a value of the wrong type; the message names the key.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"settings.HOOKFLOW must be a dict, not {type(data).__name__}")
        options: Mapping[object, object] = data  # pyright: ignore[reportUnknownVariableType]
        unknown = sorted(str(key) for key in options if key not in _PARSERS)
        if unknown:
            raise ConfigurationError(
                f"settings.HOOKFLOW has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(_PARSERS))}"
            )
        values = {
            attribute: parse(str(key), options[key])
            for key, (attribute, parse) in _PARSERS.items()
            if key in options
        }
        return cls(**values)


def _seconds(key: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        delta = timedelta(seconds=value)
    else:
        raise ConfigurationError(
            f"HOOKFLOW[{key!r}] must be a number of seconds or a timedelta, got {value!r}"
        )
    if delta <= timedelta(0):
        raise ConfigurationError(f"HOOKFLOW[{key!r}] must be positive, got {value!r}")
    return delta


def _scheduler(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"HOOKFLOW[{key!r}] must be a string, got {value!r}")
    return value


def _retry(key: str, value: object) -> RetryPolicy:
    if isinstance(value, RetryPolicy):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"HOOKFLOW[{key!r}] must be a RetryPolicy or a dict of its fields, got {value!r}"
        )
    fields: Mapping[object, object] = value  # pyright: ignore[reportUnknownVariableType]
    unknown = sorted(str(name) for name in fields if name not in _RETRY_FIELDS)
    if unknown:
        raise ConfigurationError(
            f"HOOKFLOW[{key!r}] has unknown field(s) {', '.join(map(repr, unknown))}; "
            f"RetryPolicy takes {', '.join(sorted(_RETRY_FIELDS))}"
        )
    kwargs: dict[str, Any] = {}
    for field_name, raw in fields.items():
        name = str(field_name)
        if name in ("initial_interval", "maximum_interval"):
            kwargs[name] = _seconds(f"{key}.{name}", raw)
        elif name == "non_retryable_error_types" and isinstance(raw, (list, tuple)):
            kwargs[name] = tuple(cast("Iterable[object]", raw))
        else:
            kwargs[name] = raw
    try:
        return RetryPolicy(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"HOOKFLOW[{key!r}] is not a valid RetryPolicy: {exc}") from exc


def _count(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"HOOKFLOW[{key!r}] must be an integer >= 0, got {value!r}")
    return value


def _module(key: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise ConfigurationError(
        f"HOOKFLOW[{key!r}] must be a module name (like 'workflows') or None, got {value!r}"
    )


def _dotted(key: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and "." in value):
        return value
    raise ConfigurationError(
        f"HOOKFLOW[{key!r}] must be a dotted path (like 'myapp.stores.MyStore') or None, "
        f"got {value!r}"
    )


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"HOOKFLOW[{key!r}] must be True or False, got {value!r}")
    return value


def _qstash(key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"HOOKFLOW[{key!r}] must be a dict, got {value!r}")
    return MappingProxyType(dict(value))  # pyright: ignore[reportUnknownArgumentType]


_PARSERS: dict[str, tuple[str, Any]] = {
    "AUTODISCOVER": ("autodiscover", _module),
    "DEFAULT_RETRY": ("default_retry", _retry),
    "LEASE": ("lease", _seconds),
    "POLL_INTERVAL": ("poll_interval", _seconds),
    "QSTASH": ("qstash", _qstash),
    "SCHEDULER": ("scheduler", _scheduler),
    "STORE": ("store", _dotted),
    "TICK_BUDGET": ("tick_budget", _seconds),
    "TRACING": ("tracing", _flag),
    "WARM_RUNS": ("warm_runs", _count),
}


def get_settings() -> HookflowSettings:
    """Read ``settings.HOOKFLOW`` (fresh on every call; it is a cheap dict walk).

    Raises:
        ConfigurationError: the setting is invalid; the message names the key.
    """
    from django.conf import settings

    return HookflowSettings.from_dict(getattr(settings, "HOOKFLOW", None))
