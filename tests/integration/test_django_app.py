"""The Django app: settings, system checks, migrations, admin and management commands."""

from __future__ import annotations

import io
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings
from django.urls import reverse

from hookflow_gen import RetryPolicy, RunStatus
from hookflow_gen._client import current_runtime
from hookflow_gen._scheduler import DatabaseScheduler, InlineScheduler
from hookflow_gen.django import DjangoStore, HookflowSettings, get_settings
from hookflow_gen.django.apps import build_scheduler
from hookflow_gen.django.checks import check_databases, check_settings, database_messages
from hookflow_gen.django.models import Run, Step
from hookflow_gen.exceptions import ConfigurationError
from tests.conftest import run_worker
from tests.djangoapp.workflows import Numbers, Wait, approval, linear

if TYPE_CHECKING:
    from django.test import Client

    from hookflow_gen._runtime import Runtime


def _ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command("hookflow", *args, stdout=out, stderr=out)
    return out.getvalue()


# -- settings --------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """An absent or empty HOOKFLOW gives the documented defaults."""
    assert HookflowSettings.from_dict(None) == HookflowSettings.from_dict({})
    defaults = HookflowSettings()
    assert (defaults.scheduler, defaults.warm_runs, defaults.autodiscover) == (
        "database", 256, "workflows",
    )  # fmt: skip
    assert (defaults.tick_budget, defaults.lease, defaults.poll_interval) == (
        timedelta(seconds=10), timedelta(seconds=300), timedelta(seconds=0.5),
    )  # fmt: skip
    assert defaults.default_retry == RetryPolicy()


def test_settings_parse_values() -> None:
    """Seconds, a retry dict and the QStash sub-dict are converted."""
    parsed = HookflowSettings.from_dict(
        {
            "SCHEDULER": "inline",
            "TICK_BUDGET": 2,
            "LEASE": timedelta(minutes=1),
            "DEFAULT_RETRY": {"maximum_attempts": 5, "initial_interval": 0.5},
            "WARM_RUNS": 0,
            "POLL_INTERVAL": 0.25,
            "AUTODISCOVER": None,
            "QSTASH": {"TOKEN": "t"},
        }
    )
    assert parsed.tick_budget == timedelta(seconds=2)
    assert parsed.lease == timedelta(minutes=1)
    assert parsed.default_retry == RetryPolicy(
        maximum_attempts=5, initial_interval=timedelta(seconds=0.5)
    )
    assert parsed.autodiscover is None
    assert dict(parsed.qstash) == {"TOKEN": "t"}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"SCHEDULAR": "database"}, "'SCHEDULAR'"),
        ({"LEASE": "5 minutes"}, "'LEASE'"),
        ({"LEASE": -1}, "'LEASE'"),
        ({"WARM_RUNS": True}, "'WARM_RUNS'"),
        ({"DEFAULT_RETRY": {"tries": 3}}, "'tries'"),
        ({"DEFAULT_RETRY": {"maximum_attempts": 0}}, "'DEFAULT_RETRY'"),
        ({"QSTASH": "token"}, "'QSTASH'"),
        (["SCHEDULER"], "must be a dict"),
    ],
)
def test_settings_errors_name_the_key(value: object, named: str) -> None:
    """Unknown keys and wrong types raise ConfigurationError naming the key."""
    with pytest.raises(ConfigurationError, match=named):
        HookflowSettings.from_dict(value)


def test_ready_installs_runtime_from_settings() -> None:
    """The app's ready() installs a runtime on DjangoStore with the configured scheduler."""
    runtime = current_runtime()
    assert isinstance(runtime.store, DjangoStore)
    assert isinstance(runtime.scheduler, DatabaseScheduler)
    assert runtime.lease == get_settings().lease


def test_build_scheduler_by_name() -> None:
    """Scheduler names map to schedulers; a missing QStash scheduler is a clear error."""
    assert isinstance(build_scheduler(HookflowSettings(scheduler="inline")), InlineScheduler)
    with pytest.raises(ConfigurationError, match="'warp'"):
        build_scheduler(HookflowSettings(scheduler="warp"))


def test_qstash_scheduler_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Selecting QStash without its scheduler module is a ConfigurationError, not an ImportError."""
    monkeypatch.setitem(sys.modules, "hookflow_gen.django._qstash", None)
    with pytest.raises(ConfigurationError, match="QStash scheduler is not available"):
        build_scheduler(HookflowSettings(scheduler="qstash"))


# -- checks ----------------------------------------------------------------------------


def test_checks_pass_on_test_settings() -> None:
    """The test project's settings raise no hookflow check."""
    assert check_settings() == []
    assert check_databases() == []


@pytest.mark.parametrize(
    ("hookflow", "expected"),
    [
        ({"SCHEDULER": "nope"}, "hookflow_gen.E001"),
        ({"LEASE": "long"}, "hookflow_gen.E002"),
        ({"UNKNOWN": 1}, "hookflow_gen.E002"),
    ],
)
def test_settings_checks(hookflow: dict[str, object], expected: str) -> None:
    """Bad HOOKFLOW settings are reported with their check id."""
    with override_settings(HOOKFLOW=hookflow):
        assert _ids(check_settings()) == [expected]


def test_qstash_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The QStash scheduler selected but unavailable is hookflow_gen.E003."""
    monkeypatch.setitem(sys.modules, "hookflow_gen.django._qstash", None)
    with override_settings(HOOKFLOW={"SCHEDULER": "qstash"}):
        assert _ids(check_settings()) == ["hookflow_gen.E003"]


def test_use_tz_check() -> None:
    """USE_TZ = False is hookflow_gen.E004."""
    with override_settings(USE_TZ=False):
        assert "hookflow_gen.E004" in _ids(check_settings())


def test_sqlite_checks() -> None:
    """SQLite without IMMEDIATE transactions warns W001; in memory with the worker warns W002."""
    sqlite = "django.db.backends.sqlite3"
    assert _ids(database_messages("default", {"ENGINE": sqlite, "NAME": "db"}, "database")) == [
        "hookflow_gen.W001"
    ]
    memory = {"ENGINE": sqlite, "NAME": ":memory:", "OPTIONS": {"transaction_mode": "IMMEDIATE"}}
    assert _ids(database_messages("default", memory, "database")) == ["hookflow_gen.W002"]
    assert database_messages("default", memory, "inline") == []
    assert database_messages("default", {"ENGINE": "django.db.backends.postgresql"}, None) == []


def test_checks_run_with_manage_check() -> None:
    """manage.py check reports a hookflow error by its id."""
    with (
        override_settings(HOOKFLOW={"SCHEDULER": "nope"}),
        pytest.raises(SystemCheckError) as caught,
    ):
        call_command("check")
    assert "hookflow_gen.E001" in str(caught.value)


# -- migrations --------------------------------------------------------------------------


@pytest.mark.django_db
def test_migrations_match_models() -> None:
    """The committed migrations match the models (makemigrations --check finds nothing)."""
    out = io.StringIO()
    call_command("makemigrations", "hookflow", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


# -- admin ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_changelist_and_change_page(admin_client: Client, runtime: Runtime) -> None:
    """The run list and a run's page (payload, result, step timeline) render."""
    handle = linear.start(Numbers(a=1, b=2))
    run_worker(runtime)
    changelist = admin_client.get(reverse("admin:hookflow_run_changelist") + "?status=completed")
    assert changelist.status_code == 200
    assert handle.run_id in changelist.content.decode()
    page = admin_client.get(reverse("admin:hookflow_run_change", args=[handle.run_id]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "double" in html and "&quot;total&quot;: 6" in html
    assert admin_client.get(reverse("admin:hookflow_run_add")).status_code == 403


@pytest.mark.django_db
def test_admin_cancel_action(admin_client: Client, runtime: Runtime) -> None:
    """The admin action cancels the selected running runs."""
    handle = approval.start(Wait(key="k"))
    run_worker(runtime)
    response = admin_client.post(
        reverse("admin:hookflow_run_changelist"),
        {"action": "cancel_runs", "_selected_action": [handle.run_id]},
    )
    assert response.status_code == 302
    assert handle.status is RunStatus.CANCELLED


# -- commands --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_worker_command_until_idle() -> None:
    """`hookflow worker --until-idle` runs due runs to completion and exits."""
    handle = linear.start(Numbers(a=1, b=2))
    _call("worker", "--until-idle")
    assert handle.status is RunStatus.COMPLETED
    _call("worker", "--once")
    _call("worker", "--max-ticks", "1", "--until-idle")


@pytest.mark.django_db
def test_runs_and_show_commands(runtime: Runtime) -> None:
    """`runs` lists runs and `show` prints a run with its step timeline."""
    handle = linear.start(Numbers(a=1, b=2))
    run_worker(runtime)
    assert handle.run_id in _call("runs")
    assert "no runs" in _call("runs", "--status", "failed")
    shown = _call("show", handle.run_id)
    assert "completed" in shown and "double" in shown and "2 step(s)" in shown
    with pytest.raises(CommandError, match="no run has id"):
        _call("show", "nope")


@pytest.mark.django_db
def test_cancel_command(runtime: Runtime) -> None:
    """`cancel` cancels a run; an unknown id is a CommandError."""
    handle = approval.start(Wait(key="k"))
    assert "cancelled" in _call("cancel", handle.run_id)
    assert handle.status is RunStatus.CANCELLED
    assert "already finished" in _call("cancel", handle.run_id)
    with pytest.raises(CommandError, match="no run has id 'nope'"):
        _call("cancel", "nope")


@pytest.mark.django_db
def test_notify_command(runtime: Runtime) -> None:
    """`notify` delivers an event; bad JSON or a payload failing the model is a CommandError."""
    handle = approval.start(Wait(key="order-9"))
    run_worker(runtime)
    with pytest.raises(CommandError, match="not valid JSON"):
        _call("notify", "order-9", "{nope")
    with pytest.raises(CommandError, match="the event was not sent"):
        _call("notify", "order-9", '{"approved_by": 3.5}')
    assert "delivered to 1 run(s)" in _call("notify", "order-9", '{"approved_by": "ann"}')
    run_worker(runtime)
    assert handle.result() == "ann"
    assert "kept for the first" in _call("notify", "nobody", "{}")


@pytest.mark.django_db
def test_replay_command(runtime: Runtime) -> None:
    """`replay` passes on intact journals and exits 1 naming a run whose code changed."""
    good = linear.start(Numbers(a=1, b=2))
    bad = linear.start(Numbers(a=3, b=4))
    run_worker(runtime)
    assert "2 run(s) replay deterministically" in _call("replay", "--workflow", "linear")
    Step.objects.filter(run_id=bad.run_id, position=1).update(name="triple")
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("hookflow", "replay", stdout=out, stderr=out)
    assert caught.value.returncode == 1
    assert bad.run_id in out.getvalue() and "NonDeterminismError" in out.getvalue()
    assert good.run_id not in out.getvalue()
    assert Run.objects.count() == 2
