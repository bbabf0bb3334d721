"""Durability rules on the memory store: leases, poison, cancel, resume, eviction, misuse."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from hookflow_gen import (
    Cancelled,
    Context,
    Flow,
    HookflowError,
    InvalidIdError,
    PayloadValidationError,
    RetryPolicy,
    RunCancelled,
    RunStatus,
    StepFailed,
    StepRecord,
    StepStatus,
    WorkflowFailed,
    current_step,
    workflow,
)
from hookflow_gen._runtime import Runtime
from hookflow_gen._runtime._transitions import unguarded
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import MemoryStore, RunState
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]
from hookflow_gen.testing import EPOCH, FakeClock, WorkflowEnvironment

from .models import Approval, Order, double

effects: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    effects.clear()


def note(what: str) -> str:
    effects.append(what)
    return what


def runtime_on(store: MemoryStore, clock: FakeClock, **kwargs: Any) -> Runtime:
    """A runtime whose wake-ups are only rows, ticked by hand like a database worker."""
    return Runtime(store, DatabaseScheduler(), clock=clock, **kwargs)


# -- cancellation ---------------------------------------------------------------------


@workflow
def cleans_up(ctx: Context, order: Order) -> Flow[str]:
    try:
        yield from ctx.wait_for_event("approval", Approval, key=f"cleanup-{order.order_id}")
    except Cancelled:
        yield from ctx.run("release", note, "released")
        raise
    return "approved"


def test_cancel_throws_cancelled_at_the_yield_and_cleanup_steps_run() -> None:
    """A cancelled run runs the cleanup steps its workflow yields, then ends cancelled."""
    with WorkflowEnvironment() as env:
        handle = cleans_up.start(Order(order_id=1))
        handle.cancel()
        assert handle.status is RunStatus.CANCELLED
        with pytest.raises(RunCancelled):
            handle.result()
        kinds = [(r.name, r.status) for r in env.journal(handle.run_id)]
    assert kinds == [("approval", StepStatus.FAILED), ("release", StepStatus.COMPLETED)]
    assert effects == ["released"]


@workflow
def swallows_cancel(ctx: Context, order: Order) -> Flow[str]:
    try:
        yield from ctx.sleep("nap", timedelta(days=1))
    except Exception:  # the mistake under test: Cancelled is not an Exception
        return "swallowed"
    except Cancelled:
        return "stopped cleanly"
    return "slept"


def test_cancelled_is_not_caught_by_except_exception_and_a_caught_one_completes() -> None:
    """``except Exception`` does not see Cancelled; catching it by name completes the run."""
    with WorkflowEnvironment(auto_advance=False):
        handle = swallows_cancel.start(Order(order_id=2))
        handle.cancel()
        assert handle.result() == "stopped cleanly"


def test_cancel_replays_the_same_way_after_a_restart() -> None:
    """The cancellation is in the journal: a cold replay throws it at the same place."""
    store, clock = MemoryStore(), FakeClock()
    first = runtime_on(store, clock)
    run, _ = first.start_run(cleans_up, Order(order_id=3))
    first.tick(run.run_id)
    with store.atomic():
        locked = store.lock_run(run.run_id)
        assert locked is not None
        store.save_run(dataclasses.replace(locked, cancel_requested=True, wake_at=clock.now()))
    second = runtime_on(store, clock, warm_runs=0)  # a fresh process: no warm generator
    assert second.tick(run.run_id).status is RunStatus.CANCELLED
    assert effects == ["released"]


# -- leases and attempts ------------------------------------------------------------------


@workflow(retry=RetryPolicy(maximum_attempts=2))
def one_step(ctx: Context, order: Order) -> Flow[int]:
    try:
        return (yield from ctx.run("double", double, order.order_id))
    except StepFailed as failed:
        effects.append(failed.message)
        return -1


def _claim_and_die(runtime: Runtime, store: MemoryStore, run_id: str) -> None:
    """What a worker that dies mid-step leaves: the claim, committed; no checkpoint."""
    setattr(runtime.executor, "attempt", _die)  # noqa: B010 - the crash under test
    with pytest.raises(SystemExit):
        runtime.tick(run_id)


def _die(*args: object, **kwargs: object) -> str:
    raise SystemExit("killed mid-step")


def test_a_lapsed_lease_counts_as_an_attempt_and_the_step_fails_after_its_maximum() -> None:
    """A step whose worker dies each time fails after maximum_attempts; it never loops."""
    store, clock = MemoryStore(), FakeClock()
    lease = timedelta(seconds=30)
    run, _ = runtime_on(store, clock, lease=lease).start_run(one_step, Order(order_id=4))
    for _ in range(2):
        _claim_and_die(runtime_on(store, clock, lease=lease), store, run.run_id)
        (record,) = store.steps(run.run_id)
        assert record.status is StepStatus.PENDING and record.lease_until is not None
        clock.advance(lease)
    report = runtime_on(store, clock, lease=lease).tick(run.run_id)
    assert report.status is RunStatus.COMPLETED
    (record,) = store.steps(run.run_id)
    assert record.status is StepStatus.FAILED and record.attempts == 2
    assert "stopped before it finished" in effects[0]


def test_every_commit_leaves_a_running_run_guarded() -> None:
    """After each commit of a mixed workflow, a running run has a wake-up, lease or wait."""
    store, clock = MemoryStore(), FakeClock()
    runtime = runtime_on(store, clock)
    seen: list[bool] = []
    original = store.atomic

    def checked() -> Any:
        import contextlib

        @contextlib.contextmanager
        def block() -> Any:
            depth = store._depth  # pyright: ignore[reportPrivateUsage]
            with original():
                yield
            if depth == 0:
                for state in store.runs.values():
                    pending = [r for r in store.steps(state.run_id) if not r.settled]
                    seen.append(unguarded(state, pending, clock.now()))

        return block()

    setattr(store, "atomic", checked)  # noqa: B010 - a checking wrapper under test
    run, _ = runtime.start_run(cleans_up, Order(order_id=5))
    runtime.tick(run.run_id)
    runtime.notify("cleanup-5", Approval(approved_by="ann"))
    runtime.tick(run.run_id)
    assert store.runs[run.run_id].status is RunStatus.COMPLETED
    assert seen and not any(seen)


# -- poison ----------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_a_tick_that_keeps_raising_fails_the_run_after_the_bound() -> None:
    """A store error on every tick is counted; the run fails with it after the bound."""
    store, clock = MemoryStore(), FakeClock()
    run, _ = runtime_on(store, clock).start_run(one_step, Order(order_id=6))
    broken = runtime_on(store, clock, max_tick_failures=3)
    real_save_steps = store.save_steps

    def refuse(run_id: str, records: Any) -> None:
        raise Boom("the database refuses this row")

    setattr(store, "save_steps", refuse)  # noqa: B010 - the fault under test
    for attempt in range(1, 4):
        with pytest.raises(Boom):
            broken.tick(run.run_id)
        state = store.runs[run.run_id]
        if attempt < 3:
            assert state.status is RunStatus.RUNNING and state.tick_failures == attempt
            assert state.error is not None and "refuses" in state.error.message
            assert state.wake_at is not None
            clock.advance(state.wake_at - clock.now())
    setattr(store, "save_steps", real_save_steps)  # noqa: B010
    state = store.runs[run.run_id]
    assert state.status is RunStatus.FAILED
    assert state.error is not None and state.error.message == "the database refuses this row"


def test_a_stored_payload_that_no_longer_validates_fails_the_run() -> None:
    """A payload that no longer fits its model fails the run once, with the reason."""
    store, clock = MemoryStore(), FakeClock()
    runtime = runtime_on(store, clock)
    run, _ = runtime.start_run(one_step, Order(order_id=7))
    store.runs[run.run_id] = dataclasses.replace(run, payload='{"order_id": "not a number"}')
    assert runtime.tick(run.run_id).status is RunStatus.FAILED
    error = store.runs[run.run_id].error
    assert error is not None and "PayloadValidationError" in error.type


def test_an_unknown_workflow_suspends_the_run_until_it_is_known_again() -> None:
    """A run of a renamed workflow shows the error, waits, and resumes when it is back."""
    store, clock = MemoryStore(), FakeClock()
    runtime = runtime_on(store, clock)
    run, _ = runtime.start_run(one_step, Order(order_id=8))
    saved = _registry.pop(one_step.name)
    try:
        report = runtime.tick(run.run_id)
        state = store.runs[run.run_id]
        assert report.status is RunStatus.RUNNING
        assert state.error is not None and "UnknownWorkflowError" in state.error.type
        assert state.wake_at == clock.now() + runtime.suspend_for
    finally:
        _registry[one_step.name] = saved
    clock.advance(runtime.suspend_for)
    assert runtime.tick(run.run_id).status is RunStatus.COMPLETED
    assert store.runs[run.run_id].error is None


# -- resume ----------------------------------------------------------------------------------

broken_once: list[bool] = []


def fragile(x: int) -> int:
    if not broken_once:
        raise ValueError("not yet")
    return x * 10


@workflow(retry=RetryPolicy(maximum_attempts=1))
def needs_fix(ctx: Context, order: Order) -> Flow[int]:
    return (yield from ctx.run("fragile", fragile, order.order_id))


def test_resume_runs_a_failed_run_again_from_its_failed_step() -> None:
    """A failed run resumed after the fault is gone completes; its old error is kept."""
    broken_once.clear()
    with WorkflowEnvironment() as env:
        handle = needs_fix.start(Order(order_id=9))
        with pytest.raises(WorkflowFailed):
            handle.result()
        broken_once.append(True)
        env.runtime.resume(handle.run_id)
        assert handle.result() == 90
        state = handle.state()
    (past,) = state.past_errors
    assert past.message.endswith("ValueError: not yet")


def test_resume_refuses_a_run_that_did_not_fail() -> None:
    """Only a failed run can be resumed."""
    with WorkflowEnvironment() as env:
        handle = one_step.start(Order(order_id=10))
        with pytest.raises(HookflowError, match="only a failed run"):
            env.runtime.resume(handle.run_id)


# -- eviction and replay -------------------------------------------------------------------


@workflow
def yields_in_finally(ctx: Context, order: Order) -> Flow[str]:
    try:
        yield from ctx.wait_for_event("approval", Approval, key=f"fin-{order.order_id}")
    finally:
        yield from ctx.run("cleanup", note, "cleanup")
    return "done"


def test_eviction_never_carries_out_a_step_and_never_raises_into_a_tick() -> None:
    """Evicting a warm run whose finally yields a step is silent and does nothing."""
    store, clock = MemoryStore(), FakeClock()
    runtime = runtime_on(store, clock, warm_runs=1)
    first, _ = runtime.start_run(yields_in_finally, Order(order_id=11))
    second, _ = runtime.start_run(one_step, Order(order_id=12))
    runtime.tick(first.run_id)
    assert runtime.tick(second.run_id).status is RunStatus.COMPLETED  # evicts the first
    runtime.close()
    assert effects == []
    assert store.runs[first.run_id].status is RunStatus.RUNNING


async def whoami() -> str:
    return current_step().step_name


@workflow
def async_step(ctx: Context, order: Order) -> Flow[str]:
    return (yield from ctx.run("whoami", whoami))


def test_an_async_step_run_inside_an_event_loop_sees_current_step() -> None:
    """Run from inside a running event loop, an async step still has its current_step()."""

    async def start_in_loop() -> str:
        with WorkflowEnvironment():
            return async_step.start(Order(order_id=16)).result()

    assert asyncio.run(start_in_loop()) == "whoami"


# -- misuse ------------------------------------------------------------------------------------


@workflow
def forgets_yield_from(ctx: Context, order: Order) -> Flow[str]:
    c = ctx.run("c", double, 1)
    yield from ctx.sleep("pause", 1)
    return f"{c}"


def test_forgetting_yield_from_fails_the_run_with_a_clear_error() -> None:
    """A step built but never yielded fails the workflow instead of being skipped."""
    with WorkflowEnvironment(), pytest.raises(WorkflowFailed, match="never yielded"):
        forgets_yield_from.start(Order(order_id=13)).result()


def builds_a_step(ctx: Context) -> int:
    ctx.run("inner", double, 2)
    return 1


@workflow
def step_builds_step(ctx: Context, order: Order) -> Flow[int]:
    return (yield from ctx.run("outer", builds_a_step, ctx))


def test_a_step_built_inside_a_step_function_is_refused() -> None:
    """Building a step inside a step function fails that step with a clear error."""
    with WorkflowEnvironment(), pytest.raises(WorkflowFailed, match="outside the workflow's body"):
        step_builds_step.start(Order(order_id=14)).result()


@pytest.mark.parametrize(
    "run_id", ["x" * 256, "bad\x00id", "", 7], ids=["too-long", "nul", "empty", "int"]
)
def test_start_refuses_run_ids_that_cannot_be_stored(run_id: Any) -> None:
    """start() refuses a run id that is too long, has a NUL, is empty or not a string."""
    with WorkflowEnvironment(), pytest.raises(InvalidIdError):
        one_step.start(Order(order_id=15), run_id=run_id)


def test_start_validates_a_payload_built_without_validation() -> None:
    """A model_construct payload that does not validate is refused by start()."""
    with WorkflowEnvironment(), pytest.raises(PayloadValidationError):
        one_step.start(Order.model_construct(order_id="seven"))


def test_unguarded_spots_a_running_run_with_nothing_to_wake_it() -> None:
    """The invariant check: a running run without wake-up, lease or wait is unguarded."""
    run = RunState(run_id="r", workflow="w", payload="{}", created_at=EPOCH)
    assert unguarded(run, [], EPOCH)
    assert not unguarded(dataclasses.replace(run, wake_at=EPOCH), [], EPOCH)


def test_the_warm_cache_is_safe_from_many_threads() -> None:
    """Threads taking, keeping and dropping replays at once never share or lose count."""
    import threading

    from hookflow_gen._context import RunInfo
    from hookflow_gen._engine import Replay
    from hookflow_gen._runtime._warm import WarmCache

    cache = WarmCache(8)
    info = RunInfo(run_id="w", workflow_name=one_step.name, started_at=EPOCH)
    payload = Order(order_id=1).model_dump_json()
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for n in range(300):
                run_id = f"run-{(worker * 7 + n) % 20}"
                replay = cache.take(run_id)
                if replay is not None:
                    with guard:
                        assert id(replay) not in in_use, "two threads hold one replay"
                        in_use.add(id(replay))
                    with guard:
                        in_use.discard(id(replay))
                cache.put(run_id, replay or Replay(one_step, payload, info))
                if n % 13 == 0:
                    cache.drop(run_id)
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 8
    cache.clear()
    assert len(cache) == 0


class _Dispatcher(DatabaseScheduler):
    """A scheduler that hands call steps over, or dies doing it."""

    call_lease = timedelta(hours=1)

    def __init__(self, *, dies: bool) -> None:
        self.dies = dies
        self.sent: list[str] = []

    def dispatch_call(self, info: Any, owner: str, step: Any) -> None:
        if self.dies:
            raise SystemExit("killed between the claim and the hand-over")
        self.sent.append(owner)


@workflow
def durability_calls_out(ctx: Context, order: Order) -> Flow[int]:
    answer = yield from ctx.call("fetch", "https://example.invalid/", response_model=int)
    return answer.body


@pytest.mark.parametrize("dies", [True, False], ids=["dies-before-hand-over", "handed-over"])
def test_a_call_holds_its_long_lease_only_once_handed_over(dies: bool) -> None:
    """A call claimed but never handed over lapses after the usual lease, not the call's."""
    store, clock = MemoryStore(), FakeClock()
    lease = timedelta(seconds=30)
    dispatcher = _Dispatcher(dies=dies)
    runtime = Runtime(store, dispatcher, clock=clock, lease=lease)
    run, _ = runtime.start_run(durability_calls_out, Order(order_id=17))
    if dies:
        with pytest.raises(SystemExit):
            runtime.tick(run.run_id)
    else:
        runtime.tick(run.run_id)
    (record,) = store.steps(run.run_id)
    held = dispatcher.call_lease if not dies else lease
    assert record.lease_until == clock.now() + held


# -- a new run's first tick, unlocked --------------------------------------------------


@workflow(name="durability-three-steps")
def three_steps(ctx: Context, order: Order) -> Flow[int]:
    total = order.order_id
    for index in range(3):
        total = yield from ctx.run(f"double-{index}", double, total)
    return total


class _Counting(MemoryStore):
    """A memory store that counts what its guarded writes were asked and answered."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: list[bool] = []
        self.locks = 0

    def begin_guarded(self, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        self.begun.append(super().begin_guarded(run, seen_seq, claim))
        return self.begun[-1]

    def lock_run(self, run_id: str) -> RunState | None:
        self.locks += 1
        return super().lock_run(run_id)


def test_a_fresh_runs_tick_begins_and_ends_without_the_lock() -> None:
    """Handed the run as a claim read it, the tick locks nothing: begin, steps, end."""
    store, clock = _Counting(), FakeClock(EPOCH)
    runtime = runtime_on(store, clock)
    run, _ = runtime.start_run(three_steps, Order(order_id=1))
    report = runtime.tick(run.run_id, fresh=store.get_run(run.run_id))
    assert report.status is RunStatus.COMPLETED
    assert store.begun == [True]
    assert store.locks == 0
    done = store.get_run(run.run_id)
    assert done is not None and done.result == "8"
    assert [r.status for r in store.steps(run.run_id)] == [StepStatus.COMPLETED] * 3


@pytest.mark.parametrize("change", ["woken", "cancel requested", "has a step"])
def test_a_fresh_run_that_changed_is_ticked_under_the_lock(change: str) -> None:
    """The claim's view is stale: the guarded first tick is refused and the lock takes over."""
    store, clock = _Counting(), FakeClock(EPOCH)
    runtime = runtime_on(store, clock)
    run, _ = runtime.start_run(three_steps, Order(order_id=1))
    seen = store.get_run(run.run_id)
    assert seen is not None
    if change == "woken":
        store.save_run(dataclasses.replace(seen, wake_seq=seen.wake_seq + 1))
    elif change == "cancel requested":
        store.save_run(dataclasses.replace(seen, cancel_requested=True))
    else:
        # Another worker's locked tick claimed the first step meanwhile.
        assert runtime.tick(run.run_id).status is RunStatus.COMPLETED
    report = runtime.tick(run.run_id, fresh=seen)
    assert store.begun == [False]
    assert store.locks >= 1
    if change == "cancel requested":
        assert report.status is RunStatus.CANCELLED
        assert [r.status for r in store.steps(run.run_id)] == [StepStatus.FAILED]
    else:
        assert report.status is RunStatus.COMPLETED
        assert [r.status for r in store.steps(run.run_id)] == [StepStatus.COMPLETED] * 3
