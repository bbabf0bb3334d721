"""The async entry points: ``Workflow.astart``, ``RunHandle.aresult`` and ``anotify``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

import hookflow_gen
from hookflow_gen._store import RunStatus
from hookflow_gen.exceptions import (
    PayloadValidationError,
    RunCancelled,
    RunNotFinished,
    WorkflowFailed,
)
from tests.conftest import run_worker
from tests.djangoapp.workflows import Numbers, Total, Wait, approval, doomed, linear

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hookflow_gen._runtime import Runtime

# The sync halves run in asgiref's thread, so they need committed data, not
# the test's own transaction.
pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio, as Django's ASGI handler does."""
    return "asyncio"


@pytest.fixture(autouse=True)
async def _close_sync_thread_connections() -> AsyncIterator[None]:
    """Close the connection asgiref's sync thread opened, as Django does after a request."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


async def test_astart_and_aresult_return_the_typed_result(inline_runtime: Runtime) -> None:
    """``await wf.astart`` starts a run and ``await handle.aresult()`` gives its typed result."""
    handle = await linear.astart(Numbers(a=2, b=3))
    assert await handle.aresult() == Total(total=10)
    again = await linear.astart(Numbers(a=9, b=9), run_id=handle.run_id)
    assert again.run_id == handle.run_id  # idempotent start, as with ``start``


async def test_astart_validates_the_payload(inline_runtime: Runtime) -> None:
    """A payload that does not fit the model is refused by ``astart`` as by ``start``."""
    with pytest.raises(PayloadValidationError):
        await linear.astart({"a": "not a number"})  # type: ignore[arg-type]  # wrong on purpose
    assert await sync_to_async(_run_count)() == 0


def _run_count() -> int:
    from hookflow_gen.django.models import Run

    return Run.objects.count()


async def test_aresult_waits_without_blocking_the_event_loop(runtime: Runtime) -> None:
    """``aresult(wait=...)`` polls while a worker in another thread finishes the run."""
    handle = await linear.astart(Numbers(a=1, b=1))
    assert (await sync_to_async(handle.state)()).status is RunStatus.RUNNING
    beats: list[float] = []

    def work() -> int:
        try:
            return run_worker(runtime)
        finally:
            connections.close_all()  # this thread's own connection

    async def beat_then_work() -> int:
        # Runs on the loop while aresult waits: if aresult blocked the loop,
        # the worker would never start and aresult would give up after 60 s.
        for _ in range(3):
            await asyncio.sleep(0.01)
            beats.append(asyncio.get_running_loop().time())
        return await sync_to_async(work, thread_sensitive=False)()

    result, ticks = await asyncio.gather(handle.aresult(wait=60, poll=0.01), beat_then_work())
    assert result == Total(total=4)
    assert ticks >= 1
    assert len(beats) == 3


async def test_aresult_raises_like_result(runtime: Runtime) -> None:
    """``aresult`` raises RunNotFinished, WorkflowFailed and RunCancelled as ``result`` does."""
    waiting = await approval.astart(Wait(key="async-k1"))
    with pytest.raises(RunNotFinished):
        await waiting.aresult()
    failing = await doomed.astart(Numbers(a=0, b=0))
    await sync_to_async(run_worker)(runtime)
    with pytest.raises(WorkflowFailed, match="boom"):
        await failing.aresult()
    await sync_to_async(waiting.cancel)()
    with pytest.raises(RunCancelled):
        await waiting.aresult()


async def test_anotify_delivers_and_validates(runtime: Runtime) -> None:
    """``await anotify`` delivers an event to a waiting run and refuses one that does not fit."""
    handle = await approval.astart(Wait(key="async-k2"))
    await sync_to_async(run_worker)(runtime)
    with pytest.raises(PayloadValidationError):
        await hookflow_gen.anotify("async-k2", {"approved_by": ["not", "a", "string"]})
    assert await hookflow_gen.anotify("async-k2", {"approved_by": "ann"}) == 1
    await sync_to_async(run_worker)(runtime)
    assert await handle.aresult() == "ann"


async def test_sync_start_in_async_code_is_refused_and_astart_is_not(runtime: Runtime) -> None:
    """Inside a coroutine the sync ``start`` hits Django's async guard; ``astart`` does not."""
    from django.core.exceptions import SynchronousOnlyOperation

    with pytest.raises(SynchronousOnlyOperation):
        linear.start(Numbers(a=1, b=2))
    handle = await linear.astart(Numbers(a=1, b=2))
    assert (await sync_to_async(handle.state)()).status is RunStatus.RUNNING
