"""``ctx.patched``: new runs take the new path, runs already past the point the old one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hookflow_gen import (
    Context,
    Flow,
    NonDeterminismError,
    RunStatus,
    StepRecord,
    StepStatus,
    Workflow,
    WorkflowDefinitionError,
    workflow,
)
from hookflow_gen._context import RunInfo
from hookflow_gen._engine import Replay, Waiting
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]  # a deploy
from hookflow_gen.testing import EPOCH, Stepper, WorkflowEnvironment, replay

from .models import Approval, Charge, Order, charge_card


def charge_v2(order_id: int, amount_cents: int) -> Charge:
    return Charge(charge_id=f"v2_{order_id}_{amount_cents}")


def shipped(charge: Charge, approval: Approval) -> str:
    return f"{charge.charge_id} approved by {approval.approved_by}"


def old_code(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    approval = yield from ctx.wait_for_event("ok", Approval, key=f"patch-{order.order_id}")
    return shipped(charge, approval)


def new_code(ctx: Context, order: Order) -> Flow[str]:
    if ctx.patched("charge-v2"):
        charge = yield from ctx.run("charge-v2", charge_v2, order.order_id, order.amount_cents)
    else:
        charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    approval = yield from ctx.wait_for_event("ok", Approval, key=f"patch-{order.order_id}")
    return shipped(charge, approval)


def cleaned_up_code(ctx: Context, order: Order) -> Flow[str]:
    ctx.deprecate_patch("charge-v2")
    charge = yield from ctx.run("charge-v2", charge_v2, order.order_id, order.amount_cents)
    approval = yield from ctx.wait_for_event("ok", Approval, key=f"patch-{order.order_id}")
    return shipped(charge, approval)


NAME = "patched-checkout"
OLD = Workflow(old_code, name=NAME)
NEW = Workflow(new_code, name=NAME)
CLEANED = Workflow(cleaned_up_code, name=NAME)


@pytest.fixture
def deployed() -> Iterator[dict[str, Workflow[Any, Any]]]:
    """The registry entry for the workflow name, swapped the way a deploy swaps code."""
    _registry[NAME] = OLD
    try:
        yield _registry
    finally:
        _registry.pop(NAME, None)


def test_a_new_run_takes_the_new_path_and_records_a_marker() -> None:
    """With an empty journal ``patched`` is True, recorded as a ``patch`` record."""
    s = Stepper(NEW, Order(order_id=1))
    assert s.step.name == "charge-v2"
    s.send(Charge(charge_id="c")).send(Approval(approved_by="ann"))
    assert s.result() == "c approved by ann"
    marker = s.history[0]
    assert (marker.position, marker.kind, marker.name) == (0, "patch", "charge-v2")
    assert replay(NEW, Order(order_id=1), s.history).finished


def test_a_run_past_the_point_replays_down_the_old_path() -> None:
    """A journal recorded by the old code replays under the new code, unchanged."""
    old = Stepper(OLD, Order(order_id=2))
    old.send(Charge(charge_id="old")).send(Approval(approved_by="bo"))
    result = replay(NEW, Order(order_id=2), old.history)
    assert result.finished and getattr(result.decision, "value", None) == "old approved by bo"


def test_a_run_waiting_at_the_point_takes_the_old_path() -> None:
    """A run whose pending step is the old one stays on the old path."""
    pending = StepRecord(position=0, kind="run", name="charge", status=StepStatus.PENDING)
    info = RunInfo(run_id="r", workflow_name=NAME, started_at=EPOCH)
    execution = Replay(NEW, Order(order_id=3).model_dump_json(), info, [pending])
    decision = execution.advance()
    assert isinstance(decision, Waiting) and decision.request.name == "charge"
    assert execution.take_writes() == []


def test_deprecate_patch_replays_marked_runs_and_marks_no_new_ones() -> None:
    """After the cleanup, runs with the marker still replay; new runs record none."""
    new = Stepper(NEW, Order(order_id=4))
    new.send(Charge(charge_id="n")).send(Approval(approved_by="cy"))
    assert replay(CLEANED, Order(order_id=4), new.history).finished
    fresh = Stepper(CLEANED, Order(order_id=4))
    fresh.send(Charge(charge_id="f")).send(Approval(approved_by="di"))
    assert [r.kind for r in fresh.history] == ["run", "event"]


def test_removing_patched_too_early_is_a_determinism_error() -> None:
    """Dropping ``patched`` while marked runs exist is reported at the marker."""
    new = Stepper(NEW, Order(order_id=5))
    new.send(Charge(charge_id="n"))

    def bare(ctx: Context, order: Order) -> Flow[str]:
        charge = yield from ctx.run("charge-v2", charge_v2, order.order_id, order.amount_cents)
        return charge.charge_id

    with pytest.raises(NonDeterminismError, match="position 0 was patch 'charge-v2'"):
        replay(Workflow(bare, name=NAME), Order(order_id=5), new.history)


def test_patch_id_must_be_a_non_empty_string() -> None:
    """An empty patch id is a definition error."""
    ctx = Context(RunInfo(run_id="r", workflow_name="w", started_at=EPOCH))
    assert ctx.patched("x") is True  # outside the engine: a new run
    with pytest.raises(WorkflowDefinitionError, match="patch id"):
        ctx.patched("")


def test_a_deploy_in_flight_on_the_runtime(deployed: dict[str, Workflow[Any, Any]]) -> None:
    """An old run finishes on the old path after the new code is deployed; new runs go new."""
    with WorkflowEnvironment() as env:
        old_run = OLD.start(Order(order_id=6))
        assert old_run.status is RunStatus.RUNNING
        deployed[NAME] = NEW  # the deploy
        env.notify("patch-6", Approval(approved_by="eve"))
        assert old_run.result() == "ch_6_100 approved by eve"
        new_run = NEW.start(Order(order_id=7))
        env.notify("patch-7", Approval(approved_by="fay"))
        assert new_run.result() == "v2_7_100 approved by fay"
        assert [r.kind for r in env.journal(new_run.run_id)] == ["patch", "run", "event"]
        assert [r.kind for r in env.journal(old_run.run_id)] == ["run", "event"]
        for run in (old_run, new_run):
            payload = run.state().payload
            assert replay(NEW, payload_json=payload, journal=env.journal(run.run_id)).finished


@workflow(name="patched-warm")
def patched_late(ctx: Context, order: Order) -> Flow[list[bool]]:
    first = ctx.patched("a")
    yield from ctx.sleep("nap", 5)
    second = ctx.patched("b")
    return [first, second]


def test_markers_survive_a_cold_replay() -> None:
    """Patch markers recorded at different wake-ups are stored and read back."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = patched_late.start(Order(order_id=1))
        env.runtime.close()  # drop the warm generator: the next wake-up replays the store
        env.advance(5)
        assert handle.result() == [True, True]
        assert [(r.kind, r.name) for r in env.journal(handle.run_id)] == [
            ("patch", "a"),
            ("sleep", "nap"),
            ("patch", "b"),
        ]
