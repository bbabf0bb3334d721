"""Contract tests: the official Upstash Workflow SDK runs its workflows on the local server.

Each workflow is served by ``upstash_workflow.flask`` (as the SDK's own docs
do) on 127.0.0.1, with the SDK's ``qstash.Receiver`` verifying every request
the server signs, and is started the way Upstash documents: a message
published to the workflow endpoint through QStash.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from flask import Flask, jsonify, request
from qstash import QStash, Receiver
from werkzeug.serving import make_server

from hookflow_gen.testing.qstash import QStashServer, WorkflowRunRecord
from tests.contract.upstash_sdk import WorkflowContext, flask_serve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from werkzeug.serving import BaseWSGIServer

SCALE = 0.001


class WorkflowApp:
    """A Flask app serving Upstash workflows in a thread, recording what they did."""

    def __init__(self, qs: QStashServer) -> None:
        self.qs = qs
        self.app = Flask("workflows")
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._client = QStash(qs.token, base_url=qs.url)
        self._receiver = Receiver(
            current_signing_key=qs.current_signing_key, next_signing_key=qs.next_signing_key
        )
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, self.app, threaded=True)
        self._thread = threading.Thread(target=self.server.serve_forever, name="workflow-app")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def record(self, name: str, value: Any = None) -> None:
        with self._lock:
            self.events.append((name, value))

    def recorded(self, name: str) -> list[Any]:
        with self._lock:
            return [value for event, value in self.events if event == name]

    def workflow(
        self,
        path: str,
        *,
        retries: int | None = None,
        failure_function: Callable[[WorkflowContext, int, str, dict[str, str]], Any] | None = None,
    ) -> Callable[[Callable[[WorkflowContext], None]], Callable[[WorkflowContext], None]]:
        return flask_serve(
            self.app,
            path,
            qstash_client=self._client,
            receiver=self._receiver,
            env={},
            retries=retries,
            failure_function=failure_function,
        )

    def start(self) -> None:
        self._thread.start()
        # The socket is bound in make_server; poll until the app answers.
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.base + "/health", timeout=5).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join()

    def trigger(self, path: str, payload: Any) -> None:
        """Start a run as Upstash documents: publish to the endpoint through QStash."""
        self._client.message.publish_json(url=self.base + path, body=payload)

    def finished_run(self, path: str, timeout: float = 60.0) -> WorkflowRunRecord:
        """Wait until the run started at ``path`` ends and return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.qs.workflow_runs() if r.url == self.base + path]
            if runs and runs[-1].state != "RUN_STARTED":
                self.qs.wait_idle(timeout=max(1.0, deadline - time.monotonic()))
                return runs[-1]
            time.sleep(0.01)
        raise AssertionError(f"the run at {path} did not end: {self.qs.workflow_runs()}")


@pytest.fixture
def qs() -> Iterator[QStashServer]:
    with QStashServer(time_scale=SCALE) as server:
        yield server


@pytest.fixture
def wf(qs: QStashServer) -> Iterator[WorkflowApp]:
    app = WorkflowApp(qs)

    @app.app.get("/health")
    def health() -> str:
        return "ok"

    @app.app.before_request
    def record_delivery() -> None:
        app.record(
            "delivery",
            {
                "path": request.path,
                "body": request.get_data(),
                "run_id": request.headers.get("Upstash-Workflow-RunId"),
            },
        )

    @app.app.post("/third-party")
    def third_party() -> Any:
        body = request.get_json(silent=True)
        app.record("third-party", {"body": body, "agent": request.headers.get("X-Agent")})
        return jsonify({"echo": body, "answer": 42}), 201, {"X-Answer": "yes"}

    yield app
    app.close()


def _register_steps(wf: WorkflowApp) -> None:
    @wf.workflow("/steps")
    def steps(context: WorkflowContext) -> None:
        payload = context.request_payload
        first = context.run("double", lambda: payload["n"] * 2)
        second = context.run("add", lambda: first + 1)
        context.run("done", lambda: wf.record("result", second))


def test_run_steps_complete_with_each_result_replayed(qs: QStashServer, wf: WorkflowApp) -> None:
    """A workflow of ``context.run`` steps completes; later steps see earlier results."""
    _register_steps(wf)
    wf.start()
    wf.trigger("/steps", {"n": 20})
    run = wf.finished_run("/steps")
    assert run.state == "RUN_SUCCESS"
    assert wf.recorded("result") == [41]
    assert [step["stepName"] for step in run.steps] == ["double", "add", "done"]
    assert [step["stepType"] for step in run.steps] == ["Run", "Run", "Run"]
    assert json.loads(run.initial_body) == {"n": 20}
    # Nothing was retried or dead-lettered: every delivery verified and answered 2xx.
    assert qs.dlq() == []
    assert all(a.succeeded for a in qs.attempts())


def test_step_deliveries_carry_the_accumulated_step_list(qs: QStashServer, wf: WorkflowApp) -> None:
    """Each delivery to the workflow carries the initial payload and every step so far."""
    _register_steps(wf)
    wf.start()
    wf.trigger("/steps", {"n": 1})
    run = wf.finished_run("/steps")
    deliveries = [d for d in wf.recorded("delivery") if d["path"] == "/steps"]
    # The trigger, then one delivery per step list: initial only, then 1, 2, 3 steps.
    assert deliveries[0]["run_id"] is None
    lists = [json.loads(d["body"]) for d in deliveries[1:]]
    assert [len(entries) for entries in lists] == [1, 2, 3, 4]
    assert all(d["run_id"] == run.run_id for d in deliveries[1:])
    last = lists[-1]
    assert base64.b64decode(last[0]["body"]) == b'{"n": 1}'
    names = [json.loads(base64.b64decode(e["body"]))["stepName"] for e in last[1:]]
    assert names == ["double", "add", "done"]
    assert all(entry["callType"] == "step" for entry in last)
    assert len(set(e["messageId"] for e in last)) == 4
    assert qs.stats.largest_delivery == max(len(d["body"]) for d in deliveries)


def test_sleep_and_sleep_until_wait_on_the_scaled_clock(qs: QStashServer, wf: WorkflowApp) -> None:
    """``context.sleep`` and ``sleep_until`` hold the next delivery back by the scaled delay."""

    @wf.workflow("/sleepy")
    def sleepy(context: WorkflowContext) -> None:
        context.run("before", lambda: wf.record("before", time.time()))
        context.sleep("nap", 30)
        context.sleep_until("until", time.time() + 1)
        context.run("after", lambda: wf.record("after", time.time()))

    wf.start()
    wf.trigger("/sleepy", {})
    run = wf.finished_run("/sleepy")
    assert run.state == "RUN_SUCCESS"
    assert [step["stepType"] for step in run.steps] == ["Run", "SleepFor", "SleepUntil", "Run"]
    [before], [after] = wf.recorded("before"), wf.recorded("after")
    assert after - before >= 30 * SCALE
    nap = next(m for m in qs.messages() if b'"SleepFor"' in m.body)
    assert nap.not_before - nap.published_at == pytest.approx(30, abs=1)


def test_call_is_made_by_the_server_and_its_answer_becomes_a_step(
    qs: QStashServer, wf: WorkflowApp
) -> None:
    """``context.call`` reaches the third party through QStash; the answer resumes the run."""

    @wf.workflow("/caller")
    def caller(context: WorkflowContext) -> None:
        response = context.call(
            "ask",
            url=wf.base + "/third-party",
            method="POST",
            body={"question": "?"},
            headers={"X-Agent": "workflow"},
        )
        context.run("keep", lambda: wf.record("response", (response.status, response.body)))

    wf.start()
    wf.trigger("/caller", {})
    run = wf.finished_run("/caller")
    assert run.state == "RUN_SUCCESS"
    assert wf.recorded("third-party") == [{"body": {"question": "?"}, "agent": "workflow"}]
    assert wf.recorded("response") == [(201, {"echo": {"question": "?"}, "answer": 42})]
    assert [step["stepType"] for step in run.steps] == ["Call", "Run"]
    call = next(m for m in qs.messages() if m.url == wf.base + "/third-party")
    assert call.body == b'{"question": "?"}'
    assert [m.kind for m in qs.messages() if m.source_message_id == call.message_id] == ["callback"]


def test_failing_step_retries_then_runs_the_failure_function(
    qs: QStashServer, wf: WorkflowApp
) -> None:
    """A step that keeps failing is retried, dead-lettered, and the failure function runs."""

    def on_failure(context: WorkflowContext, status: int, message: str, headers: Any) -> None:
        wf.record("failure", (context.workflow_run_id, status, message, context.request_payload))

    @wf.workflow("/failing", retries=1, failure_function=on_failure)
    def failing(context: WorkflowContext) -> None:
        def explode() -> None:
            wf.record("tried")
            raise ValueError("card declined")

        context.run("charge", explode)

    wf.start()
    wf.trigger("/failing", {"order": 7})
    run = wf.finished_run("/failing")
    assert run.state == "RUN_FAILED"
    assert len(wf.recorded("tried")) == 2  # the first attempt and one retry
    [(run_id, status, message, payload)] = wf.recorded("failure")
    assert (run_id, status) == (run.run_id, 500)
    assert "card declined" in message
    assert payload == {"order": 7}
    [entry] = qs.dlq()
    assert entry.message.message_id in run.message_ids
    assert [m.kind for m in qs.messages()].count("failure_callback") == 1


def test_cancel_ends_a_sleeping_run_and_drops_its_pending_step(
    qs: QStashServer, wf: WorkflowApp
) -> None:
    """Cancelling a run through ``/v2/workflows/runs`` cancels its pending message."""

    @wf.workflow("/long")
    def long(context: WorkflowContext) -> None:
        context.run("first", lambda: wf.record("first"))
        context.sleep("a while", 3600)
        context.run("never", lambda: wf.record("never"))

    wf.start()
    wf.trigger("/long", {})
    deadline = time.monotonic() + 30
    while not any(b'"SleepFor"' in m.body for m in qs.messages()):
        assert time.monotonic() < deadline, "the run never reached its sleep"
        time.sleep(0.01)
    [run] = qs.workflow_runs()
    client = QStash(qs.token, base_url=qs.url)
    client.http.request(
        path=f"/v2/workflows/runs/{run.run_id}?cancel=true", method="DELETE", parse_response=False
    )
    qs.wait_idle()
    [run] = qs.workflow_runs()
    assert run.state == "RUN_CANCELED"
    assert wf.recorded("never") == []
    nap = next(m for m in qs.messages() if b'"SleepFor"' in m.body)
    assert nap.state == "CANCELLED"
    logs = client.http.request(path=f"/v2/workflows/logs?workflowRunId={run.run_id}", method="GET")
    assert logs["runs"][0]["workflowState"] == "RUN_CANCELED"


def test_the_sdk_verifies_signatures_so_an_unsigned_request_is_refused(
    qs: QStashServer, wf: WorkflowApp
) -> None:
    """The receiver in these tests is live: a request not signed by the server is refused."""
    _register_steps(wf)
    wf.start()
    answer = httpx.post(wf.base + "/steps", json={"n": 1}, headers={"Upstash-Signature": "forged"})
    assert answer.status_code == 500
    assert "verify" in answer.json()["message"]
    assert qs.workflow_runs() == []
