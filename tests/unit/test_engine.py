"""The pure replay engine: decisions, replay, determinism checks, failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hookflow_gen import (
    Context,
    ErrorInfo,
    Flow,
    NonDeterminismError,
    PayloadValidationError,
    StepFailed,
    StepRecord,
    StepStatus,
    WorkflowDefinitionError,
    workflow,
)
from hookflow_gen._context import RunInfo
from hookflow_gen._engine import Completed, Failed, Replay, Waiting

from .models import Approval, Charge, Order, Receipt, charge_card, double, refund

START = datetime(2026, 1, 1, tzinfo=UTC)
INFO = RunInfo(run_id="run-1", workflow_name="w", started_at=START)


def payload(order_id: int = 7) -> str:
    return Order(order_id=order_id).model_dump_json()


def done(
    position: int, kind: str, name: str, result: str, at: datetime | None = None
) -> StepRecord:
    return StepRecord(position=position, kind=kind, name=name, result=result, completed_at=at)


def failed(position: int, kind: str, name: str, exc: BaseException) -> StepRecord:
    return StepRecord(
        position=position,
        kind=kind,
        name=name,
        status=StepStatus.FAILED,
        error=ErrorInfo.from_exception(exc),
        attempts=3,
    )


@workflow
def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    return Receipt(order_id=order.order_id, charge_id=charge.charge_id)


def test_fresh_run_waits_on_the_first_step() -> None:
    """With an empty journal the first decision is to run the first step."""
    decision = Replay(checkout, payload(), INFO).advance()
    assert isinstance(decision, Waiting)
    (pending,) = decision.pending
    assert (pending.position, pending.step.kind, pending.step.name) == (0, "run", "charge")
    assert pending.record is None
    assert pending.step.args == (7, 100)  # type: ignore[union-attr]


def test_full_journal_completes_with_the_typed_result() -> None:
    """Replaying every recorded step completes the run with its result JSON."""
    journal = [
        done(0, "run", "charge", '{"charge_id":"ch_1"}'),
        done(1, "sleep", "cool-off", "null"),
    ]
    decision = Replay(checkout, payload(), INFO, journal).advance()
    assert isinstance(decision, Completed)
    assert decision.value == Receipt(order_id=7, charge_id="ch_1")
    assert decision.result == '{"order_id":7,"charge_id":"ch_1"}'


def test_pending_record_is_reported_with_the_step() -> None:
    """A step recorded as pending is returned with its record, not re-begun."""
    pending_sleep = StepRecord(1, "sleep", "cool-off", status=StepStatus.PENDING)
    journal = [done(0, "run", "charge", '{"charge_id":"c"}'), pending_sleep]
    decision = Replay(checkout, payload(), INFO, journal).advance()
    assert isinstance(decision, Waiting)
    assert decision.pending[0].record == pending_sleep


def test_settle_then_advance_continues_without_replay() -> None:
    """After settle() the same generator continues; earlier steps are not re-run."""
    seen: list[int] = []

    @workflow
    def counted(ctx: Context, order: Order) -> Flow[int]:
        seen.append(0)
        a = yield from ctx.run("a", double, 1)
        seen.append(1)
        b = yield from ctx.run("b", double, a)
        return b

    replay = Replay(counted, payload(), INFO)
    assert isinstance(replay.advance(), Waiting)
    replay.settle(done(0, "run", "a", "2"))
    assert isinstance(replay.advance(), Waiting)
    replay.settle(done(1, "run", "b", "4"))
    decision = replay.advance()
    assert isinstance(decision, Completed) and decision.value == 4
    assert seen == [0, 1]


def test_replayed_result_is_decoded_like_a_fresh_one() -> None:
    """A replayed model result comes back as the model, not a dict, with types coerced."""
    got: list[object] = []

    @workflow
    def keep(ctx: Context, order: Order) -> Flow[None]:
        charge = yield from ctx.run("charge", charge_card, 1, 2)
        got.append(charge)

    record = done(0, "run", "charge", '{"charge_id":"c","at":"2026-01-01T00:00:00Z"}')
    assert isinstance(Replay(keep, payload(), INFO, [record]).advance(), Completed)
    assert got == [Charge(charge_id="c", at=START)]
    assert isinstance(got[0], Charge)


def test_kind_mismatch_names_both_sides() -> None:
    """A different step kind at a recorded position raises NonDeterminismError with details."""
    journal = [done(0, "sleep", "charge", "null")]
    with pytest.raises(NonDeterminismError) as info:
        Replay(checkout, payload(), INFO, journal).advance()
    err = info.value
    assert (err.position, err.recorded, err.current) == (0, "sleep 'charge'", "run 'charge'")
    assert (
        "position 0 was sleep 'charge' in the journal, now the workflow asks for run 'charge'"
        in str(err)
    )


def test_name_mismatch_is_nondeterministic() -> None:
    """A renamed step at a recorded position is a NonDeterminismError."""
    journal = [done(0, "run", "charge", '{"charge_id":"c"}'), done(1, "sleep", "nap", "null")]
    with pytest.raises(NonDeterminismError, match="position 1 was sleep 'nap'.*sleep 'cool-off'"):
        Replay(checkout, payload(), INFO, journal).advance()


def test_unconsumed_records_are_nondeterministic() -> None:
    """A workflow that ends before using every record is non-deterministic."""
    journal = [
        done(0, "run", "charge", '{"charge_id":"c"}'),
        done(1, "sleep", "cool-off", "null"),
        done(2, "run", "extra", "1"),
    ]
    with pytest.raises(NonDeterminismError, match="position 2.*run 'extra'.*no longer reaches"):
        Replay(checkout, payload(), INFO, journal).advance()


def test_changed_result_type_is_reported_as_nondeterminism() -> None:
    """A recorded result that no longer fits the declared type is reported clearly."""
    journal = [done(0, "run", "charge", '{"wrong": 1}')]
    with pytest.raises(NonDeterminismError, match="no longer fits"):
        Replay(checkout, payload(), INFO, journal).advance()


def test_failed_step_is_thrown_in_and_can_be_compensated() -> None:
    """A failed step raises StepFailed at its yield; the workflow compensates (saga)."""
    caught: list[StepFailed] = []

    @workflow
    def saga(ctx: Context, order: Order) -> Flow[str]:
        charge = yield from ctx.run("charge", charge_card, 1, 2)
        try:
            yield from ctx.run("ship", double, 3)
        except StepFailed as exc:
            caught.append(exc)
            return (yield from ctx.run("refund", refund, charge.charge_id))
        return "shipped"

    journal = [
        done(0, "run", "charge", '{"charge_id":"c"}'),
        failed(1, "run", "ship", ValueError("no stock")),
    ]
    replay = Replay(saga, payload(), INFO, journal)
    decision = replay.advance()
    assert isinstance(decision, Waiting) and decision.pending[0].step.name == "refund"
    (exc,) = caught
    assert (exc.step_name, exc.position, exc.attempts) == ("ship", 1, 3)
    assert (exc.error_type, exc.message) == ("builtins.ValueError", "no stock")
    assert exc.caused_by(ValueError) and exc.caused_by(Exception) and not exc.caused_by(KeyError)
    replay.settle(done(2, "run", "refund", '"refunded c"'))
    assert replay.advance() == Completed('"refunded c"', "refunded c")


def test_uncaught_step_failure_fails_the_run() -> None:
    """A StepFailed the workflow does not catch fails the run with that error."""
    journal = [failed(0, "run", "charge", RuntimeError("card declined"))]
    decision = Replay(checkout, payload(), INFO, journal).advance()
    assert isinstance(decision, Failed)
    assert decision.error.type == "hookflow_gen.exceptions.StepFailed"
    assert "card declined" in decision.error.message


def test_workflow_exception_fails_the_run() -> None:
    """An exception raised by workflow code is recorded as the run's error."""

    @workflow
    def boom(ctx: Context, order: Order) -> Flow[None]:
        yield from ctx.run("a", double, 1)
        raise KeyError("missing")

    decision = Replay(boom, payload(), INFO, [done(0, "run", "a", "2")]).advance()
    assert isinstance(decision, Failed)
    assert decision.error.type == "builtins.KeyError"
    assert decision.error.traceback is not None and "raise KeyError" in decision.error.traceback


def test_gather_waits_for_all_branches_and_returns_them_in_order() -> None:
    """A gather reports its unsettled branches and sends the tuple once all settle."""

    @workflow
    def fan(ctx: Context, order: Order) -> Flow[tuple[int, int, int]]:
        a, b, c = yield from ctx.gather(
            ctx.run("a", double, 1), ctx.run("b", double, 2), ctx.run("c", double, 3)
        )
        return (a, b, c)

    replay = Replay(fan, payload(), INFO, [done(1, "run", "b", "4")])
    decision = replay.advance()
    assert isinstance(decision, Waiting)
    assert [p.position for p in decision.pending] == [0, 2]
    assert decision.request.kind == "gather"
    replay.settle(done(0, "run", "a", "2"))
    assert isinstance(replay.advance(), Waiting)
    replay.settle(done(2, "run", "c", "6"))
    assert replay.advance() == Completed("[2,4,6]", (2, 4, 6))


def test_gather_throws_the_first_failed_branch() -> None:
    """When branches fail, the first failed one in argument order is thrown in."""

    @workflow
    def fan_fail(ctx: Context, order: Order) -> Flow[str]:
        try:
            yield from ctx.gather(
                ctx.run("a", double, 1), ctx.run("b", double, 2), ctx.run("c", double, 3)
            )
        except StepFailed as exc:
            return exc.step_name
        return "none"

    journal = [
        done(0, "run", "a", "2"),
        failed(1, "run", "b", ValueError("b")),
        failed(2, "run", "c", ValueError("c")),
    ]
    assert Replay(fan_fail, payload(), INFO, journal).advance() == Completed('"b"', "b")


def test_gather_branch_mismatch_is_nondeterministic() -> None:
    """A gather branch whose record differs raises NonDeterminismError at its position."""

    @workflow
    def fan_mismatch(ctx: Context, order: Order) -> Flow[None]:
        yield from ctx.gather(ctx.run("a", double, 1), ctx.run("b", double, 2))

    with pytest.raises(NonDeterminismError, match="position 1"):
        Replay(fan_mismatch, payload(), INFO, [done(1, "run", "x", "1")]).advance()


def test_yielding_a_non_step_throws_a_clear_error_into_the_workflow() -> None:
    """Yielding something that is not a step raises WorkflowDefinitionError at that yield."""

    @workflow
    def bad(ctx: Context, order: Order) -> Flow[str]:
        try:
            yield 42  # type: ignore[misc]  # the mistake under test
        except WorkflowDefinitionError as exc:
            return str(exc)
        return "no error"

    decision = Replay(bad, payload(), INFO).advance()
    assert isinstance(decision, Completed)
    assert "yielded 42" in decision.value and "yield from ctx.run" in decision.value


def test_classic_plain_yield_works_at_run_time() -> None:
    """``x = yield ctx.run(...)`` (no ``from``) receives the decoded result too."""

    @workflow
    def classic(ctx: Context, order: Order) -> Flow[str]:
        charge = yield ctx.run("charge", charge_card, 1, 2)
        assert isinstance(charge, Charge)
        return charge.charge_id

    journal = [done(0, "run", "charge", '{"charge_id":"c9"}')]
    assert Replay(classic, payload(), INFO, journal).advance() == Completed('"c9"', "c9")


def test_invalid_payload_is_rejected_before_running() -> None:
    """A payload that fails the workflow's model raises PayloadValidationError at once."""
    with pytest.raises(PayloadValidationError, match="payload of workflow 'checkout'"):
        Replay(checkout, '{"order_id": "seven"}', INFO)


def test_result_not_matching_the_declared_type_fails_the_run() -> None:
    """A workflow returning the wrong type fails with a clear validation error."""

    @workflow
    def wrong(ctx: Context, order: Order) -> Flow[int]:
        yield from ctx.run("a", double, 1)
        return "not an int"  # type: ignore[return-value]  # the mistake under test

    decision = Replay(wrong, payload(), INFO, [done(0, "run", "a", "2")]).advance()
    assert isinstance(decision, Failed)
    assert decision.error.type == "hookflow_gen.exceptions.PayloadValidationError"
    assert "result of workflow 'wrong'" in decision.error.message


def test_clock_and_uuid_are_deterministic_across_replays() -> None:
    """ctx.now() follows recorded completion times; uuid4() repeats on every replay."""
    seen: list[tuple[datetime, str]] = []

    @workflow
    def timed(ctx: Context, order: Order) -> Flow[None]:
        seen.append((ctx.now(), str(ctx.uuid4())))
        yield from ctx.run("a", double, 1)
        seen.append((ctx.now(), str(ctx.uuid4())))

    later = START + timedelta(minutes=5)
    journal = [done(0, "run", "a", "2", at=later)]
    Replay(timed, payload(), INFO, journal).advance()
    first = list(seen)
    seen.clear()
    Replay(timed, payload(), INFO, journal).advance()
    assert seen == first
    assert [t for t, _ in first] == [START, later]
    assert first[0][1] != first[1][1]


def test_is_replaying_is_true_only_while_recorded_steps_replay() -> None:
    """ctx.is_replaying is true before recorded steps are consumed, false after."""
    flags: list[bool] = []

    @workflow
    def watch(ctx: Context, order: Order) -> Flow[None]:
        flags.append(ctx.is_replaying)
        yield from ctx.run("a", double, 1)
        flags.append(ctx.is_replaying)
        yield from ctx.run("b", double, 1)
        flags.append(ctx.is_replaying)

    replay = Replay(watch, payload(), INFO, [done(0, "run", "a", "2")])
    replay.advance()
    replay.settle(done(1, "run", "b", "2"))
    replay.advance()
    assert flags == [True, False, False]


def test_event_with_timeout_sends_none_on_timeout() -> None:
    """An event step with a timeout yields None when its record holds null."""
    got: list[Any] = []

    @workflow
    def wait(ctx: Context, order: Order) -> Flow[None]:
        got.append((yield from ctx.wait_for_event("ok", Approval, key="k", timeout=60)))
        got.append((yield from ctx.wait_for_event("ok2", Approval, key="k", timeout=60)))

    journal = [done(0, "event", "ok", "null"), done(1, "event", "ok2", '{"approved_by":"ann"}')]
    assert isinstance(Replay(wait, payload(), INFO, journal).advance(), Completed)
    assert got == [None, Approval(approved_by="ann")]


def test_close_runs_the_workflow_finally_blocks() -> None:
    """Closing a replay closes its generator, so ``finally`` blocks run (cancellation)."""
    cleaned: list[bool] = []

    @workflow
    def tidy(ctx: Context, order: Order) -> Flow[None]:
        try:
            yield from ctx.sleep("nap", 10)
        finally:
            cleaned.append(True)

    replay = Replay(tidy, payload(), INFO)
    replay.advance()
    replay.discard()
    assert cleaned == [True]


def test_gather_of_one_step_still_returns_a_tuple() -> None:
    """A one-branch gather sends a 1-tuple, never the bare value."""

    @workflow
    def single(ctx: Context, order: Order) -> Flow[tuple[int]]:
        result = yield from ctx.gather(ctx.run("only", double, 2))
        return result

    decision = Replay(single, payload(), INFO, [done(0, "run", "only", "4")]).advance()
    assert decision == Completed("[4]", (4,))
