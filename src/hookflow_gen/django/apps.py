"""The Django app: builds the runtime from settings when Django is ready."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from .._clock import Clock
    from .._runtime import Runtime
    from .._runtime._observe import Tracer
    from .._scheduler import Scheduler
    from ..exceptions import ConfigurationError
    from ._settings import HookflowSettings

__all__ = ["HookflowConfig", "build_runtime", "build_tracer"]

log: logging.Logger = logging.getLogger("hookflow_gen")


class HookflowConfig(AppConfig):
    """``hookflow_gen.django`` in ``INSTALLED_APPS``.

    On ``ready`` it reads ``settings.HOOKFLOW``, installs the runtime that
    ``Workflow.start``, ``notify`` and ``cancel`` use, registers the system
    checks and imports every installed app's ``workflows`` module.

    Attributes:
        setup_error: why no runtime could be built (invalid settings), or
            None. The system checks report it; ``manage.py check`` shows it.
    """

    name = "hookflow_gen.django"
    label = "hookflow"
    verbose_name: StrOrPromise = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    setup_error: ConfigurationError | None = None

    def ready(self) -> None:
        from django.core import checks
        from django.utils.module_loading import autodiscover_modules

        from .._client import set_runtime
        from ..exceptions import ConfigurationError
        from . import checks as hookflow_checks
        from ._settings import get_settings

        checks.register(hookflow_checks.check_settings)
        checks.register(hookflow_checks.check_databases)

        # A settings mistake is reported by the system checks (hookflow_gen.E00x)
        # rather than raised here, where it would be a traceback out of
        # django.setup() before `manage.py check` could explain it.
        self.setup_error = None
        try:
            settings = get_settings()
            runtime = build_runtime(settings)
        except ConfigurationError as exc:
            self.setup_error = exc
            log.error("hookflow_gen is not set up: %s", exc)
            set_runtime(None)
            return
        set_runtime(runtime)
        if settings.autodiscover:
            autodiscover_modules(settings.autodiscover)


def build_runtime(
    settings: HookflowSettings,
    *,
    clock: Clock | None = None,
    scheduler: Scheduler | None = None,
    using: str | None = None,
) -> Runtime:
    """A ``Runtime`` on ``DjangoStore`` with the scheduler ``settings`` name.

    Args:
        settings: the typed ``HOOKFLOW`` settings.
        clock: the time source (default: the system clock; a fake one in tests).
        scheduler: use this scheduler instead of the one settings name.
        using: the database alias (default: the router's choice).

    Raises:
        ConfigurationError: the scheduler is unknown or cannot be built.
    """
    from django.db import connections

    from .._runtime import Runtime
    from ._store import DjangoStore
    from .signals import SignalObserver

    store_class: type[DjangoStore] = DjangoStore
    if settings.store is not None:
        from django.utils.module_loading import import_string

        from ..exceptions import ConfigurationError

        try:
            found: object = import_string(settings.store)
        except ImportError as exc:
            raise ConfigurationError(f"HOOKFLOW['STORE']: {exc}") from exc
        if not (isinstance(found, type) and issubclass(found, DjangoStore)):
            raise ConfigurationError(
                f"HOOKFLOW['STORE'] must name a DjangoStore subclass, not {found!r}"
            )
        store_class = found
    return Runtime(
        store_class(using=using),
        scheduler if scheduler is not None else build_scheduler(settings),
        clock=clock,
        budget=settings.tick_budget,
        lease=settings.lease,
        default_retry=settings.default_retry,
        warm_runs=settings.warm_runs,
        # A step thread's connections are its own: close them when it ends.
        thread_exit=connections.close_all,
        observer=SignalObserver(),
        tracer=build_tracer(settings),
    )


def build_tracer(settings: HookflowSettings) -> Tracer | None:
    """The OpenTelemetry tracer, if ``TRACING`` is on and ``opentelemetry-api`` is installed."""
    if not settings.tracing:
        return None
    try:
        from .._tracing import OpenTelemetryTracer
    except ImportError:  # the ``otel`` extra is not installed: no spans
        return None
    return OpenTelemetryTracer()


def build_scheduler(settings: HookflowSettings) -> Scheduler:
    """The scheduler named by ``settings.scheduler``.

    Raises:
        ConfigurationError: the name is unknown, or the QStash scheduler is
            not available.
    """
    from .._scheduler import DatabaseScheduler, InlineScheduler
    from ..exceptions import ConfigurationError
    from ._settings import SCHEDULERS

    if settings.scheduler == "database":
        return DatabaseScheduler()
    if settings.scheduler == "inline":
        return InlineScheduler()
    if settings.scheduler == "qstash":
        return _qstash_scheduler(settings)
    raise ConfigurationError(
        f"HOOKFLOW['SCHEDULER'] is {settings.scheduler!r}; "
        f"use one of {', '.join(map(repr, SCHEDULERS))}"
    )


def _qstash_scheduler(settings: HookflowSettings) -> Scheduler:
    import importlib

    from ..exceptions import ConfigurationError

    # Imported by path, at the last moment: the QStash scheduler is optional,
    # and the database scheduler must not pay for importing it.
    try:
        module = importlib.import_module("hookflow_gen.django._qstash")
    except ImportError as exc:
        raise ConfigurationError(
            "HOOKFLOW['SCHEDULER'] is 'qstash' but the QStash scheduler is not available "
            f"in this installation ({exc}); use 'database' or 'inline'"
        ) from exc
    scheduler_class = getattr(module, "QStashScheduler", None)
    if scheduler_class is None:
        raise ConfigurationError(
            "HOOKFLOW['SCHEDULER'] is 'qstash' but hookflow_gen.django._qstash has no "
            "QStashScheduler"
        )
    scheduler: Scheduler = scheduler_class(settings)
    return scheduler
