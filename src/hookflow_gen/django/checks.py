"""System checks: ``manage.py check`` explains what is wrong with the setup.

==========================  ====================================================
``hookflow_gen.E001``       ``HOOKFLOW['SCHEDULER']`` names no known scheduler
``hookflow_gen.E002``       ``settings.HOOKFLOW`` is invalid (unknown key, wrong type)
``hookflow_gen.E003``       the QStash scheduler is selected but cannot be built
``hookflow_gen.E004``       ``USE_TZ`` is off: the runtime works in aware UTC times
``hookflow_gen.W001``       SQLite without ``transaction_mode: IMMEDIATE``: concurrent
                            ticks fail with "database is locked"
``hookflow_gen.W002``       SQLite in memory with the database scheduler: a worker
                            process cannot see the runs
==========================  ====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.checks import CheckMessage, Error, Warning

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["check_databases", "check_settings", "database_messages"]

_SQLITE = "django.db.backends.sqlite3"


def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``settings.HOOKFLOW`` and the settings the runtime relies on."""
    from django.conf import settings

    from ._settings import SCHEDULERS, get_settings

    messages: list[CheckMessage] = []
    if not settings.USE_TZ:
        messages.append(
            Error(
                "hookflow_gen needs USE_TZ = True",
                hint="Workflow times are aware UTC datetimes; set USE_TZ = True.",
                id="hookflow_gen.E004",
            )
        )
    try:
        parsed = get_settings()
    except ConfigurationError as exc:
        messages.append(
            Error(str(exc), hint="See HookflowSettings for the keys.", id="hookflow_gen.E002")
        )
        return messages
    if parsed.scheduler not in SCHEDULERS:
        messages.append(
            Error(
                f"HOOKFLOW['SCHEDULER'] is {parsed.scheduler!r}, which is no scheduler",
                hint=f"Use one of {', '.join(map(repr, SCHEDULERS))}.",
                id="hookflow_gen.E001",
            )
        )
    elif parsed.scheduler == "qstash":
        from .apps import build_scheduler

        try:
            build_scheduler(parsed)
        except ConfigurationError as exc:
            messages.append(Error(str(exc), id="hookflow_gen.E003"))
    return messages


def check_databases(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the database the runs are stored in."""
    from django.conf import settings
    from django.db import router

    from ._settings import get_settings
    from .models import Run

    try:
        scheduler = get_settings().scheduler
    except ConfigurationError:
        scheduler = None  # check_settings reports it
    alias = router.db_for_write(Run)
    return database_messages(alias, settings.DATABASES.get(alias, {}), scheduler)


def database_messages(
    alias: str, database: Mapping[str, Any], scheduler: str | None
) -> list[CheckMessage]:
    """The warnings for the runs' database ``alias`` configured as ``database``."""
    if database.get("ENGINE") != _SQLITE:
        return []
    messages: list[CheckMessage] = []
    options: Mapping[str, Any] = database.get("OPTIONS") or {}
    if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
        messages.append(
            Warning(
                f"database {alias!r} is SQLite without transaction_mode IMMEDIATE",
                hint=(
                    f'Add "OPTIONS": {{"transaction_mode": "IMMEDIATE"}} to DATABASES[{alias!r}]: '
                    "without it, concurrent ticks upgrade read locks to write locks and fail "
                    'with "database is locked".'
                ),
                id="hookflow_gen.W001",
            )
        )
    name = str(database.get("NAME", ""))
    if scheduler == "database" and (name in ("", ":memory:") or "mode=memory" in name):
        messages.append(
            Warning(
                f"database {alias!r} is SQLite in memory, with the database scheduler",
                hint=(
                    "A worker (manage.py hookflow worker) is another process and cannot see "
                    "an in-memory database; use a file, or HOOKFLOW['SCHEDULER'] = 'inline'."
                ),
                id="hookflow_gen.W002",
            )
        )
    return messages
