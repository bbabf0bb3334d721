"""Updates on the Django store: inline, the database worker, worker processes, PostgreSQL races."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from hookflow_gen import (
    HookflowError,
    PayloadValidationError,
    RunStatus,
    UpdateError,
    UpdateRejected,
    UpdateRunFinished,
)
from hookflow_gen._runtime import Runtime
from hookflow_gen._updates import UpdateStatus, update_key
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django.models import Event, Step, Update
from tests.conftest import run_worker
from tests.djangoapp.update_workflows import (
    Balance,
    Book,
    Deposit,
    Ledger,
    chained,
    deposit,
    ignores,
    ledger,
)

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def test_update_on_the_django_store_answers_and_rejects(inline_runtime: Runtime) -> None:
    """Answers and rejections are stored in the update's row and returned typed."""
    handle = ledger.start(Ledger(deposits=2))
    assert handle.update(deposit, Deposit(amount=5), update_id="a") == Balance(total=5, deposits=1)
    with pytest.raises(UpdateRejected, match="negative"):
        handle.update(deposit, Deposit(amount=-2), update_id="b")
    assert handle.update(deposit, Deposit(amount=1), update_id="c") == Balance(total=6, deposits=2)
    assert handle.result() == 6
    rows = {row.update_id: row for row in Update.objects.filter(run_id=handle.run_id)}
    assert {k: r.status for k, r in rows.items()} == {
        "a": "answered",
        "b": "rejected",
        "c": "answered",
    }
    assert rows["b"].reason == "a deposit of -2 is negative" and rows["b"].answer is None
    replies = Step.objects.filter(run_id=handle.run_id, kind="reply")
    assert sorted(str(key) for key in replies.values_list("key", flat=True)) == ["a", "b", "c"]


def test_update_ids_are_idempotent_and_unique_per_run(inline_runtime: Runtime) -> None:
    """The same id gets the same answer; another request under it is refused; runs may share ids."""
    first = ledger.start(Ledger(deposits=1))
    second = ledger.start(Ledger(deposits=1))
    answer = first.update(deposit, Deposit(amount=3), update_id="same")
    assert first.update(deposit, Deposit(amount=3), update_id="same") == answer
    with pytest.raises(UpdateError, match="own id"):
        first.update(deposit, Deposit(amount=9), update_id="same")
    assert second.update(deposit, Deposit(amount=9), update_id="same").total == 9
    assert Update.objects.count() == 2


def test_invalid_request_and_finished_run_store_nothing(inline_runtime: Runtime) -> None:
    """A request that does not fit, or a run that ended, leaves no update and no event."""
    handle = ledger.start(Ledger(deposits=1))
    with pytest.raises(PayloadValidationError):
        handle.update(deposit, Deposit.model_construct(amount=10_000))
    done = ledger.start(Ledger(deposits=0))
    with pytest.raises(UpdateRunFinished):
        done.update(deposit, Deposit(amount=1))
    assert Update.objects.count() == 0 and Event.objects.count() == 0
    ended = ignores.start(Ledger(deposits=1))
    with pytest.raises(UpdateRunFinished, match="without answering"):
        ended.update(deposit, Deposit(amount=1), timeout=5)
    assert Update.objects.get(run_id=ended.run_id).status == "pending"


def test_the_database_worker_answers_a_buffered_update(runtime: Runtime) -> None:
    """Sent before the run first ticks, the update is buffered; the worker answers it."""
    handle = ledger.start(Ledger(deposits=1))
    runtime.send_update(handle.run_id, deposit, Deposit(amount=7), "early")
    key = update_key(handle.run_id, "deposit")
    assert Event.objects.filter(key=key).count() == 1
    run_worker(runtime)
    assert handle.status is RunStatus.COMPLETED
    assert Event.objects.filter(key=key).count() == 0
    assert handle.update(deposit, Deposit(amount=7), update_id="early", timeout=0) == Balance(
        total=7, deposits=1
    )


# -- continue-as-new chains ------------------------------------------------------------


def test_an_update_to_a_continued_run_is_stored_on_the_live_end(inline_runtime: Runtime) -> None:
    """The first id's handle updates each run of the chain in turn; rows sit on those runs."""
    handle = chained.start(Book(), run_id="dj-chain-1")
    answers = [
        handle.update(deposit, Deposit(amount=amount), update_id=f"u{amount}").total
        for amount in (5, 7, 3)
    ]
    assert answers == [5, 12, 15] and handle.result() == 15
    rows = Update.objects.order_by("id").values_list("run_id", "update_id", "status")
    assert list(rows) == [
        ("dj-chain-1", "u5", "answered"),
        ("dj-chain-1-continued-1", "u7", "answered"),
        ("dj-chain-1-continued-2", "u3", "answered"),
    ]
    with pytest.raises(UpdateRunFinished, match=r"dj-chain-1-continued-2 \(the last run"):
        handle.update(deposit, Deposit(amount=1))
    assert handle.update(deposit, Deposit(amount=7), update_id="u7", timeout=0).total == 12
    assert Update.objects.count() == 3


def test_the_worker_hands_buffered_updates_on_to_the_next_run(runtime: Runtime) -> None:
    """Updates buffered on a run that continues are answered by the runs after it."""
    handle = chained.start(Book(), run_id="dj-chain-2")
    for update_id, amount in (("a", 5), ("b", 7), ("c", 3)):
        runtime.send_update("dj-chain-2", deposit, Deposit(amount=amount), update_id)
    assert Event.objects.filter(key=update_key("dj-chain-2", "deposit")).count() == 3
    run_worker(runtime)
    assert handle.result() == 15
    rows = Update.objects.order_by("run_id", "update_id").values_list(
        "run_id", "update_id", "status"
    )
    assert list(rows) == [
        ("dj-chain-2", "a", "answered"),
        ("dj-chain-2", "b", "continued"),
        ("dj-chain-2", "c", "continued"),
        ("dj-chain-2-continued-1", "b", "answered"),
        ("dj-chain-2-continued-1", "c", "continued"),
        ("dj-chain-2-continued-2", "c", "answered"),
    ]
    assert Event.objects.count() == 0
    totals = [
        handle.update(deposit, Deposit(amount=amount), update_id=update_id, timeout=0).total
        for update_id, amount in (("a", 5), ("b", 7), ("c", 3))
    ]
    assert totals == [5, 12, 15]


def _chain_race_round(round_: int, sends: int) -> None:
    """One round: ticks of the chain's live end race ``sends`` updates sent to its first id."""
    first = f"update-chain-race-{round_}"
    handle = chained.start(Book(runs_left=sends - 1), run_id=first)
    barrier = threading.Barrier(sends + 1)
    errors: list[BaseException] = []

    def act(do: Callable[[Runtime], object]) -> None:
        runtime = build_runtime(get_settings())
        try:
            barrier.wait()
            do(runtime)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            runtime.close()
            connection.close()

    def send(amount: int) -> Callable[[Runtime], object]:
        return lambda r: r.send_update(first, deposit, Deposit(amount=amount), f"u{amount}")

    def ticks(runtime: Runtime) -> object:
        for _ in range(2 * sends):
            runtime.tick(handle.latest().run_id)
        return None

    actions = [ticks, *(send(10**i) for i in range(sends))]
    threads = [threading.Thread(target=act, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runtime = build_runtime(get_settings())
    try:
        for _ in range(4 * sends):
            end = handle.latest()
            if end.status.finished:
                break
            runtime.tick(end.run_id)
    finally:
        runtime.close()
    amounts = [10**i for i in range(sends)]
    assert handle.result() == sum(amounts), f"round {round_}"
    rows = Update.objects.filter(run__run_id__startswith=first)
    answered = rows.filter(status=UpdateStatus.ANSWERED.value)
    assert sorted(answered.values_list("update_id", flat=True)) == sorted(
        f"u{amount}" for amount in amounts
    ), f"round {round_}"
    assert set(rows.values_list("status", flat=True)) <= {"answered", "continued"}
    totals = sorted(
        handle.update(deposit, Deposit(amount=amount), update_id=f"u{amount}", timeout=0).total
        for amount in amounts
    )
    # Each answer is the chain's running total after that update: its prefix sums.
    assert len(set(totals)) == sends and totals[-1] == sum(amounts), f"round {round_}"
    assert not Event.objects.filter(key__contains=first).exists()


@pytest.mark.postgres
def test_updates_racing_a_continuing_chain_are_each_answered_once() -> None:
    """Three updates sent to a chain's first id while its runs tick and continue, 15 times."""
    for round_ in range(15):
        _chain_race_round(round_, 3)


# -- a worker process answers --------------------------------------------------------------

_started: list[subprocess.Popen[str]] = []


@pytest.fixture
def worker() -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start ``hookflow worker`` processes on the test database; kill and reap them after."""
    env = dict(os.environ)
    env["HOOKFLOW_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["HOOKFLOW_TEST_POLL"] = "0.05"
    env.pop("HOOKFLOW_TEST_LEASE", None)

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "manage.py"), "hookflow", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _started.append(process)
        return process

    yield start
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        output, _ = process.communicate()
        assert "Traceback" not in output, output


def test_a_worker_process_answers_updates(worker: Callable[[], subprocess.Popen[str]]) -> None:
    """The caller polls the database while a worker process ticks the run and replies."""
    handle = ledger.start(Ledger(deposits=2))
    worker()
    first = handle.update(deposit, Deposit(amount=4), timeout=60, poll=0.1)
    assert first == Balance(total=4, deposits=1)
    with pytest.raises(UpdateRejected):
        handle.update(deposit, Deposit(amount=-1), timeout=60, poll=0.1)
    assert handle.update(deposit, Deposit(amount=6), timeout=60) == Balance(total=10, deposits=2)
    assert handle.result(wait=60) == 10


# -- PostgreSQL: an update racing the run's first wait ---------------------------------------


def _race_round(round_: int) -> None:
    """One round: a tick and two updates start together on one fresh run."""
    handle = ledger.start(Ledger(deposits=2), run_id=f"update-race-{round_}")
    run_id = handle.run_id
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def act(do: Callable[[Runtime], object]) -> None:
        runtime = build_runtime(get_settings())
        try:
            barrier.wait()
            do(runtime)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            runtime.close()
            connection.close()

    def send(update_id: str, amount: int) -> Callable[[Runtime], object]:
        return lambda r: r.send_update(run_id, deposit, Deposit(amount=amount), update_id)

    def tick(runtime: Runtime) -> object:
        return runtime.tick(run_id)

    actions = [tick, send("one", 1), send("two", 2)]
    threads = [threading.Thread(target=act, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runtime = build_runtime(get_settings())
    try:
        for _ in range(5):
            if handle.status.finished:
                break
            runtime.tick(run_id)
    finally:
        runtime.close()
    assert handle.result() == 3, f"round {round_}"
    rows = Update.objects.filter(run_id=run_id)
    assert sorted(rows.values_list("status", flat=True)) == [UpdateStatus.ANSWERED.value] * 2
    replies = Step.objects.filter(run_id=run_id, kind="reply")
    assert sorted(str(key) for key in replies.values_list("key", flat=True)) == ["one", "two"]
    assert not Event.objects.filter(key=update_key(run_id, "deposit")).exists()
    one = handle.update(deposit, Deposit(amount=1), update_id="one", timeout=0)
    two = handle.update(deposit, Deposit(amount=2), update_id="two", timeout=0)
    assert {one.total, two.total} in ({1, 3}, {2, 3}), f"round {round_}"


@pytest.mark.postgres
def test_updates_racing_the_first_wait_are_never_lost_or_answered_twice() -> None:
    """Two updates sent while the run starts to wait, 25 times: each answered exactly once."""
    for round_ in range(25):
        _race_round(round_)


def test_the_admin_and_show_list_a_run_with_updates(
    admin_client: Client, inline_runtime: Runtime
) -> None:
    """A run with receive and reply steps renders in the admin and in `hookflow show`."""
    handle = ledger.start(Ledger(deposits=1))
    handle.update(deposit, Deposit(amount=2), update_id="shown")
    page = admin_client.get(reverse("admin:hookflow_run_change", args=[handle.run_id]))
    assert page.status_code == 200
    assert "reply" in page.content.decode()
    out = io.StringIO()
    call_command("hookflow", "show", handle.run_id, stdout=out)
    assert "reply" in out.getvalue() and "shown" in out.getvalue()


def test_an_update_inside_a_transaction_is_refused(runtime: Runtime) -> None:
    """With the database worker, an update sent inside atomic() could never be answered."""
    from django.db import transaction

    handle = ledger.start(Ledger(deposits=1))
    with transaction.atomic(), pytest.raises(HookflowError, match=r"transaction\.atomic"):
        handle.update(deposit, Deposit(amount=1))
    assert Update.objects.count() == 0
