"""``ctx.race``: the first branch to settle wins, the losers are settled as cancelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hookflow_gen import (
    Context,
    Flow,
    NonDeterminismError,
    RunStatus,
    StepCancelled,
    StepFailed,
    StepRecord,
    StepStatus,
    Winner,
    WorkflowDefinitionError,
    workflow,
)
from hookflow_gen._context import RunInfo
from hookflow_gen._engine import Completed, Replay, Waiting
from hookflow_gen.testing import Stepper, WorkflowEnvironment, replay

from .models import Approval, Order, charge_card, double

START = datetime(2026, 1, 1, tzinfo=UTC)
INFO = RunInfo(run_id="run-1", workflow_name="w", started_at=START)


@workflow
def approval_or_deadline(ctx: Context, order: Order) -> Flow[str]:
    won = yield from ctx.race(
        ctx.wait_for_event("approval", Approval, key=f"order-{order.order_id}"),
        ctx.sleep("deadline", timedelta(days=2)),
    )
    if won.index == 0:
        return f"approved by {won.value.approved_by}"
    return "timed out"


@workflow
def step_or_timer(ctx: Context, order: Order) -> Flow[str]:
    try:
        won = yield from ctx.race(
            ctx.run("quote", double, order.order_id), ctx.sleep("slow", timedelta(minutes=5))
        )
    except StepFailed as failed:
        return f"failed: {failed.message}"
    return f"{won.name}={won.value}"


def test_race_waits_on_every_branch_at_once() -> None:
    """A race asks for all its branches at consecutive positions."""
    execution = Replay(approval_or_deadline, Order(order_id=7).model_dump_json(), INFO)
    decision = execution.advance()
    assert isinstance(decision, Waiting)
    assert [(p.position, p.step.name) for p in decision.pending] == [
        (0, "approval"),
        (1, "deadline"),
    ]


def test_first_settled_branch_wins_and_losers_are_cancelled() -> None:
    """The event settling first resumes the workflow; the pending timer is recorded cancelled."""
    execution = Replay(approval_or_deadline, Order(order_id=7).model_dump_json(), INFO)
    execution.advance()
    execution.settle(
        StepRecord(position=0, kind="event", name="approval", result='{"approved_by": "ann"}')
    )
    decision = execution.advance()
    assert isinstance(decision, Completed)
    assert decision.value == "approved by ann"
    loser, marker = execution.take_writes()
    assert (loser.position, loser.status, loser.name) == (1, StepStatus.FAILED, "deadline")
    assert loser.error is not None and loser.error.type.endswith("StepCancelled")
    assert (marker.position, marker.kind, marker.result) == (2, "race", "0")
    assert execution.take_writes() == []


def test_recorded_winner_is_kept_when_a_loser_settled_later() -> None:
    """On replay the race marker decides, even if a lower branch settled afterwards."""
    journal = [
        StepRecord(position=0, kind="event", name="approval", result='{"approved_by": "ann"}'),
        StepRecord(position=1, kind="sleep", name="deadline", result="null"),
        StepRecord(position=2, kind="race", name="race(approval, deadline)", result="1"),
    ]
    result = replay(approval_or_deadline, Order(order_id=7), journal)
    assert isinstance(result.decision, Completed)
    assert result.decision.value == "timed out"


def test_several_settled_branches_pick_the_first_in_argument_order() -> None:
    """Without a marker, the lowest settled branch wins: the same on every execution."""
    journal = [
        StepRecord(position=0, kind="event", name="approval", result='{"approved_by": "bo"}'),
        StepRecord(position=1, kind="sleep", name="deadline", result="null"),
    ]
    execution = Replay(approval_or_deadline, Order(order_id=7).model_dump_json(), INFO, journal)
    decision = execution.advance()
    assert isinstance(decision, Completed) and decision.value == "approved by bo"
    (marker,) = execution.take_writes()
    assert marker.result == "0"


def test_a_failed_winner_is_thrown_in() -> None:
    """The first branch to settle wins even when it failed: its StepFailed reaches the code."""
    s = Stepper(step_or_timer, Order(order_id=3))
    s.send_branch(0, ValueError("no quote"))
    assert s.result() == "failed: no quote"


def test_stepper_picks_a_winner_by_index() -> None:
    """``send_branch`` settles one branch; its typed value comes back in a Winner."""
    s = Stepper(step_or_timer, Order(order_id=3))
    assert s.step.kind == "race"
    s.send_branch(1)
    assert s.result() == "slow=None"
    kinds = [(r.position, r.kind, r.status) for r in s.history]
    assert kinds == [
        (1, "sleep", StepStatus.COMPLETED),
        (0, "run", StepStatus.FAILED),
        (2, "race", StepStatus.COMPLETED),
    ]
    assert replay(step_or_timer, Order(order_id=3), s.history).finished


def test_stepper_history_replays_the_same_winner() -> None:
    """A Stepper's journal, markers included, replays to the same result."""
    s = Stepper(approval_or_deadline, Order(order_id=1))
    s.send_branch(0, Approval(approved_by="cy"))
    assert s.result() == "approved by cy"
    again = replay(approval_or_deadline, Order(order_id=1), s.history)
    assert isinstance(again.decision, Completed) and again.decision.value == "approved by cy"


def test_changed_branches_are_non_deterministic() -> None:
    """A race whose branches changed since the run recorded it fails loudly."""
    journal = [
        StepRecord(position=0, kind="event", name="approval", result='{"approved_by": "a"}'),
        StepRecord(position=1, kind="run", name="deadline", result="1"),
    ]
    with pytest.raises(NonDeterminismError, match="position 1 was run 'deadline'"):
        replay(approval_or_deadline, Order(order_id=7), journal)


def test_corrupt_winner_marker_is_reported() -> None:
    """A race marker naming a branch that does not exist is a clear determinism error."""
    journal = [
        StepRecord(position=0, kind="event", name="approval", result='{"approved_by": "a"}'),
        StepRecord(position=1, kind="sleep", name="deadline", result="null"),
        StepRecord(position=2, kind="race", name="race(approval, deadline)", result="5"),
    ]
    with pytest.raises(NonDeterminismError, match="not one of its 2 branches"):
        replay(approval_or_deadline, Order(order_id=7), journal)


def test_race_misuse_is_a_definition_error() -> None:
    """An empty race, nested races or gathers, and duplicate names say what is wrong."""
    ctx = Context(INFO)
    with pytest.raises(WorkflowDefinitionError, match="at least one step"):
        ctx.race()
    inner = ctx.race(ctx.sleep("a", 1))
    with pytest.raises(WorkflowDefinitionError, match="do not nest"):
        ctx.race(inner, ctx.sleep("b", 1))
    with pytest.raises(WorkflowDefinitionError, match="do not nest"):
        ctx.gather(inner)
    with pytest.raises(WorkflowDefinitionError, match="do not nest"):
        ctx.race(ctx.gather(ctx.sleep("a", 1)))
    with pytest.raises(WorkflowDefinitionError, match="two branches named 'a'"):
        ctx.race(ctx.sleep("a", 1), ctx.sleep("a", 2))


def test_winner_is_a_plain_value() -> None:
    """A Winner compares by index, name and value."""
    assert Winner(0, "a", 1) == Winner(0, "a", 1)
    assert Winner(0, "a", 1) != Winner(1, "a", 1)


# -- through the runtime --------------------------------------------------------------------


def test_event_beats_the_timer_on_the_runtime() -> None:
    """An event sent before the deadline wins; the timer is cancelled and the run completes."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = approval_or_deadline.start(Order(order_id=7))
        assert handle.status is RunStatus.RUNNING
        assert env.notify("order-7", Approval(approved_by="ann")) == 1
        assert handle.result() == "approved by ann"
        event, timer, marker = env.journal(handle.run_id)
        assert event.status is StepStatus.COMPLETED
        assert timer.status is StepStatus.FAILED and timer.error is not None
        assert timer.error.type == f"{StepCancelled.__module__}.StepCancelled"
        assert (marker.kind, marker.result) == ("race", "0")
        assert replay(approval_or_deadline, Order(order_id=7), env.journal(handle.run_id)).finished


def test_timer_beats_the_event_and_a_late_event_is_not_delivered() -> None:
    """When the deadline passes first the run ends; the cancelled wait no longer takes events."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = approval_or_deadline.start(Order(order_id=8))
        env.advance(timedelta(days=2))
        assert handle.result() == "timed out"
        assert env.notify("order-8", Approval(approved_by="late")) == 0
        assert [r.status for r in env.journal(handle.run_id)] == [
            StepStatus.FAILED,
            StepStatus.COMPLETED,
            StepStatus.COMPLETED,
        ]


def test_step_beats_a_timer_on_the_runtime() -> None:
    """A step that finishes at once wins against a five-minute timer, typed and recorded."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = step_or_timer.start(Order(order_id=21))
        assert handle.result() == "quote=42"
        quote, timer, _ = env.journal(handle.run_id)
        assert (quote.status, timer.status) == (StepStatus.COMPLETED, StepStatus.FAILED)


@workflow
def race_a_child(ctx: Context, order: Order) -> Flow[str]:
    won = yield from ctx.race(
        ctx.invoke("child", approval_or_deadline, order), ctx.sleep("patience", 60)
    )
    return "child" if won.index == 0 else "gave up"


def test_losing_child_run_is_cancelled() -> None:
    """A child workflow that loses a race is cancelled, so it does not run on alone."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = race_a_child.start(Order(order_id=5))
        env.advance(60)
        assert handle.result() == "gave up"
        child = env.store.get_run(f"{handle.run_id}-0")
        assert child is not None and child.status is RunStatus.CANCELLED


@workflow
def race_then_more(ctx: Context, order: Order) -> Flow[list[int]]:
    first = yield from ctx.race(*[ctx.run(f"q{i}", double, i) for i in range(3)])
    rest = yield from ctx.run("after", charge_card, first.value, 1)
    return [first.index, first.value, len(rest.charge_id)]


def test_a_race_over_a_list_continues_after_it() -> None:
    """A race over a list of steps is typed ``Winner[int, T]``; the workflow goes on after it."""
    with WorkflowEnvironment() as env:
        assert env.run(race_then_more, Order(order_id=1)) == [0, 0, len("ch_0_1")]


@workflow
def losers_left_running(ctx: Context, order: Order) -> Flow[str]:
    won = yield from ctx.race(
        ctx.sleep("short", 10),
        ctx.wait_for_event("vote", Approval, key=f"vote-{order.order_id}"),
        cancel_losers=False,
    )
    yield from ctx.sleep("tail", 100)
    return won.name


def test_losers_can_be_left_to_finish() -> None:
    """With cancel_losers=False a losing event wait stays open and still takes its event."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = losers_left_running.start(Order(order_id=4))
        env.advance(10)
        assert handle.status is RunStatus.RUNNING
        journal = env.journal(handle.run_id)
        assert journal[1].status is StepStatus.PENDING  # the losing event wait, still open
        assert env.notify("vote-4", Approval(approved_by="late")) == 1
        assert env.journal(handle.run_id)[1].status is StepStatus.COMPLETED
        env.advance(100)
        assert handle.result() == "short"
        assert replay(losers_left_running, Order(order_id=4), env.journal(handle.run_id)).finished


def test_background_losers_are_not_branches_of_the_next_step() -> None:
    """After a race that leaves its losers running, the Stepper sees only the next step."""
    s = Stepper(losers_left_running, Order(order_id=4))
    s.send_branch(0)
    assert s.step.name == "tail"
    s.send()
    assert s.result() == "short"
