"""The Upstash Workflow protocol at the HTTP level, where the Python SDK has no step for it.

``upstash-workflow`` 2.0 for Python has no ``waitForEvent``/``notify``; the
TypeScript SDK does. These tests send what the TypeScript SDK sends
(``/v2/wait``, ``/v2/notify``, bulk cancel) and check what the workflow
endpoint receives.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from hookflow_gen.testing.qstash import QStashServer
from tests.qstash_sink import Sink

if TYPE_CHECKING:
    from collections.abc import Iterator

RUN = "wfr_protocol"


@pytest.fixture
def sink() -> Iterator[Sink]:
    receiver = Sink()
    yield receiver
    receiver.close()


@pytest.fixture
def qs() -> Iterator[QStashServer]:
    with QStashServer(time_scale=0.001) as server:
        yield server


def call(qs: QStashServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {qs.token}", **kwargs.pop("headers", {})}
    with httpx.Client(trust_env=False) as http:
        return http.request(method, qs.url + path, headers=headers, **kwargs)


def workflow_headers(url: str, *, init: bool) -> dict[str, str]:
    return {
        "Upstash-Workflow-Init": "true" if init else "false",
        "Upstash-Workflow-RunId": RUN,
        "Upstash-Workflow-Url": url,
        "Upstash-Feature-Set": "LazyFetch,InitialBody",
        "Upstash-Forward-Upstash-Workflow-Sdk-Version": "1",
        "Content-Type": "application/json",
    }


def start_run(qs: QStashServer, sink: Sink) -> str:
    url = sink.url("/wf")
    item = {"destination": url, "headers": workflow_headers(url, init=True), "body": '{"a": 1}'}
    assert call(qs, "POST", "/v2/batch", json=[item]).status_code == 201
    [first] = sink.wait_for(1, "/wf")
    assert first.headers["upstash-workflow-runid"] == RUN
    assert first.headers["upstash-workflow-sdk-version"] == "1"
    [entry] = first.json()
    assert base64.b64decode(entry["body"]) == b'{"a": 1}'
    return url


def wait_for_event(qs: QStashServer, url: str, event_id: str, timeout: str) -> httpx.Response:
    body = {
        "url": url,
        "timeout": timeout,
        "timeoutUrl": url,
        "timeoutHeaders": {
            "Upstash-Workflow-Runid": [RUN],
            "Upstash-Workflow-Init": ["false"],
            "Upstash-Workflow-Url": [url],
            "Upstash-Workflow-CallType": ["step"],
            "Upstash-Forward-Upstash-Workflow-Sdk-Version": ["1"],
        },
        "step": {"stepId": 1, "stepType": "Wait", "stepName": "approval", "concurrent": 1},
    }
    return call(
        qs,
        "POST",
        f"/v2/wait/{event_id}",
        headers=workflow_headers(url, init=False),
        content=json.dumps(body),
    )


def last_step(sink: Sink, count: int) -> dict[str, Any]:
    delivery = sink.wait_for(count, "/wf")[-1]
    assert delivery.headers["upstash-workflow-runid"] == RUN
    entries = delivery.json()
    assert len(entries) == count
    step: dict[str, Any] = json.loads(base64.b64decode(entries[-1]["body"]))
    return step


def test_notify_resumes_the_waiting_step_with_the_event_data(qs: QStashServer, sink: Sink) -> None:
    """A notify publishes the ``Wait`` step, carrying the event data, to the waiting run."""
    url = start_run(qs, sink)
    assert wait_for_event(qs, url, "order-7", "1h").status_code == 200
    [waiter] = call(qs, "GET", "/v2/waiters/order-7").json()
    assert waiter["url"] == url
    notified = call(qs, "POST", "/v2/notify/order-7", content=b'{"approved": true}').json()
    assert [n["workflowRunId"] for n in notified] == [RUN]
    assert notified[0]["messageId"].startswith("msg_")
    step = last_step(sink, 2)
    assert step["stepType"] == "Wait"
    assert step["stepName"] == "approval"
    assert step["waitEventId"] == "order-7"
    assert step["waitTimeout"] is False
    assert base64.b64decode(step["out"]) == b'{"approved": true}'
    assert call(qs, "GET", "/v2/waiters/order-7").json() == []
    qs.wait_idle()


def test_wait_times_out_on_the_scaled_clock(qs: QStashServer, sink: Sink) -> None:
    """Without a notify, the ``Wait`` step arrives at its timeout marked as timed out."""
    url = start_run(qs, sink)
    assert wait_for_event(qs, url, "never", "10s").status_code == 200
    step = last_step(sink, 2)
    assert step["waitTimeout"] is True
    assert "out" not in step
    assert call(qs, "POST", "/v2/notify/never", content=b"late").json() == []


def test_run_scoped_notify_is_kept_until_the_run_waits(qs: QStashServer, sink: Sink) -> None:
    """``/v2/notify/{runId}/{eventId}`` before the wait is delivered when the wait comes."""
    url = start_run(qs, sink)
    assert call(qs, "POST", f"/v2/notify/{RUN}/early", content=b"first").json() == []
    assert wait_for_event(qs, url, "early", "1h").status_code == 200
    step = last_step(sink, 2)
    assert base64.b64decode(step["out"]) == b"first"
    assert call(qs, "GET", "/v2/waiters/early").json() == []


def test_bulk_cancel_ends_runs_and_their_waiters(qs: QStashServer, sink: Sink) -> None:
    """``DELETE /v2/workflows/runs`` cancels the named runs; their waiters go too."""
    url = start_run(qs, sink)
    wait_for_event(qs, url, "held", "1h")
    answer = call(qs, "DELETE", f"/v2/workflows/runs?workflowRunIds={RUN}")
    assert answer.json() == {"cancelled": 1}
    assert call(qs, "GET", "/v2/waiters/held").json() == []
    [run] = qs.workflow_runs()
    assert run.state == "RUN_CANCELED"
    qs.wait_idle()
    again = call(qs, "DELETE", f"/v2/workflows/runs/{RUN}?cancel=true")
    assert again.status_code == 400


def test_finishing_a_run_answers_200_and_unknown_runs_404(qs: QStashServer, sink: Sink) -> None:
    """The SDK's end-of-run ``DELETE ...?cancel=false`` succeeds; unknown runs are a 404."""
    start_run(qs, sink)
    assert call(qs, "DELETE", f"/v2/workflows/runs/{RUN}?cancel=false").status_code == 200
    [run] = qs.workflow_runs()
    assert run.state == "RUN_SUCCESS"
    assert run.completed_at is not None
    assert call(qs, "DELETE", "/v2/workflows/runs/wfr_none?cancel=false").status_code == 404
    logs = call(qs, "GET", "/v2/workflows/logs").json()
    assert [r["workflowState"] for r in logs["runs"]] == ["RUN_SUCCESS"]


def test_a_step_for_an_ended_run_is_refused(qs: QStashServer, sink: Sink) -> None:
    """A step published for a run that ended (or never began) is a 400, not a delivery."""
    url = start_run(qs, sink)
    call(qs, "DELETE", f"/v2/workflows/runs/{RUN}?cancel=false")
    step = {"stepId": 1, "stepName": "late", "stepType": "Run", "out": "1", "concurrent": 1}
    answer = call(
        qs,
        "POST",
        "/v2/publish/" + url,
        headers=workflow_headers(url, init=False),
        content=json.dumps(step),
    )
    assert answer.status_code == 400
    assert "has ended" in answer.json()["error"]
