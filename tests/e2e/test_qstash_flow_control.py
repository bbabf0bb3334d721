"""Flow control on the QStash scheduler: wake-ups carry QStash's flow control, limits hold.

Over real HTTP: the live Django server, the local QStash-compatible server
(which honours ``Upstash-Flow-Control-Key`` / ``-Value``) and the ``qstash``
client.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import Context, Flow, Limit, Rate, RunStatus, current_step, step, workflow
from hookflow_gen._client import use_runtime
from hookflow_gen._flow import FlowGate
from hookflow_gen._runtime import Runtime
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler, qstash_flow_control
from hookflow_gen.django.models import Run, Step
from hookflow_gen.testing.qstash import QStashServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.e2e.flows"),
    pytest.mark.timeout(180),
]

_lock = threading.Lock()
SPANS: list[tuple[str, float, float]] = []


class Batch(BaseModel):
    """The group a run's step is limited in."""

    group: str


@step(concurrency=Limit(2, key="qflow:{group}"), rate=Rate(20, per=timedelta(seconds=1)))
def limited(group: str) -> int:
    started = time.monotonic()
    time.sleep(0.3)
    with _lock:
        SPANS.append((current_step().run_id, started, time.monotonic()))
    return 1


@workflow(name="e2e_flow_limited")
def e2e_flow_limited(ctx: Context, batch: Batch) -> Flow[int]:
    return (yield from ctx.run("limited", limited, batch.group))


def test_a_gate_maps_onto_qstash_flow_control() -> None:
    """Key characters QStash does not take become ``_``; a period rounds up to whole seconds."""
    gate = FlowGate("user:ann@x", max_active=3, rate=10, period=timedelta(milliseconds=1500))
    assert qstash_flow_control(gate) == {
        "key": "user_ann_x",
        "parallelism": 3,
        "rate": 10,
        "period": 2,
    }
    assert qstash_flow_control(FlowGate("k", max_active=1)) == {"key": "k", "parallelism": 1}


@pytest.fixture
def qstash(live_server: Any, transactional_db: None) -> Iterator[tuple[Runtime, QStashServer]]:
    """A live server, the local QStash server and the QStash scheduler."""
    server = QStashServer(time_scale=1.0).start()
    config: dict[str, Any] = {
        "TOKEN": server.token,
        "URL": server.url,
        "CURRENT_SIGNING_KEY": server.current_signing_key,
        "NEXT_SIGNING_KEY": server.next_signing_key,
        "BASE_URL": str(live_server.url),
        "RETRY_DELAY": "200",
    }
    scheduler = QStashScheduler(config)
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    runtime.lease = timedelta(seconds=5)
    try:
        with use_runtime(runtime):
            yield runtime, server
            server.wait_idle(timeout=60)
    finally:
        server.stop()
        scheduler.close()
        runtime.close()


def _wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _most_at_once(spans: list[tuple[str, float, float]]) -> int:
    events = sorted([(a, 1) for _, a, _ in spans] + [(b, -1) for _, _, b in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_limited_runs_through_qstash_hold_the_limit(
    qstash: tuple[Runtime, QStashServer],
) -> None:
    """Eight runs on one key through QStash: two at a time, woken with QStash flow control."""
    _, server = qstash
    SPANS.clear()
    handles = [e2e_flow_limited.start(Batch(group="a")) for _ in range(8)]
    run_ids = [h.run_id for h in handles]
    _wait_until(lambda: not Run.objects.filter(run_id__in=run_ids, status="running").exists())
    assert {h.status for h in handles} == {RunStatus.COMPLETED}
    with _lock:
        spans = list(SPANS)
    assert sorted(run_id for run_id, _, _ in spans) == sorted(run_ids)  # each step once
    assert _most_at_once(spans) == 2
    assert set(Step.objects.filter(run_id__in=run_ids).values_list("attempts", flat=True)) == {1}
    # The wake-ups of runs that waited for a slot carried the key's flow control.
    gated = [
        message
        for message in server.messages()
        if message.headers.get("upstash-flow-control-key") == "qflow_a"
    ]
    assert gated, "no wake-up carried flow control"
    for message in gated:
        assert message.headers["upstash-flow-control-value"] == (
            "parallelism=2, rate=20, period=1s"
        )
        assert json.loads(message.body)["run_id"] in run_ids
    # QStash held the gated deliveries back to two in flight at a time.
    ids = {message.message_id for message in gated}
    deliveries = [
        ("", attempt.started_at, attempt.finished_at)
        for attempt in server.attempts()
        if attempt.message_id in ids
    ]
    assert deliveries and _most_at_once(deliveries) <= 2
    info = server_flow(server, "qflow_a")
    assert info["parallelismMax"] == 2 and info["rateMax"] == 20


def server_flow(server: QStashServer, key: str) -> dict[str, Any]:
    """The server's view of a flow-control key (``GET /v2/flowControl/{key}``)."""
    import httpx

    response = httpx.get(
        f"{server.url}/v2/flowControl/{key}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer
