"""The QStash webhook views through Django's test client, signatures checked by ``qstash.Receiver``.

Wake-ups are published with the real ``qstash`` client to an in-process
QStash-compatible server; its deliveries go to a closed port, so each test
plays QStash itself: it signs a delivery and posts it to the view.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from django.core import checks
from django.test import Client, override_settings
from qstash.errors import QStashError

from hookflow_gen._client import use_runtime
from hookflow_gen._store import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler, check_qstash
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    QStashServer,
    sign,
)
from tests.e2e import flows

if TYPE_CHECKING:
    from collections.abc import Iterator

    from django.test.client import _MonkeyPatchedWSGIResponse  # pyright: ignore[reportPrivateUsage]

    from hookflow_gen._runtime import Runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.e2e.flows")]

# Deliveries from the local server go nowhere (port 9 refuses at once); the
# Host header of the test requests names the same place, so the URL the view
# rebuilds from the request is the one QStash signs.
SITE = "http://127.0.0.1:9"
HOST = "127.0.0.1:9"
HOOK = f"{SITE}/hookflow/qstash/"


@pytest.fixture
def qstash() -> Iterator[QStashServer]:
    """A local QStash-compatible server."""
    with QStashServer() as server:
        yield server


@pytest.fixture
def scheduler(qstash: QStashServer) -> Iterator[QStashScheduler]:
    """The QStash scheduler, publishing to the local server."""
    scheduler = QStashScheduler(
        {
            "TOKEN": qstash.token,
            "URL": qstash.url,
            "CURRENT_SIGNING_KEY": DEFAULT_CURRENT_SIGNING_KEY,
            "NEXT_SIGNING_KEY": DEFAULT_NEXT_SIGNING_KEY,
            "BASE_URL": SITE,
            "PUBLISH_RETRIES": 0,
        }
    )
    yield scheduler
    scheduler.close()


@pytest.fixture
def runtime(scheduler: QStashScheduler) -> Iterator[Runtime]:
    """The current runtime: the Django store and the QStash scheduler."""
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    flows.reset()
    with use_runtime(runtime):
        yield runtime
    runtime.close()


def deliver(
    body: bytes | dict[str, Any],
    *,
    key: str = DEFAULT_CURRENT_SIGNING_KEY,
    url: str = HOOK,
    signature: str | None = None,
    retried: int = 0,
    now: float | None = None,
    path: str | None = None,
    message_id: str | None = None,
) -> _MonkeyPatchedWSGIResponse:
    """POST a delivery to the webhook as QStash would, signed for ``url``."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    token = signature or sign(key=key, url=url, body=raw, now=now)
    target = path or url.removeprefix(SITE)
    return Client().post(
        target,
        data=raw,
        content_type="application/json",
        headers={
            "Upstash-Signature": token,
            "Upstash-Retried": str(retried),
            "Upstash-Message-Id": message_id or f"msg_test_{time.monotonic_ns()}",
        },
        HTTP_HOST=HOST,
    )


def published(qstash: QStashServer) -> list[dict[str, Any]]:
    """The wake-up bodies published so far."""
    return [json.loads(m.body) for m in qstash.messages(kind="publish")]


def test_start_publishes_only_run_id_and_seq_after_commit(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """Starting a run publishes one message with only the run id and seq, once committed."""
    from django.db import transaction

    with transaction.atomic():
        handle = flows.linear.start(flows.Count(n=3))
        assert published(qstash) == []
    [message] = qstash.messages(kind="publish")
    assert json.loads(message.body) == {"run_id": handle.run_id, "seq": 1}
    assert message.deduplication_id == f"id:{handle.run_id}-1"
    assert message.url == HOOK


def test_signed_delivery_ticks_the_run_to_completion(runtime: Runtime) -> None:
    """A well-signed delivery runs the linear workflow to the end and answers 200."""
    handle = flows.linear.start(flows.Count(n=3))
    response = deliver({"run_id": handle.run_id, "seq": 1})
    assert response.status_code == 200
    assert response.json()["status"] == "done"
    assert handle.result() == 3
    assert flows.executions(handle.run_id) == {0: 1, 1: 1, 2: 1}


def test_next_key_signature_is_accepted(runtime: Runtime) -> None:
    """A delivery signed with the next signing key (rotation) is accepted."""
    handle = flows.linear.start(flows.Count(n=1))
    response = deliver({"run_id": handle.run_id, "seq": 1}, key=DEFAULT_NEXT_SIGNING_KEY)
    assert response.status_code == 200
    assert handle.result() == 1


@pytest.mark.parametrize(
    "case",
    ["missing", "forged", "expired", "tampered", "wrong-url"],
)
def test_bad_signatures_are_refused_without_state_change(runtime: Runtime, case: str) -> None:
    """Missing, forged, expired, tampered and wrong-URL signatures get 401 and change nothing."""
    handle = flows.linear.start(flows.Count(n=2))
    body = json.dumps({"run_id": handle.run_id, "seq": 1}).encode()
    if case == "missing":
        response = Client().post(
            "/hookflow/qstash/", data=body, content_type="application/json", HTTP_HOST=HOST
        )
    elif case == "forged":
        # As long as a real key: PyJWT warns about shorter HMAC keys.
        response = deliver(body, key="sig_" + "x" * 28)
    elif case == "expired":
        response = deliver(body, now=time.time() - 600)
    elif case == "tampered":
        token = sign(key=DEFAULT_CURRENT_SIGNING_KEY, url=HOOK, body=body)
        other = json.dumps({"run_id": handle.run_id, "seq": 2}).encode()
        response = deliver(other, signature=token)
    else:
        response = deliver(body, url=f"{SITE}/elsewhere/", path="/hookflow/qstash/")
    assert response.status_code == 401
    assert "error" in response.json()
    assert handle.status is RunStatus.RUNNING
    assert runtime.store.steps(handle.run_id) == []


def test_replayed_signature_is_refused(runtime: Runtime) -> None:
    """The same token twice: the first is accepted, the replay gets 401 and changes nothing."""
    handle = flows.sleepy.start(flows.Nap(seconds=60))
    body = json.dumps({"run_id": handle.run_id, "seq": 1}).encode()
    token = sign(key=DEFAULT_CURRENT_SIGNING_KEY, url=HOOK, body=body)
    assert deliver(body, signature=token).status_code == 200
    before = runtime.store.get_run(handle.run_id)
    response = deliver(body, signature=token)
    assert response.status_code == 401
    assert "replayed" in response.json()["error"]
    assert runtime.store.get_run(handle.run_id) == before


def test_unknown_run_is_a_non_retryable_489(runtime: Runtime) -> None:
    """A delivery for a run that does not exist answers 489 with the non-retryable header."""
    response = deliver({"run_id": "no-such-run", "seq": 1})
    assert response.status_code == 489
    assert response["Upstash-NonRetryable-Error"] == "true"
    assert "no-such-run" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"run_id": "x"}', b'{"run_id": "x", "seq": "1"}'],
)
def test_invalid_body_is_a_non_retryable_489(runtime: Runtime, body: bytes) -> None:
    """A body that is not ``{"run_id", "seq"}`` answers 489 with a clear error."""
    response = deliver(body)
    assert response.status_code == 489
    assert response["Upstash-NonRetryable-Error"] == "true"
    assert response.json()["error"]


def test_stale_seq_is_ignored(runtime: Runtime) -> None:
    """A delivery with an old sequence number answers 200 ignored and changes nothing."""
    handle = flows.sleepy.start(flows.Nap(seconds=60))
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    before = runtime.store.get_run(handle.run_id)
    assert before is not None and before.wake_seq == 2
    response = deliver({"run_id": handle.run_id, "seq": 1})
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert runtime.store.get_run(handle.run_id) == before
    assert flows.executions(handle.run_id) == {0: 1}


def test_finished_run_is_ignored(runtime: Runtime) -> None:
    """A delivery for a finished run answers 200 ignored."""
    handle = flows.linear.start(flows.Count(n=1))
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    response = deliver({"run_id": handle.run_id, "seq": 1})
    assert response.json()["status"] == "ignored"
    assert flows.executions(handle.run_id) == {0: 1}


def test_sleep_publishes_a_not_before_wakeup(runtime: Runtime, qstash: QStashServer) -> None:
    """A sleep becomes one message with ``Upstash-Not-Before`` at the wake time."""
    handle = flows.sleepy.start(flows.Nap(seconds=60))
    deliver({"run_id": handle.run_id, "seq": 1})
    run = runtime.store.get_run(handle.run_id)
    assert run is not None and run.wake_at is not None
    message = qstash.messages(kind="publish")[-1]
    assert json.loads(message.body) == {"run_id": handle.run_id, "seq": 2}
    assert message.headers["upstash-not-before"] == str(int(run.wake_at.timestamp()) + 1)


def test_long_delay_is_chained(
    runtime: Runtime, qstash: QStashServer, scheduler: QStashScheduler
) -> None:
    """A wait longer than MAX_DELAY is published MAX_DELAY ahead, and re-published on arrival."""
    from dataclasses import replace
    from datetime import timedelta

    scheduler.config = replace(scheduler.config, max_delay=timedelta(seconds=20))
    handle = flows.sleepy.start(flows.Nap(seconds=50))
    deliver({"run_id": handle.run_id, "seq": 1})
    hop = qstash.messages(kind="publish")[-1]
    assert hop.not_before - time.time() <= 21
    assert hop.deduplication_id == f"id:{handle.run_id}-2-h2"
    # The hop arrives: nothing is due, so the wake-up goes out again, nearer.
    assert deliver({"run_id": handle.run_id, "seq": 2}).status_code == 200
    again = qstash.messages(kind="publish")[-1]
    assert again.message_id != hop.message_id
    assert json.loads(again.body) == {"run_id": handle.run_id, "seq": 2}
    assert flows.executions(handle.run_id) == {0: 1}


def test_publish_failure_answers_503_and_redelivery_repairs_it(
    runtime: Runtime,
    qstash: QStashServer,
    scheduler: QStashScheduler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publish that keeps failing answers 503 and stays owed; the redelivery publishes it."""
    from hookflow_gen.django.models import Outbox

    handle = flows.sleepy.start(flows.Nap(seconds=60))
    client = scheduler.client.message
    real = client.publish_json
    failures = iter([True, True])

    def flaky(**kwargs: Any) -> Any:
        if next(failures, False):
            raise QStashError("QStash is down")
        return real(**kwargs)

    monkeypatch.setattr(client, "publish_json", flaky)
    response = deliver({"run_id": handle.run_id, "seq": 1})
    assert response.status_code == 503
    assert published(qstash) == [{"run_id": handle.run_id, "seq": 1}]
    assert list(Outbox.objects.values_list("run_id", "seq")) == [(handle.run_id, 2)]
    response = deliver({"run_id": handle.run_id, "seq": 1}, retried=1)
    assert response.status_code == 200
    assert published(qstash)[-1] == {"run_id": handle.run_id, "seq": 2}
    assert not Outbox.objects.exists()
    assert flows.executions(handle.run_id) == {0: 1}


@pytest.mark.parametrize("retried", [0, 1])
def test_delivery_finding_a_held_step_publishes_a_wakeup_for_its_lease_end(
    runtime: Runtime, qstash: QStashServer, retried: int
) -> None:
    """Copies of a message that find a step leased by another tick leave a wake-up for its end."""
    import dataclasses
    from datetime import timedelta

    from hookflow_gen._journal import StepRecord, StepStatus

    handle = flows.linear.start(flows.Count(n=1))
    store = runtime.store
    lease_until = runtime.clock.now() + timedelta(seconds=30)
    with store.atomic():
        run = store.lock_run(handle.run_id)
        assert run is not None
        store.save_run(dataclasses.replace(run, wake_at=None))
        record = StepRecord(position=0, kind="run", name="step-0", status=StepStatus.PENDING)
        store.save_step(
            handle.run_id,
            dataclasses.replace(record, attempts=1, lease_until=lease_until, lease_owner="dead"),
        )

    def lease_wakeups() -> list[Any]:
        return [
            m for m in qstash.messages(kind="publish") if "lease-" in (m.deduplication_id or "")
        ]

    # The only delivery of its message: the holder's own message is still alive.
    assert deliver({"run_id": handle.run_id, "seq": 1}, retried=retried).status_code == 200
    assert lease_wakeups() == []
    for _ in range(3):  # copies of one message: one wake-up between them
        response = deliver({"run_id": handle.run_id, "seq": 1}, retried=retried, message_id="m1")
        assert response.status_code == 200
    lease = lease_wakeups()
    assert len(lease) == 1
    assert lease[0].deduplication_id is not None and "lease-dead" in lease[0].deduplication_id
    assert json.loads(lease[0].body) == {"run_id": handle.run_id, "seq": 1}
    assert flows.executions(handle.run_id) == {}


def test_call_step_goes_through_qstash_and_its_callback(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """A call step is published to its URL with a callback; the signed callback completes it."""
    handle = flows.caller.start(flows.Fetch(url="http://127.0.0.1:9/echo/"))
    assert deliver({"run_id": handle.run_id, "seq": 1}).status_code == 200
    [call] = [m for m in qstash.messages(kind="publish") if m.url.endswith("/echo/")]
    assert call.callback is not None and call.max_retries == 0
    assert json.loads(call.body) == {"text": "hi"}
    assert handle.status is RunStatus.RUNNING
    answer = {
        "status": 200,
        "header": {"Content-Type": ["application/json"]},
        "body": base64.b64encode(b'{"echoed": "hi"}').decode(),
        "retried": 0,
        "maxRetries": 0,
        "url": call.url,
    }
    response = deliver(answer, url=call.callback)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "done"
    assert handle.result() == "hi"
    again = deliver(answer, url=call.callback)
    assert again.json()["status"] == "ignored"
    assert flows.executions(handle.run_id) == {1: 1}


def test_get_is_refused_as_json(runtime: Runtime) -> None:
    """A GET answers 405 in JSON."""
    response = Client().get("/hookflow/qstash/", HTTP_HOST=HOST)
    assert response.status_code == 405
    assert response.json()["error"]


def test_missing_keys_refuse_every_delivery(runtime: Runtime, scheduler: QStashScheduler) -> None:
    """Without signing keys the webhook refuses (503) instead of skipping verification."""
    from dataclasses import replace

    scheduler.config = replace(scheduler.config, current_signing_key=None)
    handle = flows.linear.start(flows.Count(n=1))
    response = deliver({"run_id": handle.run_id, "seq": 1})
    assert response.status_code == 503
    assert handle.status is RunStatus.RUNNING


def _ids(messages: list[checks.CheckMessage]) -> set[str]:
    return {m.id for m in messages if m.id is not None}


@pytest.fixture
def no_qstash_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No QSTASH_* variables in the environment."""
    for name in (
        "QSTASH_TOKEN",
        "QSTASH_URL",
        "QSTASH_CURRENT_SIGNING_KEY",
        "QSTASH_NEXT_SIGNING_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_qstash_env")
def test_checks_report_missing_token_keys_and_base_url() -> None:
    """With DEBUG off, a missing token, signing key and BASE_URL are E101, E102 and E103."""
    with override_settings(DEBUG=False, HOOKFLOW={"SCHEDULER": "qstash", "QSTASH": {}}):
        assert _ids(check_qstash()) == {
            "hookflow_gen.E101",
            "hookflow_gen.E102",
            "hookflow_gen.E103",
        }
        assert {"hookflow_gen.E101"} <= _ids(checks.run_checks())


@pytest.mark.usefixtures("no_qstash_env")
def test_checks_pass_when_configured() -> None:
    """A complete QStash configuration raises none of E101-E103."""
    config = {
        "TOKEN": "t",
        "CURRENT_SIGNING_KEY": "a",
        "NEXT_SIGNING_KEY": "b",
        "BASE_URL": "https://example.com",
    }
    with override_settings(DEBUG=False, HOOKFLOW={"SCHEDULER": "qstash", "QSTASH": config}):
        assert check_qstash() == []


@pytest.mark.usefixtures("no_qstash_env")
def test_checks_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token and keys may come from QSTASH_* environment variables."""
    monkeypatch.setenv("QSTASH_TOKEN", "t")
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", "a")
    monkeypatch.setenv("QSTASH_NEXT_SIGNING_KEY", "b")
    qstash = {"BASE_URL": "https://example.com"}
    with override_settings(DEBUG=False, HOOKFLOW={"SCHEDULER": "qstash", "QSTASH": qstash}):
        assert check_qstash() == []


def test_failed_call_attempt_is_retried_by_the_step_policy(
    runtime: Runtime, qstash: QStashServer
) -> None:
    """A callback reporting a 503 records a failed attempt and publishes the retry's wake-up."""
    handle = flows.caller.start(flows.Fetch(url="http://127.0.0.1:9/echo/"))
    deliver({"run_id": handle.run_id, "seq": 1})
    [call] = [m for m in qstash.messages(kind="publish") if m.url.endswith("/echo/")]
    assert call.callback is not None
    answer: dict[str, Any] = {
        "status": 503,
        "header": {},
        "body": base64.b64encode(b"busy").decode(),
    }
    response = deliver(answer, url=call.callback)
    assert response.json()["status"] == "done"
    [record] = runtime.store.steps(handle.run_id)
    assert record.status.value == "pending" and record.error is not None
    assert record.lease_owner is None and record.wake_at is not None
    run = runtime.store.get_run(handle.run_id)
    assert run is not None
    assert published(qstash)[-1] == {"run_id": handle.run_id, "seq": run.wake_seq}


def test_cancelled_run_ignores_its_wakeups(runtime: Runtime) -> None:
    """After ``cancel``, the run's pending wake-up is acknowledged and ignored."""
    handle = flows.sleepy.start(flows.Nap(seconds=60))
    deliver({"run_id": handle.run_id, "seq": 1})
    handle.cancel()
    response = deliver({"run_id": handle.run_id, "seq": 2})
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert handle.status is RunStatus.CANCELLED
    assert flows.executions(handle.run_id) == {0: 1}


def test_app_builds_the_qstash_scheduler_from_settings() -> None:
    """``SCHEDULER: "qstash"`` makes the app build a QStashScheduler from the QSTASH dict."""
    from hookflow_gen.django import HookflowSettings
    from hookflow_gen.django.apps import build_scheduler

    settings = HookflowSettings.from_dict(
        {"SCHEDULER": "qstash", "QSTASH": {"TOKEN": "t", "BASE_URL": "https://example.com/"}}
    )
    scheduler = build_scheduler(settings)
    assert isinstance(scheduler, QStashScheduler)
    assert scheduler.lease_wakeups is False
    assert scheduler.config.base_url == "https://example.com"
    assert scheduler.webhook_url() == "https://example.com/hookflow/qstash/"
