"""The async readers of a chain: ``aresult`` follows continue-as-new, ``acustom_status`` reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from hookflow_gen import RunStatus
from tests.djangoapp.workflows import Tally, TallyStatus, pager, tally

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hookflow_gen._runtime import Runtime

pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def anyio_backend() -> str:
    """On asyncio, as Django's ASGI handler runs."""
    return "asyncio"


@pytest.fixture(autouse=True)
async def _close_sync_thread_connections() -> AsyncIterator[None]:
    """Close the connection asgiref's sync thread opened, as Django does after a request."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


async def test_aresult_follows_the_chain_and_acustom_status_reads_its_end(
    inline_runtime: Runtime,
) -> None:
    """The first run's handle awaits the last run's result and reads its status."""
    handle = await tally.astart(Tally(start=0, stop=5), run_id="async-tally")
    assert await handle.aresult(wait=5) == sum(range(5))
    assert await handle.acustom_status(TallyStatus) == TallyStatus(done=5, total=10)
    state = await sync_to_async(handle.state, thread_sensitive=True)()
    assert state.status is RunStatus.CONTINUED


async def test_acustom_status_of_a_waiting_run(inline_runtime: Runtime) -> None:
    """A run waiting for an event already has its status stored."""
    handle = await pager.astart(Tally(start=4, stop=60), run_id="async-pager")
    assert await handle.acustom_status(TallyStatus) == TallyStatus(done=4, total=0)
