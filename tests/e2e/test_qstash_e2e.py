"""Workflows end to end over real HTTP: live Django server, QStash, the real ``qstash`` client.

By default QStash is the in-process ``QStashServer``. To run against another
QStash (Upstash's, or its dev server), set ``QSTASH_URL``, ``QSTASH_TOKEN``,
``QSTASH_CURRENT_SIGNING_KEY``, ``QSTASH_NEXT_SIGNING_KEY`` and
``HOOKFLOW_E2E_PUBLIC_URL`` (where that QStash reaches the live server, e.g. a
tunnel to ``pytest --liveserver=0.0.0.0:8000``); the fault-injection tests
are skipped there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from hookflow_gen import notify
from hookflow_gen._client import use_runtime
from hookflow_gen._store import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.testing.qstash import QStashServer
from tests.e2e import flows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from hookflow_gen._runtime import Runtime

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.e2e.flows"),
    pytest.mark.timeout(120),
]

_REMOTE_ENV = (
    "QSTASH_URL",
    "QSTASH_TOKEN",
    "QSTASH_CURRENT_SIGNING_KEY",
    "QSTASH_NEXT_SIGNING_KEY",
    "HOOKFLOW_E2E_PUBLIC_URL",
)
REMOTE = all(os.environ.get(name) for name in _REMOTE_ENV)
local_only = pytest.mark.skipif(REMOTE, reason="fault injection needs the local QStash server")


@dataclass
class Env:
    """The pieces of one end-to-end setup."""

    runtime: Runtime
    site: str
    qstash: QStashServer | None

    @property
    def hook_prefix(self) -> str:
        """The URL prefix of the app's webhooks (wake-ups and callbacks)."""
        return f"{self.site}/hookflow/"

    def published(self) -> int | None:
        """Messages published so far (local server only)."""
        return self.qstash.stats.published if self.qstash is not None else None


@pytest.fixture
def env(live_server: Any, transactional_db: None) -> Iterator[Env]:
    """A live server, a QStash (local unless configured) and the QStash scheduler."""
    flows.reset()
    server: QStashServer | None = None
    if REMOTE:
        site = os.environ["HOOKFLOW_E2E_PUBLIC_URL"].rstrip("/")
        config: dict[str, Any] = {"BASE_URL": site}
    else:
        # time_scale=1: workflow sleeps run on the real clock, so QStash must
        # not deliver them early. Retries are made quick by RETRY_DELAY instead.
        server = QStashServer(time_scale=1.0).start()
        site = str(live_server.url)
        config = {
            "TOKEN": server.token,
            "URL": server.url,
            "CURRENT_SIGNING_KEY": server.current_signing_key,
            "NEXT_SIGNING_KEY": server.next_signing_key,
            "BASE_URL": site,
            "RETRY_DELAY": "200",
        }
    scheduler = QStashScheduler(config)
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    # Copies of a delivery that find a step leased publish a wake-up for the
    # lease's end; a short lease lets the server go idle before teardown.
    runtime.lease = timedelta(seconds=5)
    try:
        with use_runtime(runtime):
            yield Env(runtime, site, server)
            if server is not None:
                server.wait_idle(timeout=30)
    finally:
        if server is not None:
            server.stop()
        scheduler.close()
        runtime.close()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def once_each(run_id: str, positions: int) -> None:
    """Every step function of the run executed exactly once."""
    assert flows.executions(run_id) == dict.fromkeys(range(positions), 1)


def test_linear_workflow_costs_one_message(env: Env) -> None:
    """A linear workflow completes with a single message: its start."""
    handle = flows.linear.start(flows.Count(n=5))
    assert handle.result(wait=30) == 5
    once_each(handle.run_id, 5)
    assert env.published() in (1, None)


def test_sleep_costs_one_more_message(env: Env) -> None:
    """A sleep is one delayed message, delivered no earlier than the wake time."""
    started = time.monotonic()
    handle = flows.sleepy.start(flows.Nap(seconds=1))
    assert handle.result(wait=30) == 2
    assert time.monotonic() - started >= 1
    assert env.published() in (2, None)
    assert flows.executions(handle.run_id) == {0: 1, 2: 1}


def test_event_via_notify(env: Env) -> None:
    """``notify`` wakes the waiting run through a QStash message."""
    handle = flows.waiter.start(flows.Wait(key="e2e-approval"))

    def waiting() -> bool:
        return any(r.kind == "event" for r in env.runtime.store.steps(handle.run_id))

    wait_until(waiting)
    assert notify("e2e-approval", flows.Approval(approved_by="ada")) == 1
    assert handle.result(wait=30) == "ada"
    assert env.published() in (2, None)


def test_gather_branches(env: Env) -> None:
    """A gather's branches each run once and the workflow resumes after the last."""
    handle = flows.fan.start(flows.Count(n=2))
    assert handle.result(wait=30) == 4 + 9 + 16 + 1
    once_each(handle.run_id, 4)


def test_child_invoke(env: Env) -> None:
    """A child run started by ``invoke`` completes and resumes its parent."""
    handle = flows.parent.start(flows.Count(n=3))
    assert handle.result(wait=30) == 4
    once_each(f"{handle.run_id}-0", 3)
    assert flows.executions(handle.run_id) == {1: 1}


def test_call_step_is_made_by_qstash(env: Env) -> None:
    """A call step is requested by QStash, answered through the callback webhook."""
    handle = flows.caller.start(flows.Fetch(url=f"{env.site}/echo/"))
    assert handle.result(wait=30) == "hi"
    assert flows.CALLS["hi"] == 1
    assert flows.executions(handle.run_id) == {1: 1}


def _run_all(env: Env) -> dict[str, Any]:
    handles: dict[str, Any] = {
        "linear": flows.linear.start(flows.Count(n=4)),
        "sleepy": flows.sleepy.start(flows.Nap(seconds=1)),
        "fan": flows.fan.start(flows.Count(n=1)),
        "parent": flows.parent.start(flows.Count(n=2)),
        "caller": flows.caller.start(flows.Fetch(url=f"{env.site}/echo/")),
    }
    results = {name: handle.result(wait=60) for name, handle in handles.items()}
    assert all(handle.status is RunStatus.COMPLETED for handle in handles.values())
    once_each(handles["linear"].run_id, 4)
    assert flows.executions(handles["sleepy"].run_id) == {0: 1, 2: 1}
    once_each(handles["fan"].run_id, 4)
    once_each(f"{handles['parent'].run_id}-0", 2)
    assert flows.executions(handles["caller"].run_id) == {1: 1}
    assert flows.CALLS["hi"] == 1
    return results


EXPECTED = {"linear": 4, "sleepy": 2, "fan": 1 + 4 + 9 + 1, "parent": 3, "caller": "hi"}


def test_every_workflow_without_faults(env: Env) -> None:
    """Every kind of workflow completes with the expected results."""
    assert _run_all(env) == EXPECTED


@local_only
def test_every_delivery_twice(env: Env) -> None:
    """With every webhook delivery sent twice, results and side effects are the same."""
    assert env.qstash is not None
    env.qstash.faults.duplicate_next(None, url=env.hook_prefix)
    assert _run_all(env) == EXPECTED


@local_only
def test_two_copies_at_once(env: Env) -> None:
    """With every webhook delivery sent as two simultaneous copies, nothing runs twice."""
    assert env.qstash is not None
    env.qstash.faults.concurrent_copies(None, url=env.hook_prefix)
    assert _run_all(env) == EXPECTED


@local_only
def test_dropped_answer_is_retried_and_completes_once(env: Env) -> None:
    """An answer lost on the way back makes QStash retry; the run still completes once."""
    assert env.qstash is not None
    env.qstash.faults.drop_answer(1, url=env.hook_prefix)
    handle = flows.linear.start(flows.Count(n=3))
    assert handle.result(wait=30) == 3
    env.qstash.wait_idle(timeout=30)
    once_each(handle.run_id, 3)
    retried = [a for a in env.qstash.attempts() if a.retried > 0]
    assert retried and retried[0].succeeded


@local_only
def test_replayed_copies_are_refused(env: Env) -> None:
    """Copies that reuse a delivery's signature are refused; the run completes once."""
    assert env.qstash is not None
    env.qstash.faults.duplicate_next(None, url=env.hook_prefix, replay=True)
    handle = flows.linear.start(flows.Count(n=2))
    assert handle.result(wait=30) == 2
    env.qstash.wait_idle(timeout=30)
    copies = [a for a in env.qstash.attempts() if a.copy > 0]
    assert copies and all(a.status == 401 for a in copies)
    once_each(handle.run_id, 2)
