"""The QStash server's Upstash Workflow run model, by hand, without HTTP or threads."""

from __future__ import annotations

import base64
import json

from hookflow_gen.testing.qstash._workflows import Run, Waiter


def _run() -> Run:
    return Run(
        run_id="wfr_1",
        url="http://127.0.0.1:9/wf",
        created_at=1000.0,
        initial_message_id="msg_init",
        initial_body=b'{"order": 7}',
    )


def _decoded(body: bytes) -> list[bytes]:
    return [base64.b64decode(entry["body"]) for entry in json.loads(body)]


def test_a_delivery_carries_the_steps_up_to_its_own() -> None:
    """Each step message's delivery carries the initial payload and the steps up to it."""
    run = _run()
    assert _decoded(run.delivery_body("msg_init")) == [b'{"order": 7}']
    run.add_step("msg_a", b'{"stepName": "a"}', 1001.0)
    run.add_step("msg_b", b'{"stepName": "b"}', 1002.0)
    assert _decoded(run.delivery_body("msg_a")) == [b'{"order": 7}', b'{"stepName": "a"}']
    assert len(_decoded(run.delivery_body("msg_b"))) == 3


def test_a_retried_step_is_not_appended_twice() -> None:
    """Adding the same step message again (a retry) leaves the list as it was."""
    run = _run()
    run.add_step("msg_a", b"{}", 1001.0)
    run.add_step("msg_a", b"{}", 1005.0)
    assert [mid for mid, _, _ in run.steps] == ["msg_a"]


def test_a_run_ends_once() -> None:
    """The first end wins: a cancelled run cannot later be marked a success."""
    run = _run()
    run.end("RUN_CANCELED", 1010.0)
    run.end("RUN_SUCCESS", 1020.0)
    assert (run.state, run.completed_at) == ("RUN_CANCELED", 1010.0)
    assert run.as_log({})["workflowRunCompletedAt"] == 1010000


def test_wait_steps_carry_the_event_or_the_timeout() -> None:
    """A notified ``Wait`` step carries the data in base64; a timed-out one says so."""
    waiter = Waiter(
        waiter_id="wtr_1",
        event_id="approval",
        run_id="wfr_1",
        url="http://127.0.0.1:9/wf",
        headers=[],
        timeout_url="http://127.0.0.1:9/wf",
        timeout_headers=[],
        timeout_body=None,
        deadline=2000.0,
        step={"stepId": 3, "stepName": "approve", "stepType": "Wait", "concurrent": 1},
    )
    notified = json.loads(waiter.step_body(event_data=b'{"ok": true}'))
    assert notified["waitTimeout"] is False
    assert base64.b64decode(notified["out"]) == b'{"ok": true}'
    assert (notified["stepId"], notified["waitEventId"]) == (3, "approval")
    timed_out = json.loads(waiter.step_body(event_data=None))
    assert timed_out["waitTimeout"] is True
    assert "out" not in timed_out
