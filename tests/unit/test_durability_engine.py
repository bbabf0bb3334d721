"""Generator lifecycle and step execution on the in-memory store: cancel, eviction, misuse."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Generator
from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    RunStatus,
    cancel,
    current_step,
    workflow,
)
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler, InlineScheduler
from hookflow_gen._store import MemoryStore
from hookflow_gen.testing import FakeClock, WorkflowEnvironment

from .models import Approval

# What the workflows below did, outside the journal: the tests read it.
seen: list[str] = []


@pytest.fixture(autouse=True)
def _reset_seen() -> None:
    seen.clear()


@contextlib.contextmanager
def _finalised() -> Generator[None, None, None]:
    """Finalise the generators the runtime dropped before the test ends.

    What their ``finally`` blocks raise is then reported against this test,
    not against whichever later test the garbage collector runs in.
    """
    try:
        yield
    finally:
        gc.collect()


class Key(BaseModel):
    key: str


def note(text: str) -> str:
    seen.append(text)
    return text


@workflow
def durability_waits_then_finally(ctx: Context, key: Key) -> Flow[str]:
    """Waits for an event; its ``finally`` notes (outside the journal) that it ran."""
    try:
        event = yield from ctx.wait_for_event("approval", Approval, key=key.key)
    finally:
        seen.append(f"finally {ctx.run_id}")
    return event.approved_by


@workflow
def durability_cleanup_step(ctx: Context, key: Key) -> Flow[str]:
    """Waits for an event; its ``finally`` runs a cleanup *step*."""
    try:
        event = yield from ctx.wait_for_event("approval", Approval, key=key.key)
    finally:
        yield from ctx.run("cleanup", note, f"cleanup {key.key}")
    return event.approved_by


def _runtime(store: MemoryStore, *, warm_runs: int = 256, inline: bool = True) -> Runtime:
    scheduler = InlineScheduler() if inline else DatabaseScheduler()
    runtime = Runtime(store, scheduler, clock=FakeClock(), warm_runs=warm_runs)
    if isinstance(scheduler, InlineScheduler):
        scheduler.bind(runtime)
    return runtime


def test_eviction_from_warm_cache_leaves_the_run_going() -> None:
    """An evicted run goes on: its next tick replays it and it completes normally.

    Python runs a dropped generator's ``finally`` (the README says so); what
    eviction must not do is end or change the run.
    """
    with _finalised():
        runtime = _runtime(MemoryStore(), warm_runs=1)
        first, _ = runtime.start_run(durability_waits_then_finally, Key(key="a"))
        runtime.start_run(durability_waits_then_finally, Key(key="b"))  # evicts the first
        assert runtime.store.get_run(first.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]  # it exists
        assert runtime.notify("a", {"approved_by": "ann"}) == 1
        assert runtime.store.get_run(first.run_id).status is RunStatus.COMPLETED  # type: ignore[union-attr]  # it exists
        runtime.close()


def test_eviction_never_raises_into_another_runs_tick() -> None:
    """Evicting a run whose ``finally`` yields a step does not raise in the tick that evicts it."""
    with _finalised():
        runtime = _runtime(MemoryStore(), warm_runs=1)
        runtime.start_run(durability_cleanup_step, Key(key="a"))
        second, _ = runtime.start_run(durability_cleanup_step, Key(key="b"))  # evicts the first
        assert runtime.store.get_run(second.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]  # it exists
        assert seen == []
        runtime.close()


def test_environment_exit_with_a_waiting_run_whose_finally_yields() -> None:
    """Leaving a WorkflowEnvironment with a run still waiting neither raises nor runs cleanup."""
    with _finalised():
        with WorkflowEnvironment() as env:
            handle = env.start(durability_cleanup_step, Key(key="k"))
            assert handle.status is RunStatus.RUNNING
        assert seen == []


def test_cancel_runs_cleanup_steps_in_finally_then_ends_cancelled() -> None:
    """``cancel`` throws into the workflow at its yield: the ``finally`` step runs once, durably."""
    with _finalised():
        with WorkflowEnvironment() as env:
            handle = env.start(durability_cleanup_step, Key(key="k"))
            cancel(handle.run_id)
            assert handle.status is RunStatus.CANCELLED
            names = [record.name for record in env.journal(handle.run_id)]
        assert seen == ["cleanup k"]
        assert "cleanup" in names


def test_cancel_runs_finally_at_once() -> None:
    """A cancelled run's ``finally`` has run by the time ``cancel`` returns."""
    with _finalised(), WorkflowEnvironment() as env:
        handle = env.start(durability_waits_then_finally, Key(key="k"))
        keep = env.runtime  # the runtime (and any warm generator) stays referenced
        cancel(handle.run_id)
        assert seen == [f"finally {handle.run_id}"]
        assert keep.store.get_run(handle.run_id).status is RunStatus.CANCELLED  # type: ignore[union-attr]  # it exists


@workflow
def durability_guarded(ctx: Context, key: Key) -> Flow[str]:
    """Code guarded by ``is_replaying`` between two waits."""
    yield from ctx.wait_for_event("one", Approval, key=f"{key.key}-1")
    if not ctx.is_replaying:
        seen.append("side effect")
    event = yield from ctx.wait_for_event("two", Approval, key=f"{key.key}-2")
    return event.approved_by


def test_stale_warm_generator_knows_it_is_replaying() -> None:
    """Two workers on one store: code guarded by ``not is_replaying`` runs once, not twice."""
    store = MemoryStore()
    first = _runtime(store, inline=False)
    second = _runtime(store, inline=False)
    run, _ = first.start_run(durability_guarded, Key(key="k"))
    first.tick(run.run_id)  # warm in the first worker, waiting on "one"
    assert second.notify("k-1", {"approved_by": "ann"}) == 1
    second.tick(run.run_id)  # the second worker moves the run on to "two"
    assert seen == ["side effect"]
    assert first.notify("k-2", {"approved_by": "bob"}) == 1  # the first worker's stale generator
    first.tick(run.run_id)
    assert store.get_run(run.run_id).status is RunStatus.COMPLETED  # type: ignore[union-attr]  # it exists
    assert seen == ["side effect"]
    first.close()
    second.close()


async def async_step_info() -> str:
    info = current_step()
    return f"{info.step_name}@{info.position}"


@workflow
def durability_async_step(ctx: Context, key: Key) -> Flow[str]:
    """An async step that reads ``current_step()``."""
    return (yield from ctx.run("info", async_step_info))


def test_async_step_inside_running_loop_sees_current_step() -> None:
    """An async step run while an event loop is running in the thread can call ``current_step``."""

    async def main() -> Any:
        with WorkflowEnvironment() as env:
            return env.run(durability_async_step, Key(key="k"))

    assert asyncio.run(main()) == "info@0"


@workflow
def durability_forgot_yield_from(ctx: Context, key: Key) -> Flow[str]:
    """A second ``ctx.run`` without ``yield from``: that step is never run."""
    first = yield from ctx.run("first", note, "first")
    second = ctx.run("forgotten", note, "never")
    return f"{first} {second}"


def test_forgetting_yield_from_fails_the_run_with_a_clear_error() -> None:
    """A step request built and not yielded fails the run with an error naming ``yield from``."""
    with WorkflowEnvironment() as env:
        handle = env.start(durability_forgot_yield_from, Key(key="k"))
        state = handle.state()
    assert state.status is RunStatus.FAILED
    assert state.error is not None
    assert "yield from" in state.error.message


captured: list[Context] = []


def builds_a_step() -> str:
    captured[0].run("inner", note, "dropped")
    return "built"


@workflow
def durability_step_inside_step(ctx: Context, key: Key) -> Flow[str]:
    """A step function that builds a step of its own workflow (which cannot work)."""
    captured[:] = [ctx]
    return (yield from ctx.run("outer", builds_a_step))


def test_step_built_inside_a_step_function_is_an_error() -> None:
    """Building a step inside a step function fails that step with a clear error."""
    with WorkflowEnvironment() as env:
        handle = env.start(durability_step_inside_step, Key(key="k"))
        state = handle.state()
        [record] = env.journal(handle.run_id)
    assert state.status is RunStatus.FAILED
    assert record.error is not None
    assert "step function" in record.error.message
