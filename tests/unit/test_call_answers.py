"""``ctx.call(..., raise_for_status=False)``: every HTTP answer is a typed value."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import CallResponse, CallStep, Context, Flow, NonRetryableError, workflow
from hookflow_gen._context import RunInfo
from hookflow_gen._runtime import call_response
from hookflow_gen.testing import EPOCH, Stepper, WorkflowEnvironment


class Quote(BaseModel):
    price: int


@workflow
def quoting(ctx: Context, status: int) -> Flow[str]:
    answer = yield from ctx.call(
        "quote", "https://api.example/quote", response_model=Quote, raise_for_status=False
    )
    if answer.ok and isinstance(answer.body, Quote):
        return f"price {answer.body.price}"
    return f"HTTP {answer.status}: {answer.body} ({answer.headers.get('retry-after')})"


def _answer(status: int, text: str) -> Any:
    def stub(step: CallStep[Any]) -> dict[str, Any]:
        return call_response(step, status, {"Retry-After": "30"}, text)

    return stub


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (200, '{"price": 12}', "price 12"),
        (503, "down for maintenance", "HTTP 503: down for maintenance (30)"),
        (404, '{"error": "no such quote"}', 'HTTP 404: {"error": "no such quote"} (30)'),
    ],
)
def test_non_2xx_answers_are_values(status: int, text: str, expected: str) -> None:
    """Under raise_for_status=False a 503 or 404 is a CallResponse the workflow reads."""
    with WorkflowEnvironment(stubs={"quote": _answer(status, text)}) as env:
        handle = env.start(quoting, status)
        assert handle.result() == expected
        (record,) = env.journal(handle.run_id)
        assert record.attempts == 1  # a value, not a failure to retry


def test_raising_stays_the_default() -> None:
    """Without the option a 404 still fails the step, not retried."""
    ctx = Context(RunInfo(run_id="r", workflow_name="w", started_at=EPOCH))
    built = ctx.call("q", "https://api.example/")
    assert built.raise_for_status
    with pytest.raises(NonRetryableError, match="HTTP 404"):
        call_response(built, 404, {}, "missing")
    with pytest.raises(Exception, match="HTTP 503"):
        call_response(built, 503, {}, "down")


def test_stepper_sends_an_error_answer() -> None:
    """A hand-stepped call takes a CallResponse with an error status and raw text body."""
    s = Stepper(quoting, 0)
    s.send(CallResponse[str](status=429, headers={"retry-after": "5"}, body="slow down"))
    assert s.result() == "HTTP 429: slow down (5)"


def test_a_2xx_body_that_does_not_fit_still_fails() -> None:
    """A 2xx answer whose JSON does not fit the model fails the step as before."""
    with WorkflowEnvironment(stubs={"quote": _answer(200, '{"price": "lots"}')}) as env:
        handle = env.start(quoting, 1)
        (record,) = env.journal(handle.run_id)
        assert record.error is not None and "quote" in record.error.message
