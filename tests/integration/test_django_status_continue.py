"""Custom status and continue-as-new on the Django store, the database worker and the CLI."""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING

import pytest
from django.core.management import call_command
from django.db import connections

import hookflow_gen
from hookflow_gen import RunCancelled, RunState, RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django.models import Run, Step
from tests._invariant import InvariantStore
from tests.conftest import run_worker
from tests.djangoapp.workflows import Approval, Tally, TallyStatus, pager, tally, tally_parent

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command("hookflow", *args, stdout=out, stderr=out)
    return out.getvalue()


def _chain(run_id: str) -> list[Run]:
    runs = [Run.objects.get(pk=run_id)]
    while runs[-1].continued_as is not None:
        runs.append(Run.objects.get(pk=runs[-1].continued_as))
    return runs


def test_a_chain_runs_on_the_database_worker(runtime: Runtime) -> None:
    """Each run ends continued with a short journal; the first handle reads the last result."""
    handle = tally.start(Tally(start=0, stop=7), run_id="db-tally")
    run_worker(runtime)
    assert handle.result() == sum(range(7))
    chain = _chain("db-tally")
    assert [run.run_id for run in chain] == [
        "db-tally",
        "db-tally-continued-1",
        "db-tally-continued-2",
        "db-tally-continued-3",
    ]
    assert [run.status for run in chain] == ["continued"] * 3 + ["completed"]
    assert [run.generation for run in chain] == [0, 1, 2, 3]
    assert [run.continued_from for run in chain] == [None, *[r.run_id for r in chain[:-1]]]
    assert [Step.objects.filter(run_id=run.run_id).count() for run in chain] == [2, 2, 2, 1]
    assert all(run.wake_at is None for run in chain)
    assert handle.status is RunStatus.CONTINUED
    assert handle.custom_status(TallyStatus) == TallyStatus(done=7, total=21)
    assert Run.objects.get(pk="db-tally").custom_status == '{"done":2,"total":1}'


def test_show_prints_the_status_and_both_links(runtime: Runtime) -> None:
    """``hookflow show`` names the run continued from and as, and the custom status."""
    tally.start(Tally(start=0, stop=3), run_id="show-tally")
    run_worker(runtime)
    first = _call("show", "show-tally")
    assert "status    continued" in first
    assert "continued show-tally-continued-1" in first
    assert 'custom    {"done":2,"total":1}' in first
    last = _call("show", "show-tally-continued-1")
    assert "continues show-tally (generation 1)" in last
    assert "status    completed" in last
    assert "continued show" not in last
    listed = _call("runs", "--status", "continued")
    assert "show-tally " in listed and "show-tally-continued-1" not in listed


def test_the_admin_page_shows_the_status_and_links(admin_client: object, runtime: Runtime) -> None:
    """The run page has the custom status and links to the runs before and after."""
    from django.test import Client
    from django.urls import reverse

    assert isinstance(admin_client, Client)
    tally.start(Tally(start=0, stop=5), run_id="adm-tally")
    run_worker(runtime)
    page = admin_client.get(reverse("admin:hookflow_run_change", args=["adm-tally-continued-1"]))
    html = page.content.decode()
    assert 'id="hf-continued-from"' in html and ">adm-tally</a>" in html
    assert 'id="hf-continued-as"' in html and ">adm-tally-continued-2</a>" in html
    assert 'id="hf-custom-status"' in html and "&quot;done&quot;: 4" in html


def test_a_running_runs_status_is_stored_with_its_checkpoint(runtime: Runtime) -> None:
    """While it waits, the run's status is already in its row, and the chain's live end moves."""
    handle = pager.start(Tally(start=0, stop=50), run_id="db-pager")
    run_worker(runtime)
    assert handle.custom_status(TallyStatus) == TallyStatus(done=0, total=0)
    for expected in (1, 2):
        assert hookflow_gen.notify("pager-50", Approval(approved_by="ann")) == 1
        run_worker(runtime)
        assert handle.latest().run_id == f"db-pager-continued-{expected}"
        assert handle.custom_status(TallyStatus) == TallyStatus(done=expected, total=0)
    row = Run.objects.get(pk="db-pager-continued-2")
    assert row.status == "running" and row.custom_status == '{"done":2,"total":0}'


def test_cancel_of_the_first_id_reaches_the_live_run(runtime: Runtime) -> None:
    """``hookflow cancel`` of an old id cancels the chain's live run."""
    handle = pager.start(Tally(start=0, stop=51), run_id="cancel-pager")
    run_worker(runtime)
    hookflow_gen.notify("pager-51", Approval(approved_by="ann"))
    run_worker(runtime)
    assert _call("cancel", "cancel-pager").strip() == (
        "run cancel-pager continued as cancel-pager-continued-1: cancelled"
    )
    assert Run.objects.get(pk="cancel-pager-continued-1").status == "cancelled"
    assert Run.objects.get(pk="cancel-pager").status == "continued"
    with pytest.raises(RunCancelled):
        handle.result()


def test_a_child_chain_settles_its_parent(runtime: Runtime) -> None:
    """A child that continues as new settles the parent's invoke step at the chain's end."""
    handle = tally_parent.start(Tally(start=0, stop=5), run_id="db-parent")
    run_worker(runtime)
    assert handle.result() == f"tallied {sum(range(5))}"
    invoke = Step.objects.get(run_id="db-parent", position=0)
    assert invoke.key == "db-parent-0-continued-2" and invoke.status == "completed"
    assert Run.objects.get(pk="db-parent-0-continued-2").parent_run_id == "db-parent"


def test_a_crash_in_the_continuing_tick_leaves_neither_half(
    runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end and the new run commit together: a crash before the commit leaves neither."""
    store = runtime.store
    save_run = store.save_run

    def crash_on_end(run: RunState) -> None:
        if run.status is RunStatus.CONTINUED:
            raise RuntimeError("killed between ending the run and committing")
        save_run(run)

    monkeypatch.setattr(store, "save_run", crash_on_end)
    tally.start(Tally(start=0, stop=3), run_id="crash-tally")
    with pytest.raises(RuntimeError, match="killed"):
        runtime.tick("crash-tally")
    assert not Run.objects.filter(run_id__startswith="crash-tally-").exists()
    assert Run.objects.get(pk="crash-tally").status == "running"
    monkeypatch.setattr(store, "save_run", save_run)
    runtime.close()  # a fresh process: nothing warm
    clock.advance(600)  # the lost checkpoint's lease lapses; its step runs again
    for _ in range(3):  # the retried tick, then late duplicate deliveries
        runtime.tick("crash-tally")
    run_worker(runtime)
    assert sorted(
        Run.objects.filter(run_id__startswith="crash-tally").values_list("pk", flat=True)
    ) == [
        "crash-tally",
        "crash-tally-continued-1",
    ]
    assert tally.start(Tally(start=0, stop=3), run_id="crash-tally").result() == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_ticks_make_one_run_per_generation(clock: FakeClock) -> None:
    """Eight threads tick each chain at once, over and over: never two runs of a generation."""
    runtimes = [build_runtime(get_settings(), clock=clock) for _ in range(8)]
    for r in runtimes:
        if isinstance(r.store, InvariantStore):
            r.store.clock = clock  # leases are checked against the runtime's clock
    try:
        for round_ in range(15):
            run_id = f"race-tally-{round_}"
            tally.start(Tally(start=0, stop=6, per_run=1), run_id=run_id)
            current = run_id
            for _ in range(6):
                barrier = threading.Barrier(len(runtimes))
                errors: list[BaseException] = []

                def tick(
                    r: Runtime,
                    target: str = current,
                    b: threading.Barrier = barrier,
                    errors: list[BaseException] = errors,
                ) -> None:
                    try:
                        b.wait()
                        r.tick(target)
                    except BaseException as exc:  # reported below
                        errors.append(exc)
                    finally:
                        connections.close_all()

                threads = [threading.Thread(target=tick, args=(r,)) for r in runtimes]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=120)
                assert not errors, errors
                row = Run.objects.get(pk=current)
                if row.continued_as is None:
                    break
                current = row.continued_as
            chain = _chain(run_id)
            assert [run.generation for run in chain] == list(range(6))
            assert chain[-1].status == "completed" and chain[-1].result == str(sum(range(6)))
            assert Run.objects.filter(run_id__startswith=run_id).count() == 6
    finally:
        for r in runtimes:
            r.close()


@pytest.mark.no_invariant
def test_the_invariant_checks_the_links_of_a_continued_run_in_the_database(
    clock: FakeClock,
) -> None:
    """The database check finds a continued run whose successor is missing or mislinked."""
    from tests._invariant import check_django_runs

    Run.objects.create(run_id="inv-a", workflow="w", payload="{}", status="continued")
    Run.objects.filter(pk="inv-a").update(continued_as="inv-b")
    [problem] = check_django_runs("default", clock.now(), ["inv-a"])
    assert problem.startswith("run inv-a is CONTINUED as 'inv-b'")
    Run.objects.create(
        run_id="inv-b",
        workflow="w",
        payload="{}",
        continued_from="inv-a",
        generation=1,
        wake_at=clock.now(),
    )
    assert check_django_runs("default", clock.now(), ["inv-a", "inv-b"]) == []
    Run.objects.filter(pk="inv-b").update(generation=3)
    assert len(check_django_runs("default", clock.now(), ["inv-a"])) == 1
