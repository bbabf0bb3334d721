"""``call`` steps under the database scheduler: the worker makes the request with httpx."""

from __future__ import annotations

from typing import Any

import pytest

from hookflow_gen import RunStatus, WorkflowFailed
from hookflow_gen._runtime import Runtime
from tests.conftest import run_worker
from tests.e2e.flows import CALLS, Fetch, caller

pytestmark = [pytest.mark.urls("tests.e2e.flows"), pytest.mark.django_db(transaction=True)]


def test_call_step_requests_the_url_and_returns_the_typed_body(
    runtime: Runtime, live_server: Any
) -> None:
    """The worker POSTs the JSON body and the workflow gets the parsed, typed answer."""
    before = CALLS["hi"]
    handle = caller.start(Fetch(url=f"{live_server.url}/echo/"))
    run_worker(runtime)
    assert handle.result() == "hi"
    assert CALLS["hi"] == before + 1
    (call, _after) = handle.steps()
    assert call.kind == "call" and call.attempts == 1
    assert '"status":200' in (call.result or "")


def test_call_to_a_missing_page_fails_without_retrying(runtime: Runtime, live_server: Any) -> None:
    """A 404 answer fails the call step at once (4xx is not retried) and the run with it."""
    handle = caller.start(Fetch(url=f"{live_server.url}/no-such-page/"))
    run_worker(runtime)
    assert handle.status is RunStatus.FAILED
    with pytest.raises(WorkflowFailed, match="HTTP 404"):
        handle.result()
    (call,) = handle.steps()
    assert call.attempts == 1
