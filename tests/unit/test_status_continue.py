"""``ctx.set_status`` (a run's custom status) and ``ctx.continue_as_new`` (chains of runs)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    HookflowError,
    PayloadValidationError,
    RunCancelled,
    RunState,
    RunStatus,
    WorkflowDefinitionError,
    workflow,
)
from hookflow_gen._engine import ContinuedAsNew
from hookflow_gen._runtime import _transitions as T
from hookflow_gen._store import MemoryStore
from hookflow_gen.testing import EPOCH, Stepper, WorkflowEnvironment, check_resumable, replay

from .models import Approval, double


class Batch(BaseModel):
    size: int


class Progress(BaseModel):
    done: int
    total: int


class Count(BaseModel):
    start: int
    stop: int
    total: int = 0


class Other(BaseModel):
    name: str


@workflow(name="status-progress")
def progress(ctx: Context, batch: Batch) -> Flow[int]:
    total = 0
    for i in range(batch.size):
        ctx.set_status(Progress(done=i, total=batch.size))
        total += yield from ctx.run(f"item-{i}", double, i)
    ctx.set_status(Progress(done=batch.size, total=batch.size))
    yield from ctx.wait_for_event("go", Approval, key=f"status-go-{batch.size}")
    return total


@workflow(name="continue-counter")
def counter(ctx: Context, count: Count) -> Flow[int]:
    """Adds 2*i for i in [start, stop), three steps per run, then continues as new."""
    total = count.total
    end = min(count.start + 3, count.stop)
    for i in range(count.start, end):
        total += yield from ctx.run(f"add-{i}", double, i)
    ctx.set_status(Progress(done=end, total=count.stop))
    if end < count.stop:
        return (
            yield from ctx.continue_as_new(counter, Count(start=end, stop=count.stop, total=total))
        )
    return total


@workflow(name="continue-listener")
def listener(ctx: Context, count: Count) -> Flow[int]:
    """Waits for one event per run, for ever: an unbounded loop, one run per event."""
    ctx.set_status(Progress(done=count.start, total=count.stop))
    yield from ctx.wait_for_event("next", Approval, key=f"listener-{count.stop}")
    return (yield from ctx.continue_as_new(listener, Count(start=count.start + 1, stop=count.stop)))


@workflow(name="continue-parent")
def parent(ctx: Context, count: Count) -> Flow[str]:
    total = yield from ctx.invoke("child", counter, count)
    return f"child total {total}"


@workflow(name="continue-listener-parent")
def listener_parent(ctx: Context, count: Count) -> Flow[int]:
    return (yield from ctx.invoke("child", listener, count))


@workflow(name="continue-wrong-workflow")
def wrong_workflow(ctx: Context, count: Count) -> Flow[int]:
    yield from ()
    return (yield from ctx.continue_as_new(counter, count))


@workflow(name="continue-in-gather")
def continue_in_gather(ctx: Context, count: Count) -> Flow[int]:
    yield from ctx.gather(  # refused at run time: it ends the run
        ctx.run("a", double, 1), ctx.continue_as_new(continue_in_gather, count)
    )
    return 0


@workflow(name="status-not-json")
def status_not_json(ctx: Context, count: Count) -> Flow[int]:
    ctx.set_status(object())
    yield from ()
    return 1


def _expected(count: Count) -> int:
    return count.total + sum(2 * i for i in range(count.start, count.stop))


# -- custom status, by hand --------------------------------------------------------------


def test_stepper_shows_the_latest_status() -> None:
    """The status set before each step is readable while the workflow waits on it."""
    s = Stepper(progress, Batch(size=3))
    assert s.custom_status(Progress) == Progress(done=0, total=3)
    s.send(0)
    assert s.custom_status(Progress) == Progress(done=1, total=3)
    s.send(2).send(4)
    assert s.step.name == "go"
    assert s.custom_status(Progress) == Progress(done=3, total=3)
    s.send(Approval(approved_by="ann"))
    assert s.result() == 6


def test_a_status_is_validated_against_the_model_read_with() -> None:
    """Reading the status as another model is a clear error, not a wrong value."""
    s = Stepper(progress, Batch(size=1))
    with pytest.raises(PayloadValidationError, match="custom status"):
        s.custom_status(Other)
    assert Stepper(counter, Count(start=0, stop=0)).custom_status(Progress) == Progress(
        done=0, total=0
    )


def test_a_status_that_is_not_json_fails_the_run() -> None:
    """``set_status`` with a value pydantic cannot dump fails the run, saying so."""
    s = Stepper(status_not_json, Count(start=0, stop=0))
    assert s.error is not None
    assert "status set by workflow 'status-not-json'" in s.error.message


# -- continue-as-new, by hand ---------------------------------------------------------


def test_stepper_sees_a_run_continue_as_new() -> None:
    """After its three steps the run ends: continued with the next payload, no result."""
    s = Stepper(counter, Count(start=0, stop=5))
    s.send(0).send(2).send(4)
    assert s.finished and s.continued
    assert s.continued_payload() == Count(start=3, stop=5, total=6)
    with pytest.raises(HookflowError, match="continued as new"):
        s.result()
    last = Stepper(counter, s.continued_payload())
    last.send(6).send(8)
    assert not last.continued and last.result() == 6 + 6 + 8


def test_continue_as_new_takes_the_running_workflow_only() -> None:
    """Another workflow's payload type would not fit: refused with a clear error."""
    s = Stepper(wrong_workflow, Count(start=0, stop=1))
    assert s.error is not None and s.error.type.endswith("WorkflowDefinitionError")
    assert "'continue-wrong-workflow'" in s.error.message


def test_continue_as_new_cannot_be_a_branch() -> None:
    """It ends the run, so it cannot be one branch of a gather."""
    error = Stepper(continue_in_gather, Count(start=0, stop=1)).error
    assert error is not None and error.caused_by(WorkflowDefinitionError)
    assert "gather cannot take continue_as_new: it ends the run" in error.message


def test_a_continued_journal_replays_to_the_same_end() -> None:
    """``replay`` of a continued run's journal ends continued again, the same payload."""
    with WorkflowEnvironment() as env:
        handle = counter.start(Count(start=0, stop=4), run_id="replayed")
        assert handle.result() == _expected(Count(start=0, stop=4))
        result = replay(counter, Count(start=0, stop=4), env.journal("replayed"))
    assert result.finished
    assert result.decision == ContinuedAsNew(Count(start=3, stop=4, total=6).model_dump_json())


# -- on the runtime ---------------------------------------------------------------------


def _chain(store: MemoryStore, run_id: str) -> list[RunState]:
    runs = [store.runs[run_id]]
    while runs[-1].continued_as is not None:
        runs.append(store.runs[runs[-1].continued_as])
    return runs


def test_a_chain_runs_to_its_end_with_links_both_ways() -> None:
    """Each run ends continued, the next is one generation later with an empty journal."""
    count = Count(start=0, stop=10)
    with WorkflowEnvironment() as env:
        handle = counter.start(count, run_id="chain")
        assert handle.result() == _expected(count)  # followed from the first run
        chain = _chain(env.store, "chain")
        assert [run.run_id for run in chain] == [
            "chain",
            "chain-continued-1",
            "chain-continued-2",
            "chain-continued-3",
        ]
        assert [run.status for run in chain] == [RunStatus.CONTINUED] * 3 + [RunStatus.COMPLETED]
        assert [run.generation for run in chain] == [0, 1, 2, 3]
        assert [run.continued_from for run in chain] == [None, *[r.run_id for r in chain[:-1]]]
        assert [len(env.journal(run.run_id)) for run in chain] == [3, 3, 3, 1]
        assert all(run.wake_at is None and run.result is None for run in chain[:-1])
        assert handle.status is RunStatus.CONTINUED
        assert handle.latest().run_id == "chain-continued-3"
        assert handle.custom_status(Progress) == Progress(done=10, total=10)
        assert env.store.runs["chain"].custom_status == Progress(done=3, total=10).model_dump_json()


def test_status_is_stored_while_the_run_waits_and_rederived_cold() -> None:
    """A waiting run's status is in the store; a cold replay derives the same one."""
    with WorkflowEnvironment() as env:
        handle = progress.start(Batch(size=2))
        assert handle.status is RunStatus.RUNNING
        assert handle.custom_status(Progress) == Progress(done=2, total=2)
        env.runtime.close()  # no warm generator: the next tick replays from the journal
        stored = env.store.runs[handle.run_id].custom_status
        env.notify("status-go-2", Approval(approved_by="ann"))
        assert handle.result() == 2
        assert env.store.runs[handle.run_id].custom_status == stored


def test_status_commits_with_the_checkpoint_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that fails takes the status written with it back too."""
    with WorkflowEnvironment() as env:
        original = env.store.save_steps
        calls = {"n": 0}

        def failing(run_id: str, records: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:  # the checkpoint of item-0 (and the claim of item-1)
                raise RuntimeError("the database went away")
            original(run_id, records)

        monkeypatch.setattr(env.store, "save_steps", failing)
        with pytest.raises(RuntimeError, match="went away"):
            progress.start(Batch(size=2), run_id="atomic-status")
        run = env.store.runs["atomic-status"]
        assert run.custom_status == Progress(done=0, total=2).model_dump_json()
        assert [r.status.value for r in env.journal("atomic-status")] == ["pending"]
        monkeypatch.setattr(env.store, "save_steps", original)  # the database is back
        env.runtime.close()
        env.advance(600)  # the lost checkpoint: the step runs again once its lease lapses
        run = env.store.runs["atomic-status"]
        assert run.custom_status == Progress(done=2, total=2).model_dump_json()


def test_the_tick_that_continues_is_one_transaction_and_idempotent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash before its commit leaves neither the end nor the new run; the retry makes one."""
    with WorkflowEnvironment() as env:
        original = env.store.save_run

        def crash_on_end(run: RunState) -> None:
            if run.status is RunStatus.CONTINUED:
                raise RuntimeError("killed after creating the next run")
            original(run)

        monkeypatch.setattr(env.store, "save_run", crash_on_end)  # a crash mid-commit
        with pytest.raises(RuntimeError, match="killed"):
            counter.start(Count(start=0, stop=5), run_id="crashy")
        assert "crashy-continued-1" not in env.store.runs
        assert env.store.runs["crashy"].status is RunStatus.RUNNING
        monkeypatch.setattr(env.store, "save_run", original)  # restarted
        env.runtime.close()
        env.clock.advance(600)  # past the lease of the step whose checkpoint was lost
        for _ in range(3):  # the retried tick, and duplicate deliveries after it
            env.runtime.tick("crashy")
        chain = _chain(env.store, "crashy")
        assert [run.run_id for run in chain] == ["crashy", "crashy-continued-1"]
        assert counter.start(Count(start=0, stop=5), run_id="crashy").result() == 20
        assert sorted(r for r in env.store.runs if r.startswith("crashy")) == [
            "crashy",
            "crashy-continued-1",
        ]


def test_a_child_that_continues_settles_its_parent_when_the_chain_ends() -> None:
    """The parent's invoke step follows the child's chain to its result."""
    with WorkflowEnvironment() as env:
        handle = parent.start(Count(start=0, stop=7), run_id="p")
        assert handle.result() == f"child total {_expected(Count(start=0, stop=7))}"
        invoke = env.journal("p")[0]
        assert invoke.key == "p-0-continued-2"
        assert env.store.runs["p-0-continued-2"].parent_run_id == "p"


def test_cancel_of_an_old_id_reaches_the_live_run() -> None:
    """Cancelling the first run's id cancels the chain's live run."""
    with WorkflowEnvironment() as env:
        handle = listener.start(Count(start=0, stop=99), run_id="listen")
        env.notify("listener-99", Approval(approved_by="a"))
        env.notify("listener-99", Approval(approved_by="b"))
        assert handle.latest().run_id == "listen-continued-2"
        assert handle.custom_status(Progress) == Progress(done=2, total=99)
        handle.cancel()
        assert env.store.runs["listen-continued-2"].status is RunStatus.CANCELLED
        assert env.store.runs["listen"].status is RunStatus.CONTINUED
        with pytest.raises(RunCancelled, match="listen-continued-2"):
            handle.result()


def test_cancelling_a_parent_cancels_its_childs_live_run() -> None:
    """The parent's invoke step points at the chain's live run, so cancel reaches it."""
    with WorkflowEnvironment() as env:
        handle = listener_parent.start(Count(start=0, stop=98), run_id="lp")
        env.notify("listener-98", Approval(approved_by="a"))
        assert env.journal("lp")[0].key == "lp-0-continued-1"
        handle.cancel()
        assert env.store.runs["lp-0-continued-1"].status is RunStatus.CANCELLED
        assert env.store.runs["lp"].status is RunStatus.CANCELLED


def test_a_taken_successor_id_fails_the_run_clearly() -> None:
    """A run already stored under the next id (started by hand) is never adopted."""
    with WorkflowEnvironment() as env:
        progress.start(Batch(size=0), run_id="taken-continued-1")
        handle = counter.start(Count(start=0, stop=5), run_id="taken")
        assert handle.status is RunStatus.FAILED
        error = handle.state().error
        assert error is not None and "is taken by another run" in error.message
        assert env.store.runs["taken-continued-1"].workflow == "status-progress"


def test_successor_ids_stay_within_the_id_limit() -> None:
    """A 255-character first id is cut and hashed; later generations keep its root."""
    run = RunState(run_id="x" * 255, workflow="w", payload="{}")
    first = T.next_run_id(run)
    assert len(first) <= 255 and first.endswith("-continued-1")
    again = T.next_run_id(run)
    assert first == again
    other = T.next_run_id(dataclasses.replace(run, run_id="x" * 254 + "y"))
    assert other != first
    later = dataclasses.replace(run, run_id=first, generation=1)
    second = T.next_run_id(later)
    assert second == first.removesuffix("1") + "2"
    deep = dataclasses.replace(
        run, run_id=first.removesuffix("1") + "999999998", generation=999999998
    )
    assert len(T.next_run_id(deep)) <= 255
    assert T.next_run_id(RunState(run_id="r", workflow="w", payload="{}")) == "r-continued-1"


def test_check_resumable_compares_the_chains_end() -> None:
    """Crashed anywhere in its first run, the chain still ends with the same result."""
    report = check_resumable(counter, Count(start=0, stop=5))
    assert report.status is RunStatus.COMPLETED and report.result == 20
    assert report.restarts == 4  # the first run's 3 records: resumed after 0 to 3 of them


def test_a_cancel_that_arrives_as_the_run_continues_reaches_the_new_run() -> None:
    """Cancel asked for while the last step ran: the run continues, and the new run is cancelled."""
    with WorkflowEnvironment() as env:

        def cancel_meanwhile(i: int) -> int:
            run = env.store.runs["late-cancel"]
            env.store.runs["late-cancel"] = dataclasses.replace(run, cancel_requested=True)
            return 2 * i

        env.stub("add-2", cancel_meanwhile)
        handle = counter.start(Count(start=0, stop=9), run_id="late-cancel")
        assert env.store.runs["late-cancel"].status is RunStatus.CONTINUED
        assert env.store.runs["late-cancel"].cancel_requested is False
        assert env.store.runs["late-cancel-continued-1"].status is RunStatus.CANCELLED
        assert env.journal("late-cancel-continued-1")[0].error is not None
        with pytest.raises(RunCancelled):
            handle.result()


@pytest.mark.no_invariant
def test_the_invariant_checks_the_links_of_a_continued_run() -> None:
    """A continued run must name a run that continues it, one generation later."""
    from tests._invariant import check_memory_store

    store = MemoryStore()
    ended = RunState(
        run_id="a", workflow="w", payload="{}", status=RunStatus.CONTINUED, continued_as="b"
    )
    store.runs["a"] = ended
    assert [p.split(" is ")[0] for p in check_memory_store(store)] == ["run a"]
    then = EPOCH
    nxt = RunState(
        run_id="b", workflow="w", payload="{}", continued_from="a", generation=1, wake_at=then
    )
    store.runs["b"] = nxt
    assert check_memory_store(store) == []
    store.runs["b"] = dataclasses.replace(nxt, generation=2)
    assert len(check_memory_store(store)) == 1
    store.runs["b"] = nxt
    store.runs["a"] = dataclasses.replace(ended, wake_at=then)
    assert len(check_memory_store(store)) == 1


@workflow(name="continue-who-am-i")
def who_am_i(ctx: Context, count: Count) -> Flow[str]:
    yield from ()
    if count.start == 0:
        return (yield from ctx.continue_as_new(who_am_i, Count(start=1, stop=1)))
    return f"{ctx.run_id} continues {ctx.info.continued_from}"


def test_a_new_run_knows_the_run_it_continues() -> None:
    """``ctx.info.continued_from`` names the previous run of the chain."""
    with WorkflowEnvironment():
        handle = who_am_i.start(Count(start=0, stop=1), run_id="me")
        assert handle.result() == "me-continued-1 continues me"
