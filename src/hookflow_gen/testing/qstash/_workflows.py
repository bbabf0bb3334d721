"""Upstash Workflow runs as QStash keeps them: the step list, waiters and run states.

This is the state behind the workflow protocol, with no HTTP and no clock
of its own: the server feeds it messages and times and asks it what to
deliver. The protocol, as the Upstash Workflow SDKs speak it:

- A run starts with a message carrying ``Upstash-Workflow-Init: true`` and
  ``Upstash-Workflow-RunId``; its body is the run's initial payload.
- Every later message with the run id (``Upstash-Workflow-Init: false``) to
  the workflow URL carries one finished step as JSON. When it comes due,
  QStash appends it to the run's step list, and every delivery to the
  workflow URL carries the list so far as its body: a JSON array of
  ``{"messageId", "body": base64, "callType": "step"}``, the first item
  being the initial payload.
- ``Upstash-Workflow-CallType: toCallback`` marks a ``context.call``: the
  message goes to the third-party URL as is, and its callback (configured by
  ``Upstash-Callback-Workflow-*``) reaches the workflow URL with the run id.
- ``POST /v2/wait/{eventId}`` parks a step until ``POST /v2/notify`` (or
  its timeout) publishes the ``Wait`` step to the workflow URL.
- ``DELETE /v2/workflows/runs/{id}?cancel=false`` ends a run that finished;
  ``cancel=true`` cancels it and its pending messages.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Literal

__all__ = ["Run", "RunState", "Waiter", "WorkflowRole", "step_entry"]

RunState = Literal["RUN_STARTED", "RUN_SUCCESS", "RUN_FAILED", "RUN_CANCELED"]
"""A run's state, named as ``/v2/workflows/logs`` names them."""

WorkflowRole = Literal["init", "step", "call", "callback", "failure_callback"]
"""What a message is to its run: start, step, third-party call, or its callbacks."""

JSON = Any


def step_entry(message_id: str, body: bytes) -> dict[str, str]:
    """One item of the step list a workflow delivery carries."""
    return {
        "messageId": message_id,
        "body": base64.b64encode(body).decode("ascii"),
        "callType": "step",
    }


@dataclasses.dataclass(slots=True)
class Waiter:
    """A ``context.waitForEvent`` step parked until a notify or its timeout."""

    waiter_id: str
    event_id: str
    run_id: str
    url: str
    headers: list[tuple[str, str]]
    timeout_url: str
    timeout_headers: list[tuple[str, str]]
    timeout_body: str | None
    deadline: float
    step: dict[str, JSON]

    def as_json(self) -> dict[str, JSON]:
        return {
            "url": self.url,
            "headers": _listed(self.headers),
            "deadline": int(self.deadline),
            "timeoutBody": self.timeout_body,
            "timeoutUrl": self.timeout_url,
            "timeoutHeaders": _listed(self.timeout_headers),
        }

    def step_body(self, *, event_data: bytes | None) -> bytes:
        """The ``Wait`` step QStash publishes: the event's data, or a timeout."""
        step: dict[str, JSON] = {
            "stepId": self.step.get("stepId", 0),
            "stepName": self.step.get("stepName", ""),
            "stepType": self.step.get("stepType", "Wait"),
            "concurrent": self.step.get("concurrent", 1),
            "waitEventId": self.event_id,
            "waitTimeout": event_data is None,
        }
        if self.step.get("targetStep") is not None:
            step["targetStep"] = self.step["targetStep"]
        if event_data is not None:
            step["out"] = base64.b64encode(event_data).decode("ascii")
        return json.dumps(step).encode()


@dataclasses.dataclass(slots=True)
class Run:
    """One workflow run; mutated only under the server lock.

    Attributes:
        run_id: ``Upstash-Workflow-RunId``.
        url: The workflow endpoint (``Upstash-Workflow-Url`` or the destination).
        created_at: Real unix time the run started.
        initial_message_id: The message that started the run.
        initial_body: The run's initial payload.
        state: Where the run is.
        steps: ``(message id, step JSON)`` in the order the steps came due.
        included: For each delivered message, how many steps its delivery carries.
        message_ids: Every message of the run, oldest first.
        completed_at: Real unix time the run ended.
        lookback: Events notified to this run before it waited for them.
        failure: The failure callback's outcome, for the logs.
    """

    run_id: str
    url: str
    created_at: float
    initial_message_id: str
    initial_body: bytes
    state: RunState = "RUN_STARTED"
    steps: list[tuple[str, bytes, float]] = dataclasses.field(
        default_factory=list[tuple[str, bytes, float]]
    )
    included: dict[str, int] = dataclasses.field(default_factory=dict[str, int])
    message_ids: list[str] = dataclasses.field(default_factory=list[str])
    completed_at: float | None = None
    lookback: dict[str, list[bytes]] = dataclasses.field(default_factory=dict[str, list[bytes]])
    failure: dict[str, JSON] | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUN_STARTED"

    def add_step(self, message_id: str, body: bytes, now: float) -> None:
        """Append a step the first time its message comes due (retries reuse the list)."""
        if message_id not in self.included:
            self.steps.append((message_id, body, now))
            self.included[message_id] = len(self.steps)

    def delivery_body(self, message_id: str) -> bytes:
        """The JSON step list a delivery of ``message_id`` carries."""
        count = self.included.get(message_id, 0)
        entries = [step_entry(self.initial_message_id, self.initial_body)]
        entries.extend(step_entry(mid, body) for mid, body, _ in self.steps[:count])
        return json.dumps(entries).encode()

    def end(self, state: RunState, now: float) -> None:
        if self.running:
            self.state = state
            self.completed_at = now

    def as_log(self, states: dict[str, str]) -> dict[str, JSON]:
        """The run as ``/v2/workflows/logs`` reports it."""
        groups: list[JSON] = []
        for message_id, body, created in self.steps:
            try:
                step: dict[str, JSON] = json.loads(body)
            except ValueError:
                step = {}
            log = {
                "stepId": step.get("stepId"),
                "stepName": step.get("stepName", ""),
                "stepType": step.get("stepType", ""),
                "callType": "step",
                "messageId": message_id,
                "out": step.get("out"),
                "concurrent": step.get("concurrent", 1),
                "state": "STEP_SUCCESS",
                "createdAt": int(created * 1000),
            }
            groups.append({"type": "sequential", "steps": [log]})
        pending = [
            {"messageId": mid, "state": states[mid]}
            for mid in self.message_ids
            if states.get(mid) in {"STEP_PROGRESS", "STEP_RETRY"}
        ]
        if pending and self.running:
            groups.append({"type": "next", "steps": pending})
        answer: dict[str, JSON] = {
            "workflowRunId": self.run_id,
            "workflowUrl": self.url,
            "workflowState": self.state,
            "workflowRunCreatedAt": int(self.created_at * 1000),
            "steps": groups,
        }
        if self.completed_at is not None:
            answer["workflowRunCompletedAt"] = int(self.completed_at * 1000)
        if self.failure is not None:
            answer["failureFunction"] = self.failure
        return answer


def _listed(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    listed: dict[str, list[str]] = {}
    for name, value in headers:
        listed.setdefault(name, []).append(value)
    return listed
