"""Continue-as-new on the QStash transport: the new run's wake-up is owed by the same commit."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from hookflow_gen._client import use_runtime
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.django.models import Outbox, Run
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    QStashServer,
)
from tests.djangoapp.workflows import Tally, tally
from tests.integration.test_qstash_webhook import SITE, deliver

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hookflow_gen._runtime import Runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.e2e.flows")]


@pytest.fixture
def qstash() -> Iterator[QStashServer]:
    """A local QStash-compatible server."""
    with QStashServer() as server:
        yield server


@pytest.fixture
def runtime(qstash: QStashServer) -> Iterator[Runtime]:
    """The Django store with the QStash scheduler, publishing to the local server."""
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
    with use_runtime(runtime):
        yield runtime
    runtime.close()
    scheduler.close()


def test_each_continued_run_is_published_and_runs(runtime: Runtime, qstash: QStashServer) -> None:
    """The continuing tick publishes the new run's first wake-up; delivering each ends the chain."""
    handle = tally.start(Tally(start=0, stop=5), run_id="qs-tally")
    for run_id in ("qs-tally", "qs-tally-continued-1", "qs-tally-continued-2"):
        bodies = [json.loads(m.body) for m in qstash.messages(kind="publish")]
        assert {"run_id": run_id, "seq": 1} in bodies
        assert deliver({"run_id": run_id, "seq": 1}).status_code == 200
    assert handle.result() == sum(range(5))
    assert Run.objects.get(pk="qs-tally-continued-2").status == "completed"
    assert not Outbox.objects.exists()  # every owed wake-up reached QStash
    # A duplicate delivery to a continued run only looks and leaves.
    assert deliver({"run_id": "qs-tally", "seq": 1}).status_code == 200
    assert Run.objects.filter(run_id__startswith="qs-tally").count() == 3
