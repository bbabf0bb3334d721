"""Updates on the QStash scheduler: accepting one publishes the run's wake-up, as notify does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from hookflow_gen import RunStatus
from tests.djangoapp.update_workflows import (
    Balance,
    Book,
    Deposit,
    Ledger,
    chained,
    deposit,
    ledger,
)
from tests.integration.test_qstash_webhook import (
    deliver,
    published,
    qstash,  # noqa: F401  # pyright: ignore[reportUnusedImport]  # a fixture
    runtime,  # noqa: F401  # pyright: ignore[reportUnusedImport]  # a fixture
    scheduler,  # noqa: F401  # pyright: ignore[reportUnusedImport]  # a fixture
)

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing.qstash import QStashServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.e2e.flows")]


def test_an_update_wakes_the_run_through_qstash(runtime: Runtime, qstash: QStashServer) -> None:  # noqa: F811  # the fixtures above
    """The accepted update publishes a wake-up; its delivery runs the reply; the caller reads it."""
    handle = ledger.start(Ledger(deposits=1))
    [start] = published(qstash)
    assert deliver(start).status_code == 200  # the run now waits in ctx.receive
    assert handle.state().status is RunStatus.RUNNING and len(published(qstash)) == 1
    runtime.send_update(handle.run_id, deposit, Deposit(amount=9), "q-1")
    woken = published(qstash)[1:]
    assert [body["run_id"] for body in woken] == [handle.run_id]
    assert deliver(woken[0]).status_code == 200
    assert handle.status is RunStatus.COMPLETED
    answer = handle.update(deposit, Deposit(amount=9), update_id="q-1", timeout=0)
    assert answer == Balance(total=9, deposits=1)


def test_an_update_to_a_continued_run_wakes_the_chains_live_end(
    runtime: Runtime,  # noqa: F811  # the fixture above
    qstash: QStashServer,  # noqa: F811  # the fixture above
) -> None:
    """Sent to a continued run's id, the update publishes the wake-up of the run now live."""
    handle = chained.start(Book(runs_left=1), run_id="q-chain")
    [start] = published(qstash)
    assert deliver(start).status_code == 200  # the first run waits in ctx.receive
    runtime.send_update("q-chain", deposit, Deposit(amount=4), "q-a")
    [woken] = published(qstash)[1:]
    assert deliver(woken).status_code == 200  # answered; continued as q-chain-continued-1
    assert handle.status is RunStatus.CONTINUED
    [started] = published(qstash)[2:]
    assert started["run_id"] == "q-chain-continued-1"
    assert deliver(started).status_code == 200  # the next run waits in ctx.receive
    state = runtime.send_update("q-chain", deposit, Deposit(amount=6), "q-b")
    assert state.run_id == "q-chain-continued-1"
    [woken] = published(qstash)[3:]
    assert woken["run_id"] == "q-chain-continued-1"
    assert deliver(woken).status_code == 200
    assert handle.result() == 10
    answer = handle.update(deposit, Deposit(amount=6), update_id="q-b", timeout=0)
    assert answer == Balance(total=10, deposits=1)
