"""The QStash webhook served by Django's ASGI handler (``AsyncClient``), as under uvicorn."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from hookflow_gen._client import use_runtime
from hookflow_gen._store import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    QStashServer,
    sign,
)
from tests.e2e import flows

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from django.test.client import _MonkeyPatchedASGIResponse  # pyright: ignore[reportPrivateUsage]

    from hookflow_gen._runtime import Runtime

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.e2e.flows"),
]

# The ASGI test client always sends ``Host: testserver``; the local server's
# own deliveries to that name go nowhere, so each test delivers itself.
SITE = "http://testserver"
HOOK = f"{SITE}/hookflow/qstash/"


@pytest.fixture
def anyio_backend() -> str:
    """asyncio, as Django's ASGI handler runs on."""
    return "asyncio"


@pytest.fixture(autouse=True)
async def _close_sync_thread_connections() -> AsyncIterator[None]:
    """Close the connection asgiref's sync thread opened, as Django does after a request."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    """The current runtime: the Django store and the QStash scheduler on a local server."""
    with QStashServer() as qstash:
        scheduler = QStashScheduler(
            {
                "TOKEN": qstash.token,
                "URL": qstash.url,
                "CURRENT_SIGNING_KEY": DEFAULT_CURRENT_SIGNING_KEY,
                "NEXT_SIGNING_KEY": DEFAULT_NEXT_SIGNING_KEY,
                "BASE_URL": SITE,
                "PUBLISH_RETRIES": 0,
            }
        )
        runtime = build_runtime(get_settings(), scheduler=scheduler)
        flows.reset()
        with use_runtime(runtime):
            yield runtime
        runtime.close()
        scheduler.close()


async def deliver(
    body: dict[str, Any], *, signature: str | None = None
) -> _MonkeyPatchedASGIResponse:
    """POST a wake-up through the ASGI handler, signed as QStash signs it."""
    raw = json.dumps(body).encode()
    token = signature or sign(key=DEFAULT_CURRENT_SIGNING_KEY, url=HOOK, body=raw)
    return await AsyncClient().post(
        "/hookflow/qstash/",
        data=raw,
        content_type="application/json",
        headers={"Upstash-Signature": token, "Upstash-Retried": "0"},
    )


async def test_signed_delivery_over_asgi_runs_the_workflow(runtime: Runtime) -> None:
    """A signed wake-up through the ASGI handler ticks the run to completion and answers 200."""
    handle = await flows.linear.astart(flows.Count(n=3))
    response = await deliver({"run_id": handle.run_id, "seq": 1})
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["status"] == "done"
    assert await handle.aresult() == 3


async def test_bad_signature_over_asgi_is_refused(runtime: Runtime) -> None:
    """A forged signature through the ASGI handler gets a JSON 401 and changes nothing."""
    handle = await flows.linear.astart(flows.Count(n=1))
    forged = sign(key="sig_" + "x" * 28, url=HOOK, body=b"{}")  # as long as a real key
    response = await deliver({"run_id": handle.run_id, "seq": 1}, signature=forged)
    assert response.status_code == 401
    assert "error" in json.loads(response.content)
    state = await sync_to_async(handle.state)()
    assert state.status is RunStatus.RUNNING
    assert await sync_to_async(handle.steps)() == []
