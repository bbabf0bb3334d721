"""Typing contract of ``ctx.set_status`` and ``ctx.continue_as_new``: checked, never run.

Positives pin inferred types with ``assert_type``; each negative carries a
``type: ignore[code]`` that mypy and pyright must both find necessary.
"""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

from hookflow_gen import Context, ContinueAsNewStep, Flow, RunHandle, RunState, workflow
from hookflow_gen.testing import Stepper


class Count(BaseModel):
    n: int


class Other(BaseModel):
    name: str


class Progress(BaseModel):
    done: int


def bump(n: int) -> int:
    return n + 1


@workflow
def loop(ctx: Context, count: Count) -> Flow[int]:
    ctx.set_status(Progress(done=count.n))  # not a step: no yield
    ctx.set_status({"done": count.n})  # any value pydantic can dump
    n = yield from ctx.run("bump", bump, count.n)
    step = ctx.continue_as_new(loop, Count(n=n))
    assert_type(step, ContinueAsNewStep)
    if n < 100:
        return (yield from step)  # Never fits every result type
    return n


@workflow
def statement_form(ctx: Context, count: Count) -> Flow[int]:  # type: ignore[return]
    """As a bare statement, both checkers still want a return after it: write ``return (...)``."""
    if count.n < 3:
        yield from ctx.continue_as_new(statement_form, Count(n=count.n + 1))
    else:
        return count.n


@workflow
def other(ctx: Context, o: Other) -> Flow[str]:
    yield from ()
    return o.name


@workflow
def wrong_payloads(ctx: Context, count: Count) -> Flow[int]:
    yield from ctx.continue_as_new(loop, Other(name="x"))  # type: ignore[misc]
    yield from ctx.continue_as_new(loop, 5)  # type: ignore[misc]
    return 0


def read(handle: RunHandle[int]) -> None:
    assert_type(handle.custom_status(Progress), Progress | None)
    assert_type(handle.custom_status(dict), dict[Any, Any] | None)
    assert_type(handle.latest(), RunState)
    assert_type(handle.result(), int)  # the chain's last run's
    handle.custom_status(Progress(done=1))  # type: ignore[arg-type]


async def aread(handle: RunHandle[int]) -> None:
    assert_type(await handle.acustom_status(Progress), Progress | None)


def by_hand() -> None:
    s = Stepper(loop, Count(n=1))
    assert_type(s.custom_status(Progress), Progress | None)
    assert_type(s.continued, bool)
    assert_type(s.continued_payload(), Any)
