"""The QStash transport never strands a run: the outbox, the sweep, recovery and dead letters.

Each test plays QStash as in ``test_qstash_webhook``: it signs deliveries
and posts them to the views through Django's test client. Tests that need
QStash's retries and dead-letter queue run the local server on a fast clock.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from django.core.management import call_command
from qstash.errors import QStashError

from hookflow_gen import notify
from hookflow_gen._client import use_runtime
from hookflow_gen._journal import StepRecord, StepStatus
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.django._recovery import recover
from hookflow_gen.django._worker import Worker
from hookflow_gen.django.models import Outbox, SeenSignature, Step
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    QStashServer,
)
from tests.e2e import flows
from tests.integration.test_qstash_webhook import (
    SITE,
    deliver,
    published,
)

# The webhook tests' fixtures (a local QStash, its scheduler, a runtime on them).
from tests.integration.test_qstash_webhook import qstash as qstash  # noqa: PLC0414
from tests.integration.test_qstash_webhook import runtime as runtime  # noqa: PLC0414
from tests.integration.test_qstash_webhook import scheduler as scheduler  # noqa: PLC0414

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from hookflow_gen._runtime import Runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.e2e.flows")]

SWEEP = f"{SITE}/hookflow/qstash/sweep/"


def sweep() -> dict[str, Any]:
    """Call the sweep endpoint as QStash's schedule would; its report."""
    response = deliver({}, url=SWEEP)
    assert response.status_code == 200, response.json()
    report: dict[str, Any] = response.json()
    return report


def failing_publishes(
    scheduler: QStashScheduler, monkeypatch: pytest.MonkeyPatch
) -> Callable[[bool], None]:
    """Make every publish fail until the returned switch is called with False."""
    client = scheduler.client.message
    real = client.publish_json
    state = {"failing": True}

    def flaky(**kwargs: Any) -> Any:
        if state["failing"]:
            raise QStashError("QStash is down")
        return real(**kwargs)

    monkeypatch.setattr(client, "publish_json", flaky)

    def switch(failing: bool) -> None:
        state["failing"] = failing

    return switch


def test_start_whose_publish_fails_is_owed_and_sent_by_the_sweep(
    runtime: Runtime,
    qstash: QStashServer,
    scheduler: QStashScheduler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start() commits the run with an outbox row when QStash is down; the sweep sends it."""
    switch = failing_publishes(scheduler, monkeypatch)
    handle = flows.linear.start(flows.Count(n=2))  # no exception: the debt is durable
    assert list(Outbox.objects.values_list("run_id", "seq")) == [(handle.run_id, 1)]
    assert published(qstash) == []
    switch(False)
    report = sweep()
    assert report["outbox_sent"] == 1
    assert published(qstash) == [{"run_id": handle.run_id, "seq": 1}]
    assert not Outbox.objects.exists()


def test_notify_whose_publish_fails_is_owed_and_sent_by_the_sweep(
    runtime: Runtime,
    qstash: QStashServer,
    scheduler: QStashScheduler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """notify() that completes an event step owes the run's wake-up; the sweep sends it."""
    handle = flows.waiter.start(flows.Wait(key="owed-event"))
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    switch = failing_publishes(scheduler, monkeypatch)
    assert notify("owed-event", flows.Approval(approved_by="ann")) == 1
    seq = runtime.store.get_run(handle.run_id).wake_seq  # type: ignore[union-attr]  # exists
    assert Outbox.objects.filter(run_id=handle.run_id, seq=seq).exists()
    switch(False)
    assert sweep()["outbox_sent"] == 1
    assert published(qstash)[-1] == {"run_id": handle.run_id, "seq": seq}
    assert deliver({"run_id": handle.run_id, "seq": seq}).status_code == 200
    assert handle.result() == "ann"


def _hold(runtime: Runtime, run_id: str, record: StepRecord, *, wake_seq: int) -> None:
    """Store ``record`` for the run and clear its wake-up: a tick claimed it and then died."""
    store = runtime.store
    with store.atomic():
        run = store.lock_run(run_id)
        assert run is not None
        store.save_run(dataclasses.replace(run, wake_at=None, wake_seq=wake_seq))
        store.save_step(run_id, record)


def test_stale_delivery_finding_a_dead_claim_leaves_a_wakeup_for_its_lease(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """A redelivery with an old seq that finds a gather branch leased publishes its lease end."""
    handle = flows.fan.start(flows.Count(n=1))
    lease_until = runtime.clock.now() + timedelta(seconds=60)
    claim = StepRecord(
        position=0,
        kind="run",
        name="a",
        status=StepStatus.PENDING,
        attempts=1,
        lease_until=lease_until,
        lease_owner="f" * 32,
    )
    _hold(runtime, handle.run_id, claim, wake_seq=3)
    # The attempt that claimed it was accepted, then died with the tick.
    expires = runtime.clock.now() + timedelta(minutes=5)
    SeenSignature.objects.create(jti="first-attempt", expires_at=expires, message_id="m-fan")
    response = deliver({"run_id": handle.run_id, "seq": 1}, retried=1, message_id="m-fan")
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    [lease] = [m for m in qstash.messages(kind="publish") if "lease-" in (m.deduplication_id or "")]
    assert json.loads(lease.body) == {"run_id": handle.run_id, "seq": 3}
    assert lease.not_before is not None
    assert lease.not_before >= lease_until.timestamp() - 1


def _lapsed_call(runtime: Runtime, run_id: str) -> None:
    _hold(
        runtime,
        run_id,
        StepRecord(
            position=0,
            kind="call",
            name="fetch",
            status=StepStatus.PENDING,
            attempts=1,
            lease_until=runtime.clock.now() - timedelta(seconds=1),
            lease_owner="a" * 32,
        ),
        wake_seq=2,
    )


@pytest.mark.no_invariant  # builds a stranded run on purpose
def test_recovery_wakes_a_run_whose_call_lease_lapsed(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """A call whose callback never came leaves a lapsed lease: recovery wakes the run."""
    handle = flows.caller.start(flows.Fetch(url="http://127.0.0.1:9/echo/"))
    _lapsed_call(runtime, handle.run_id)
    assert recover(runtime) == [handle.run_id]
    run = runtime.store.get_run(handle.run_id)
    assert run is not None and run.wake_seq == 3 and run.wake_at is not None
    assert published(qstash)[-1] == {"run_id": handle.run_id, "seq": 3}
    assert recover(runtime) == []  # woken now: nothing left to do


@pytest.mark.no_invariant  # builds a stranded run on purpose
def test_recovery_leaves_runs_that_keep_the_invariant(runtime: Runtime) -> None:
    """Runs with a wake-up, a live lease, an event wait or a running child are left alone."""
    store = runtime.store
    now = runtime.clock.now()
    due = flows.linear.start(flows.Count(n=1))  # wake_at set
    pending = StepStatus.PENDING
    leased = flows.linear.start(flows.Count(n=1))
    lease = now + timedelta(minutes=5)
    held = StepRecord(0, "run", "step-0", pending, attempts=1, lease_until=lease, lease_owner="b")
    _hold(runtime, leased.run_id, held, wake_seq=2)
    waiting = flows.waiter.start(flows.Wait(key="k"))
    _hold(runtime, waiting.run_id, StepRecord(0, "event", "approval", pending, key="k"), wake_seq=2)
    parent = flows.parent.start(flows.Count(n=1))
    child = flows.linear.start(flows.Count(n=1), run_id=f"{parent.run_id}-0")
    invoke = StepRecord(0, "invoke", "child", pending, key=child.run_id)
    _hold(runtime, parent.run_id, invoke, wake_seq=2)
    sleeper = flows.sleepy.start(flows.Nap(seconds=1))
    nap = StepRecord(0, "sleep", "nap", pending, wake_at=now + timedelta(seconds=1))
    _hold(runtime, sleeper.run_id, nap, wake_seq=2)
    orphan = flows.parent.start(flows.Count(n=1))
    lost = StepRecord(0, "invoke", "child", pending, key="no-such-child")
    _hold(runtime, orphan.run_id, lost, wake_seq=2)
    assert sorted(recover(runtime)) == sorted([sleeper.run_id, orphan.run_id])
    for kept in (due, leased, waiting, parent):
        assert store.get_run(kept.run_id).wake_seq in (1, 2)  # type: ignore[union-attr]  # exists


def test_long_overdue_wakeup_counts_as_lost_on_qstash(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """On QStash a wake-up overdue by more than RECOVER_AFTER is woken again with a new seq."""
    handle = flows.linear.start(flows.Count(n=1))
    assert recover(runtime) == []
    later = runtime.clock.now() + timedelta(minutes=11)
    assert recover(runtime, now=later) == [handle.run_id]
    assert published(qstash)[-1] == {"run_id": handle.run_id, "seq": 2}


@pytest.mark.no_invariant  # builds a stranded run on purpose
def test_database_worker_recovers_stranded_runs(clock: Any) -> None:
    """The database worker wakes a run whose lease lapsed with no wake-up, and ticks it."""
    runtime = build_runtime(get_settings(), clock=clock, scheduler=DatabaseScheduler())
    with use_runtime(runtime):
        handle = flows.linear.start(flows.Count(n=1))
        lapsed = clock.now() - timedelta(seconds=1)
        claim = StepRecord(0, "run", "step-0", StepStatus.PENDING, attempts=1,
                           lease_until=lapsed, lease_owner="c" * 32)  # fmt: skip
        _hold(runtime, handle.run_id, claim, wake_seq=1)
        flows.reset()
        Worker(runtime, poll_interval=0.01).run(until_idle=0.0, max_ticks=5)
        assert handle.status is RunStatus.COMPLETED
        assert flows.executions(handle.run_id) == {0: 1}
    runtime.close()


@pytest.mark.no_invariant  # builds a stranded run on purpose
def test_recover_command_wakes_stranded_runs(runtime: Runtime, capsys: Any) -> None:
    """``manage.py hookflow recover`` wakes a stranded run and says so."""
    handle = flows.caller.start(flows.Fetch(url="http://127.0.0.1:9/echo/"))
    _lapsed_call(runtime, handle.run_id)
    call_command("hookflow", "recover", "--no-dlq")
    out = capsys.readouterr().out
    assert f"woke run {handle.run_id}" in out
    assert "1 run(s) woken" in out


# -- dead letters: a local QStash on a fast clock, a site that is down -------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST with ``{"echoed": "hi"}`` (the call's target, which is up)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"echoed": "hi"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fast() -> Iterator[tuple[Runtime, QStashServer, str]]:
    """A runtime on a local QStash whose retries take milliseconds; the site is down."""
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=echo.serve_forever, daemon=True)
    thread.start()
    with QStashServer(time_scale=0.0005) as server:
        scheduler = QStashScheduler(
            {
                "TOKEN": server.token,
                "URL": server.url,
                "CURRENT_SIGNING_KEY": DEFAULT_CURRENT_SIGNING_KEY,
                "NEXT_SIGNING_KEY": DEFAULT_NEXT_SIGNING_KEY,
                "BASE_URL": SITE,
                "PUBLISH_RETRIES": 0,
            }
        )
        runtime = build_runtime(get_settings(), scheduler=scheduler)
        flows.reset()
        with use_runtime(runtime):
            yield runtime, server, f"http://127.0.0.1:{echo.server_address[1]}/echo/"
        runtime.close()
        scheduler.close()
    echo.shutdown()
    echo.server_close()


def test_dead_lettered_wakeup_wakes_its_run_from_the_sweep(
    fast: tuple[Runtime, QStashServer, str],
) -> None:
    """A wake-up QStash gave up on (the site was down) is found in the DLQ and woken again."""
    runtime, server, _ = fast
    handle = flows.linear.start(flows.Count(n=1))
    server.wait_idle(timeout=30)
    assert len(server.dlq()) == 1
    report = sweep()
    assert report["dlq_woken"] == [handle.run_id]
    assert server.dlq() == []
    run = runtime.store.get_run(handle.run_id)
    assert run is not None and run.wake_seq == 2
    assert deliver({"run_id": handle.run_id, "seq": 2}).status_code == 200
    assert handle.result() == 1


def test_dead_lettered_callback_is_replayed_from_the_dlq(
    fast: tuple[Runtime, QStashServer, str],
) -> None:
    """A call's answer whose callback was dead-lettered is replayed by the sweep: no re-call."""
    _, server, target = fast
    handle = flows.caller.start(flows.Fetch(url=target))
    server.wait_idle(timeout=30)
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    server.wait_idle(timeout=30)  # the call is made; its callback to the site dies
    dead = [e for e in server.dlq() if "/hookflow/qstash/call/" in e.message.url]
    assert len(dead) == 1
    report = sweep()
    assert report["dlq_replayed"] == 1
    assert handle.result() == "hi"
    assert [e for e in server.dlq() if "/hookflow/qstash/call/" in e.message.url] == []
    [step] = Step.objects.filter(run_id=handle.run_id, position=0)
    assert step.attempts == 1


# -- call answers larger than Django's upload limit -----------------------------------------


def _callback_for(runtime: Runtime, qstash: QStashServer) -> tuple[Any, str]:
    handle = flows.caller.start(flows.Fetch(url="http://127.0.0.1:9/echo/"))
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    [call] = [m for m in qstash.messages(kind="publish") if m.url.endswith("/echo/")]
    assert call.callback is not None
    return handle, call.callback


def _answer(text: bytes) -> dict[str, Any]:
    return {
        "status": 200,
        "header": {"Content-Type": ["application/json"]},
        "body": base64.b64encode(text).decode(),
        "url": "http://127.0.0.1:9/echo/",
    }


def test_two_megabyte_call_answer_is_accepted(runtime: Runtime, qstash: QStashServer) -> None:
    """A 2 MB answer (over DATA_UPLOAD_MAX_MEMORY_SIZE once base64-encoded) completes the step."""
    handle, callback = _callback_for(runtime, qstash)
    big = json.dumps({"echoed": "x" * (2 * 1024 * 1024)}).encode()
    response = deliver(_answer(big), url=callback)
    assert response.status_code == 200, response.content[:300]
    assert handle.result() == "x" * (2 * 1024 * 1024)


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 8 * 1024 * 1024])
def test_call_answer_over_the_limit_fails_the_step_for_good(
    runtime: Runtime, qstash: QStashServer, scheduler: QStashScheduler, size: int
) -> None:
    """An answer over CALL_RESPONSE_MAX_BYTES fails the call step at once, with a clear error."""
    scheduler.config = dataclasses.replace(scheduler.config, call_response_max_bytes=1024 * 1024)
    handle, callback = _callback_for(runtime, qstash)
    response = deliver(_answer(b"y" * size), url=callback)
    assert response.status_code == 200
    [step] = Step.objects.filter(run_id=handle.run_id, position=0)
    assert step.status == "failed"
    assert "CALL_RESPONSE_MAX_BYTES" in step.error["message"]
    assert handle.status is RunStatus.FAILED


# -- manage.py hookflow qstash-schedule ---------------------------------------------------


def test_qstash_schedule_command_creates_the_sweep_schedule_once(
    fast: tuple[Runtime, QStashServer, str], capsys: Any
) -> None:
    """``qstash-schedule`` creates one schedule calling the sweep; again, it changes nothing."""
    _, server, _ = fast
    call_command("hookflow", "qstash-schedule")
    assert "created" in capsys.readouterr().out
    call_command("hookflow", "qstash-schedule")
    assert "already calls" in capsys.readouterr().out
    [schedule] = server.schedules()
    assert (schedule.schedule_id, schedule.destination, schedule.cron) == (
        "hookflow-sweep",
        SWEEP,
        "* * * * *",
    )
    call_command("hookflow", "qstash-schedule", "--cron", "*/5 * * * *")
    assert "updated" in capsys.readouterr().out
    [schedule] = server.schedules()
    assert schedule.cron == "*/5 * * * *"
    # On QStash's (compressed) clock the schedule fires: a message to the sweep.
    deadline = time.monotonic() + 30
    while not server.schedules()[0].message_ids:
        assert time.monotonic() < deadline, "the schedule never fired"
        time.sleep(0.05)
    fired = server.message(server.schedules()[0].message_ids[0])
    assert fired.url == SWEEP


def test_qstash_schedule_command_needs_the_qstash_scheduler(runtime: Runtime) -> None:
    """With another scheduler, ``qstash-schedule`` says what is missing."""
    from django.core.management import CommandError

    other = build_runtime(get_settings(), scheduler=DatabaseScheduler())
    with use_runtime(other), pytest.raises(CommandError, match="SCHEDULER"):
        call_command("hookflow", "qstash-schedule")
    other.close()
