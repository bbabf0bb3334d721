"""Cron schedules on QStash, through the ``qstash`` client and the local QStash server.

``manage.py hookflow qstash-schedules`` creates the QStash schedules; the
server fires them on its (compressed) clock, to a live Django server whose
schedule endpoint starts each tick's run once, however often it is delivered.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.management import call_command
from qstash import QStash

from hookflow_gen._client import use_runtime
from hookflow_gen._schedule import latest_ticks, schedule_run_id
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]  # clean-up
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.django.models import Run
from hookflow_gen.testing.qstash import QStashServer
from tests.djangoapp import scheduled
from tests.djangoapp.models import Execution

pytestmark = pytest.mark.urls("tests.e2e.flows")

NAME = scheduled.every_minute.name


@pytest.fixture
def qstash(live_server: Any, transactional_db: None) -> Iterator[QStashServer]:
    """A local QStash whose minutes last 0.3 s, the QStash scheduler on it, a schedule."""
    server = QStashServer(time_scale=0.005).start()
    scheduler = QStashScheduler(
        {
            "TOKEN": server.token,
            "URL": server.url,
            "CURRENT_SIGNING_KEY": server.current_signing_key,
            "NEXT_SIGNING_KEY": server.next_signing_key,
            "BASE_URL": str(live_server.url),
            "RETRY_DELAY": "200",
        }
    )
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    scheduled.register(scheduled.every_minute)
    try:
        with use_runtime(runtime):
            yield server
    finally:
        _registry.pop(NAME, None)
        server.stop()
        scheduler.close()
        runtime.close()


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("hookflow", *args, stdout=out)
    return out.getvalue()


def _wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_each_qstash_firing_starts_one_run_for_its_tick(
    qstash: QStashServer, live_server: Any
) -> None:
    """Duplicated, concurrent and retried deliveries: one run per firing, named by its tick."""
    client = QStash(qstash.token, base_url=qstash.url)
    qstash_site = str(live_server.url)
    # A schedule the command made once, for a schedule no workflow has now.
    client.schedule.create(
        destination="http://127.0.0.1:9/gone",
        cron="0 0 * * *",
        schedule_id="hookflow-schedule-gone",
    )
    client.schedule.create(
        destination="http://127.0.0.1:9/own", cron="0 0 * * *", schedule_id="own"
    )
    url = f"{qstash_site}/hookflow/qstash/schedule/"
    qstash.faults.concurrent_copies(3, copies=3, url=url)
    qstash.faults.duplicate_next(3, copies=2, url=url)
    # The site's answer is lost: QStash retries, maybe after the next firing.
    qstash.faults.drop_answer(3, url=url)
    output = _command("qstash-schedules")
    assert f"schedule {NAME!r}: created (hookflow-schedule-{NAME}" in output
    assert "hookflow-schedule-gone: deleted" in output
    assert f"schedule {NAME!r}: unchanged" in _command("qstash-schedules")
    ids = {s.schedule_id for s in client.schedule.list()}
    assert ids == {f"hookflow-schedule-{NAME}", "own"}  # others' schedules are left alone

    runs = Run.objects.filter(workflow=NAME)
    _wait_until(lambda: runs.count() >= 8)
    client.schedule.delete(f"hookflow-schedule-{NAME}")
    qstash.wait_idle(timeout=60)

    assert f"hookflow-schedule-{NAME}" not in {s.schedule_id for s in qstash.schedules()}
    firings = [m for m in qstash.messages() if m.schedule_id == f"hookflow-schedule-{NAME}"]
    expected: set[str] = set()
    for message in firings:
        assert message.fired_at is not None
        [tick] = latest_ticks("* * * * *", None, datetime.fromtimestamp(message.fired_at, UTC), 1)
        expected.add(schedule_run_id(NAME, tick))
    assert len(expected) == len(firings)  # one tick per firing
    attempts = [a for a in qstash.attempts() if a.url.startswith(url)]
    assert len(attempts) > len(firings)  # the copies and retries were delivered too
    assert any(a.retried > 0 for a in attempts)
    assert b'"duplicate"' in b"".join(a.response_body for a in attempts)
    assert set(runs.values_list("run_id", flat=True)) == expected
    _wait_until(lambda: runs.filter(status="completed").count() == len(expected))
    for run_id in expected:
        assert Execution.objects.filter(run_id=run_id).count() == 1


def test_qstash_schedules_refuses_a_six_field_cron(qstash: QStashServer) -> None:
    """Seconds are for the database scheduler: the command says so and creates nothing."""
    from django.core.management.base import CommandError

    scheduled.register(scheduled.every_second)
    try:
        with pytest.raises(CommandError, match="five-field cron"):
            _command("qstash-schedules")
    finally:
        _registry.pop(scheduled.every_second.name, None)
    assert qstash.schedules() == []


def test_an_unknown_schedule_is_a_permanent_refusal(qstash: QStashServer, live_server: Any) -> None:
    """A firing for a schedule no workflow has (renamed, removed) gets 489: QStash stops."""
    client = QStash(qstash.token, base_url=qstash.url)
    client.message.publish_json(
        url=f"{live_server.url}/hookflow/qstash/schedule/?schedule=gone", body={}
    )
    qstash.wait_idle(timeout=60)
    [attempt] = qstash.attempts()
    assert attempt.status == 489
    assert b"no registered schedule is called 'gone'" in attempt.response_body
