"""The runtime on the in-memory store: retries, events, children, leases, cancel."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from hookflow_gen import (
    Context,
    ErrorInfo,
    Flow,
    NonRetryableError,
    PayloadValidationError,
    RetryAfter,
    RetryPolicy,
    RunCancelled,
    RunStatus,
    StepFailed,
    StepStatus,
    WorkflowFailed,
    cancel,
    current_step,
    notify,
    workflow,
)
from hookflow_gen._runtime import Runtime, call_response
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import MemoryStore
from hookflow_gen.exceptions import UnknownRunError
from hookflow_gen.testing import EPOCH, FakeClock, WorkflowEnvironment

from .models import Approval, Charge, Order, charge_card, double

FAST = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=10))
calls: dict[str, int] = {}


def flaky(name: str, failures: int) -> str:
    calls[name] = calls.get(name, 0) + 1
    if calls[name] <= failures:
        raise ConnectionError(f"{name} attempt {calls[name]} failed")
    return f"{name} ok after {calls[name]}"


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@workflow(retry=FAST)
def unit_retrying(ctx: Context, order: Order) -> Flow[str]:
    try:
        return (yield from ctx.run("flaky", flaky, f"flaky-{order.order_id}", order.amount_cents))
    except StepFailed as exc:
        return f"gave up after {exc.attempts}: {exc.message}"


def test_failing_step_is_retried_with_backoff_on_the_clock() -> None:
    """A step that fails twice succeeds on attempt 3, after 10 s and 20 s back-offs."""
    with WorkflowEnvironment() as env:
        handle = unit_retrying.start(Order(order_id=1, amount_cents=2))
        assert handle.result() == "flaky-1 ok after 3"
        (record,) = env.journal(handle.run_id)
        assert record.attempts == 3
        assert record.completed_at == EPOCH + timedelta(seconds=30)


def test_exhausted_retries_throw_step_failed_into_the_workflow() -> None:
    """After maximum_attempts the workflow catches StepFailed with the last error."""
    with WorkflowEnvironment():
        handle = unit_retrying.start(Order(order_id=2, amount_cents=5))
        assert handle.result() == "gave up after 3: flaky-2 attempt 3 failed"
        assert calls == {"flaky-2": 3}


def wait_then_work(name: str) -> str:
    calls[name] = calls.get(name, 0) + 1
    if calls[name] == 1:
        raise RetryAfter(timedelta(minutes=7), "rate limited")
    return "done"


def refuse(name: str) -> str:
    calls[name] = calls.get(name, 0) + 1
    raise NonRetryableError("card reported stolen")


def wrong_type(x: int) -> int:
    return "not an int"  # type: ignore[return-value]  # the mistake under test


@workflow
def steering(ctx: Context, order: Order) -> Flow[list[str]]:
    out: list[str] = []
    out.append((yield from ctx.run("later", wait_then_work, "later")))
    out.append(str(ctx.now() - ctx.info.started_at))
    for request in (ctx.run("refuse", refuse, "refuse"), ctx.run("typed", wrong_type, 1)):
        try:
            yield from request
        except StepFailed as exc:
            out.append(f"{exc.step_name}:{exc.attempts}:{exc.error_type}")
    return out


def test_retry_after_non_retryable_and_bad_results() -> None:
    """RetryAfter sets the delay; NonRetryableError and a mistyped result fail at once."""
    with WorkflowEnvironment():
        result = steering.start(Order(order_id=3)).result()
    assert result == [
        "done",
        "0:07:00",
        "refuse:1:hookflow_gen.exceptions.NonRetryableError",
        "typed:1:hookflow_gen._runtime._execute.Fatal",
    ]


async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


def slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@workflow(retry=RetryPolicy(maximum_attempts=1))
def timeouts(ctx: Context, order: Order) -> Flow[list[str]]:
    out: list[str] = []
    out.append((yield from ctx.run("async-ok", slow_async, 0)))
    for name, fn in (("async-slow", slow_async), ("sync-slow", slow_sync)):
        try:
            yield from ctx.run(name, fn, 0.5).options(timeout=0.05)
        except StepFailed as exc:
            out.append(f"{name}:{exc.error_type}")
    return out


def test_async_steps_run_and_timeouts_fail_attempts() -> None:
    """async def steps run; an attempt over its timeout fails with TimeoutError."""
    with WorkflowEnvironment():
        assert timeouts.start(Order(order_id=4)).result() == [
            "finished",
            "async-slow:builtins.TimeoutError",
            "sync-slow:builtins.TimeoutError",
        ]


@workflow
def approval_flow(ctx: Context, order: Order) -> Flow[str]:
    approval = yield from ctx.wait_for_event("approval", Approval, key=f"order-{order.order_id}")
    late = yield from ctx.wait_for_event(
        "second", Approval, key=f"second-{order.order_id}", timeout=timedelta(hours=1)
    )
    return f"{approval.approved_by}/{late.approved_by if late else 'timed out'}"


def test_events_wake_waiting_runs_and_timeouts_send_none() -> None:
    """notify delivers to the waiting run; a timed-out wait returns None."""
    with WorkflowEnvironment() as env:
        handle = approval_flow.start(Order(order_id=5))
        assert handle.status is RunStatus.RUNNING
        assert notify("order-5", Approval(approved_by="ann")) == 1
        assert handle.result() == "ann/timed out"
        assert env.clock.now() == EPOCH + timedelta(hours=1)


def test_event_sent_before_the_wait_is_buffered() -> None:
    """An event sent while no run waits is kept and delivered when a run waits."""
    with WorkflowEnvironment(auto_advance=False) as env:
        assert notify("order-6", {"approved_by": "early"}) == 0
        assert env.notify("second-6", Approval(approved_by="bob")) == 0
        handle = approval_flow.start(Order(order_id=6))
        assert handle.result() == "early/bob"


def test_invalid_event_is_refused_and_changes_nothing() -> None:
    """A payload failing the waiting step's model raises and leaves the run waiting."""
    with WorkflowEnvironment() as env:
        handle = approval_flow.start(Order(order_id=7))
        before = env.journal(handle.run_id)
        with pytest.raises(PayloadValidationError, match="event for key 'order-7'"):
            notify("order-7", {"approved_by": 12})
        assert env.journal(handle.run_id) == before
        assert env.store.events == {}
        notify("order-7", {"approved_by": "fixed"})
        assert handle.result() == "fixed/timed out"


@workflow
def child_flow(ctx: Context, order: Order) -> Flow[Charge]:
    if order.amount_cents < 0:
        raise ValueError("negative amount")
    return (yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents))


@workflow
def parent_flow(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.invoke("child", child_flow, order)
    try:
        yield from ctx.invoke("bad-child", child_flow, Order(order_id=0, amount_cents=-1))
    except StepFailed as exc:
        return f"{charge.charge_id} then {exc.message}"
    return "unexpected"


def test_child_workflows_return_typed_results_and_failures() -> None:
    """invoke returns the child's typed result; a failed child throws StepFailed."""
    with WorkflowEnvironment() as env:
        handle = parent_flow.start(Order(order_id=8, amount_cents=3))
        assert handle.result() == "ch_8_3 then negative amount"
        child = env.store.get_run(f"{handle.run_id}-0")
        assert child is not None and child.parent_run_id == handle.run_id
        assert child.status is RunStatus.COMPLETED


@workflow
def unit_sleepy(ctx: Context, order: Order) -> Flow[str]:
    yield from ctx.invoke("child", approval_flow, order)
    return "woke"


def test_cancel_stops_the_run_and_its_children() -> None:
    """cancel() ends a run and its waiting child; result() then raises RunCancelled."""
    with WorkflowEnvironment() as env:
        handle = unit_sleepy.start(Order(order_id=9))
        cancel(handle.run_id)
        assert handle.status is RunStatus.CANCELLED
        child = env.store.get_run(f"{handle.run_id}-0")
        assert child is not None and child.status is RunStatus.CANCELLED
        with pytest.raises(RunCancelled):
            handle.result()
        with pytest.raises(UnknownRunError):
            cancel("no-such-run")


failures_seen: list[tuple[str, Any, ErrorInfo]] = []


@workflow(on_failure=lambda run_id, payload, error: failures_seen.append((run_id, payload, error)))
def unit_doomed(ctx: Context, order: Order) -> Flow[None]:
    yield from ctx.run("double", double, 1)
    raise RuntimeError(f"order {order.order_id} cannot ship")


def test_failed_run_calls_its_failure_handler_once() -> None:
    """A failing run is marked failed, result() raises, and on_failure runs once."""
    failures_seen.clear()
    with WorkflowEnvironment():
        handle = unit_doomed.start(Order(order_id=10))
        with pytest.raises(WorkflowFailed, match="order 10 cannot ship") as info:
            handle.result()
    assert info.value.error.type == "builtins.RuntimeError"
    assert [(r, p, e.message) for r, p, e in failures_seen] == [
        (handle.run_id, Order(order_id=10), "order 10 cannot ship")
    ]


def test_start_with_an_existing_run_id_returns_that_run() -> None:
    """Starting twice with one explicit run id creates one run (idempotent start)."""
    with WorkflowEnvironment() as env:
        first = unit_retrying.start(Order(order_id=11, amount_cents=0), run_id="order-11")
        second = unit_retrying.start(Order(order_id=11, amount_cents=0), run_id="order-11")
        assert first.run_id == second.run_id == "order-11"
        assert list(env.store.runs) == ["order-11"]
        assert calls == {"flaky-11": 1}


def test_invalid_payload_is_refused_by_start() -> None:
    """start() validates the payload first and stores nothing when it fails."""
    with WorkflowEnvironment() as env:
        with pytest.raises(PayloadValidationError, match="payload of workflow 'unit_retrying'"):
            unit_retrying.start({"order_id": "x"})  # type: ignore[arg-type]  # the mistake under test
        assert env.store.runs == {}


seen_steps: list[tuple[str, int, str]] = []


def introspect(x: int) -> int:
    info = current_step()
    seen_steps.append((info.step_name, info.attempt, info.idempotency_key))
    return x


@workflow
def introspective(ctx: Context, order: Order) -> Flow[tuple[int, int]]:
    a, b = yield from ctx.gather(ctx.run("a", introspect, 1), ctx.run("b", introspect, 2))
    return (a, b)


def test_step_functions_see_their_step_info() -> None:
    """current_step() tells a step its name, attempt and stable idempotency key."""
    seen_steps.clear()
    with WorkflowEnvironment():
        handle = introspective.start(Order(order_id=12), run_id="r12")
        assert handle.result() == (1, 2)
    assert seen_steps == [("a", 1, "r12:0"), ("b", 1, "r12:1")]
    with pytest.raises(LookupError, match="only available inside a step"):
        current_step()


class CrashingClock(FakeClock):
    pass


def crash_once(name: str) -> str:
    calls[name] = calls.get(name, 0) + 1
    if calls[name] == 1:
        raise KeyboardInterrupt  # stands for the worker process dying mid-step
    return "survived"


@workflow
def unit_crashy(ctx: Context, order: Order) -> Flow[str]:
    return (yield from ctx.run("crash", crash_once, "crash"))


def test_a_step_whose_worker_died_is_claimed_again_after_its_lease() -> None:
    """A tick that dies mid-step loses nothing: after the lease the step runs once more."""
    clock = FakeClock()
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), clock=clock, lease=timedelta(seconds=60))
    run, _ = runtime.start_run(unit_crashy, Order(order_id=13))
    with pytest.raises(KeyboardInterrupt):
        runtime.tick(run.run_id)
    (claimed,) = store.steps(run.run_id)
    assert claimed.status is StepStatus.PENDING and claimed.attempts == 1
    assert store.runs[run.run_id].wake_at == EPOCH + timedelta(seconds=60)
    runtime.tick(run.run_id)  # a duplicate, early wake-up: the lease still holds
    assert calls == {"crash": 1}
    clock.advance(61)
    runtime.tick(run.run_id)
    final = store.runs[run.run_id]
    assert final.status is RunStatus.COMPLETED and final.result == '"survived"'
    assert store.steps(run.run_id)[0].attempts == 2
    assert calls == {"crash": 2}


def test_duplicate_ticks_do_nothing_but_look() -> None:
    """Ticking a finished or waiting run again runs no step twice."""
    clock = FakeClock()
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), clock=clock)
    run, _ = runtime.start_run(unit_retrying, Order(order_id=14, amount_cents=0))
    for _ in range(3):
        runtime.tick(run.run_id)
    assert calls == {"flaky-14": 1}
    assert store.runs[run.run_id].status is RunStatus.COMPLETED


generators_built: list[int] = []


@workflow
def counted_sleeps(ctx: Context, order: Order) -> Flow[int]:
    generators_built.append(1)
    for i in range(3):
        yield from ctx.sleep(f"nap-{i}", 5)
    return 3


def test_warm_generators_skip_replay_between_ticks() -> None:
    """With warm runs kept, later ticks continue the live generator (no replay)."""
    generators_built.clear()
    with WorkflowEnvironment():
        assert counted_sleeps.start(Order(order_id=15)).result() == 3
    assert len(generators_built) == 1


def test_cold_ticks_replay_from_the_journal() -> None:
    """Without warm runs each tick replays the journal into a fresh generator."""
    generators_built.clear()
    clock = FakeClock()
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), clock=clock, warm_runs=0)
    run, _ = runtime.start_run(counted_sleeps, Order(order_id=16))
    for _ in range(4):
        runtime.tick(run.run_id)
        clock.advance(5)
    assert store.runs[run.run_id].status is RunStatus.COMPLETED
    assert len(generators_built) == 4


def test_budget_exhausted_tick_yields_with_an_immediate_wakeup() -> None:
    """A tick out of time budget stops before the next step and wakes the run now."""
    clock = FakeClock()
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), clock=clock, budget=timedelta(0))
    run, _ = runtime.start_run(unit_retrying, Order(order_id=17, amount_cents=0))
    report = runtime.tick(run.run_id)
    assert report.steps_run == 0 and report.wake_at == clock.now()
    assert calls == {}


def test_nondeterminism_fails_the_run_with_a_clear_error() -> None:
    """A journal the code no longer follows fails the run with NonDeterminismError."""
    clock = FakeClock()
    store = MemoryStore()
    runtime = Runtime(store, DatabaseScheduler(), clock=clock)
    run, _ = runtime.start_run(unit_retrying, Order(order_id=18, amount_cents=0))
    from hookflow_gen import StepRecord

    store.save_step(run.run_id, StepRecord(0, "sleep", "renamed", result="null"))
    runtime.tick(run.run_id)
    failed = store.runs[run.run_id]
    assert failed.status is RunStatus.FAILED and failed.error is not None
    assert failed.error.type == "hookflow_gen.exceptions.NonDeterminismError"
    assert "position 0 was sleep 'renamed'" in failed.error.message


class FxRate(Approval):
    pass


def test_call_responses_parse_json_and_classify_errors() -> None:
    """A 2xx answer parses into the model; 429/5xx retry; other 4xx fail at once."""
    from hookflow_gen._context import Context as Ctx
    from hookflow_gen._context import RunInfo

    ctx = Ctx(RunInfo("r", "w", EPOCH))
    step = ctx.call("fx", "https://fx.example/", response_model=Approval)
    ok = call_response(step, 200, {"Content-Type": "application/json"}, '{"approved_by":"x"}')
    assert ok == {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": {"approved_by": "x"},
    }
    with pytest.raises(Exception, match="HTTP 503") as retryable:
        call_response(step, 503, {}, "down")
    assert not isinstance(retryable.value, NonRetryableError)
    with pytest.raises(NonRetryableError, match="HTTP 404"):
        call_response(step, 404, {}, "missing")
    with pytest.raises(NonRetryableError, match="not JSON"):
        call_response(step, 200, {}, "<html>")
    text_step = ctx.call("page", "https://example.com/")
    assert call_response(text_step, 200, {}, "<html>")["body"] == "<html>"


@workflow
def calls_out(ctx: Context, order: Order) -> Flow[str]:
    rate = yield from ctx.call("fx", "https://fx.example/eur", response_model=Approval)
    return f"{rate.status} {rate.body.approved_by}"


def test_stubbed_call_steps_return_typed_responses() -> None:
    """A stubbed call step gives a typed CallResponse to the workflow."""
    with WorkflowEnvironment(stubs={"fx": {"approved_by": "stub"}}):
        assert calls_out.start(Order(order_id=19)).result() == "200 stub"


class Opaque:
    """Not JSON: no pydantic schema, no serialiser."""


def untyped_opaque(x: int) -> Any:
    return Opaque()


@workflow
def unit_opaque(ctx: Context, order: Order) -> Flow[str]:
    try:
        yield from ctx.run("opaque", untyped_opaque, 1)
    except StepFailed as exc:
        return f"{exc.attempts}: {exc.message}"
    return "stored an object that is not JSON"


def test_a_result_that_is_not_json_fails_the_step_at_once() -> None:
    """A step result that cannot be serialised as JSON fails without retries, clearly."""
    with WorkflowEnvironment():
        message = unit_opaque.start(Order(order_id=20)).result()
    assert message.startswith("1: the result of step 'opaque' cannot be serialised as JSON")


def test_finished_runs_are_not_kept_warm() -> None:
    """A run's live generator is dropped when the run ends; waiting runs stay warm."""
    with WorkflowEnvironment() as env:
        done = unit_retrying.start(Order(order_id=21, amount_cents=0))
        waiting = approval_flow.start(Order(order_id=22))
        assert done.status is RunStatus.COMPLETED
        warm = env.runtime._warm  # pyright: ignore[reportPrivateUsage]
        assert done.run_id not in warm
        assert waiting.run_id in warm


def test_an_event_that_is_not_json_is_refused() -> None:
    """notify() with a payload that cannot be JSON raises PayloadValidationError, stores nothing."""
    with WorkflowEnvironment() as env:
        with pytest.raises(PayloadValidationError, match="event for key 'k' cannot be serialised"):
            notify("k", Opaque())
        assert env.store.events == {}
