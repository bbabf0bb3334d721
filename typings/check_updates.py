"""Typing contract of updates: checked, never run.

Positives pin inferred types with ``assert_type``; each negative carries a
``type: ignore[code]`` that mypy and pyright must both find necessary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import assert_type

from pydantic import BaseModel

from hookflow_gen import (
    Context,
    EventStep,
    Flow,
    Received,
    ReplyStep,
    RunHandle,
    Update,
    UpdateRejected,
    workflow,
)
from hookflow_gen.testing import Stepper


class ApproveRequest(BaseModel):
    amount: int


class ApproveAnswer(BaseModel):
    approved: bool


approve = Update("approve", ApproveRequest, ApproveAnswer)
assert_type(approve, Update[ApproveRequest, ApproveAnswer])
ping = Update("ping", int, type(None))
assert_type(ping, Update[int, None])


@workflow
def approvals(ctx: Context, limit: int) -> Flow[int]:
    step = ctx.receive(approve)
    assert_type(step, EventStep[Received[ApproveRequest, ApproveAnswer]])
    req = yield from step
    assert_type(req.request, ApproveRequest)
    assert_type(req.id, str)
    reply = ctx.reply(req, ApproveAnswer(approved=req.request.amount <= limit))
    assert_type(reply, ReplyStep)
    yield from reply
    maybe = yield from ctx.receive(approve, timeout=timedelta(minutes=5))
    assert_type(maybe, Received[ApproveRequest, ApproveAnswer] | None)
    if maybe is not None:
        yield from ctx.reject(maybe, "too late")
    pinged = yield from ctx.receive(ping, name="ping-step")
    yield from ctx.reply(pinged, None)
    return req.request.amount


def caller(handle: RunHandle[int]) -> None:
    answer = handle.update(approve, ApproveRequest(amount=3), timeout=10, update_id="u-1")
    assert_type(answer, ApproveAnswer)
    assert_type(handle.update(ping, 1), None)
    try:
        handle.update(approve, ApproveRequest(amount=-1))
    except UpdateRejected as rejected:
        assert_type(rejected.reason, str)


async def async_caller(handle: RunHandle[int]) -> None:
    answer = await handle.aupdate(approve, ApproveRequest(amount=3))
    assert_type(answer, ApproveAnswer)


def by_hand() -> None:
    s = Stepper(approvals, 10)
    assert_type(s.update(approve, ApproveRequest(amount=3)), ApproveAnswer)
    assert_type(s.answer(approve, "update-1"), ApproveAnswer)


# -- negatives: each ignore must be needed by both checkers --------------------------------


@workflow
def wrong_answers(ctx: Context, _: int) -> Flow[None]:
    req = yield from ctx.receive(approve)
    yield from ctx.reply(req, "yes")  # type: ignore[misc]
    maybe = yield from ctx.receive(approve, timeout=60)
    maybe.request  # type: ignore[union-attr]
    ctx.receive("approve")  # type: ignore[call-overload]
    ctx.reply(ApproveRequest(amount=1), ApproveAnswer(approved=True))  # type: ignore[arg-type]


def wrong_callers(handle: RunHandle[int]) -> None:
    handle.update(approve, ApproveAnswer(approved=True))  # type: ignore[misc]
    text: str = handle.update(approve, ApproveRequest(amount=1))  # type: ignore[assignment]
    Update("approve", ApproveRequest)  # type: ignore[call-arg]
