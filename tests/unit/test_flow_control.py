"""Flow control on the in-memory store: per-key concurrency and rate limits of steps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    Limit,
    Rate,
    RunStatus,
    StepStatus,
    WorkflowDefinitionError,
    WorkflowFailed,
    current_step,
    step,
    workflow,
)
from hookflow_gen._codec import adapter_for
from hookflow_gen._context import StepDefaults
from hookflow_gen._flow import FlowGate, flow_control
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._steps import RunStep
from hookflow_gen._store import MemoryStore
from hookflow_gen.testing import EPOCH, FakeClock, WorkflowEnvironment


class Job(BaseModel):
    """Which user a job is for, and how many steps it runs."""

    user: str
    steps: int = 1


_ADAPTER = adapter_for(int)

# -- keys ----------------------------------------------------------------------------


def by_user(user: str, amount: int) -> str:
    return f"user:{user}"


@step(concurrency=Limit(2, key=by_user))
def charge(user: str, amount: int) -> int:
    return amount


@step(concurrency=Limit(3, key="acct:{user}"), rate=Rate(5, per=timedelta(minutes=1)))
def refund(user: str, amount: int = 0) -> int:
    return amount


@step(rate=Rate(4, per=2, key="global"), concurrency=Limit(1))
def export(user: str) -> str:
    return user


def test_a_key_function_gets_the_step_arguments() -> None:
    """A key function is called with the step's arguments; the rate shares the limit's key."""
    flow = _flow_of(charge, "ann", 5)
    assert flow == (FlowGate("user:ann", max_active=2),)


def test_a_key_template_is_filled_by_parameter_name() -> None:
    """A template is filled from the bound arguments, defaults included; one gate per key."""
    assert _flow_of(refund, "bob") == (
        FlowGate("acct:bob", max_active=3, rate=5, period=timedelta(minutes=1)),
    )


def test_limits_with_different_keys_are_two_gates_in_key_order() -> None:
    """A limit keyed on the function and a rate on its own key make two gates, sorted."""
    gates = _flow_of(export, "x")
    assert [g.key for g in gates] == ["global", f"{__name__}.export"]
    assert gates[0].rate == 4 and gates[0].period == timedelta(seconds=2)
    assert gates[1].max_active == 1 and gates[1].rate is None


def test_options_replace_one_limit_and_keep_the_other() -> None:
    """``.options(concurrency=...)`` replaces the limit and keeps the decorator's rate."""
    base: RunStep[int] = RunStep("r", refund, ("cy",), adapter=_ADAPTER)
    assert base.flow is None
    limited = base.options(concurrency=Limit(1, key="{user}!"))
    assert limited.flow is not None
    assert limited.flow.gates(("cy",), {}) == (FlowGate("cy!", max_active=1),)
    again = limited.options(rate=Rate(2))
    assert again.flow is not None
    assert again.flow.gates(("cy",), {}) == (
        FlowGate("cy!", max_active=1, rate=2, period=timedelta(seconds=1)),
    )


def test_bad_limits_are_refused_with_clear_errors() -> None:
    """Zero limits, non-positive periods and templates naming no parameter are refused."""
    with pytest.raises(WorkflowDefinitionError, match="Limit.max"):
        Limit(0)
    with pytest.raises(WorkflowDefinitionError, match="Rate.count"):
        Rate(0)
    with pytest.raises(WorkflowDefinitionError, match="more than zero"):
        Rate(1, per=0)
    with pytest.raises(WorkflowDefinitionError, match="not a valid template"):
        Limit(1, key="{user")
    with pytest.raises(WorkflowDefinitionError, match="'nobody', which is not a parameter"):

        @step(concurrency=Limit(1, key="{nobody}"))
        def nope(user: str) -> None: ...


def bad_key(user: str) -> str:
    return 42  # type: ignore[return-value]  # the error under test


@step(concurrency=Limit(1, key=bad_key))
def badly_keyed(user: str) -> str:
    return user


@workflow(name="flow_unit_badly_keyed")
def flow_badly_keyed(ctx: Context, job: Job) -> Flow[str]:
    return (yield from ctx.run("go", badly_keyed, job.user))


def test_a_key_function_returning_no_string_fails_the_run_with_the_reason() -> None:
    """A key function that returns no string fails the run, the error naming the step function."""
    with WorkflowEnvironment() as env:
        handle = env.start(flow_badly_keyed, Job(user="a"))
        assert handle.status is RunStatus.FAILED
        with pytest.raises(WorkflowFailed, match="must be a non-empty string, got 42"):
            handle.result()


# -- rate ------------------------------------------------------------------------------

starts: list[tuple[str, int, datetime]] = []
clock_box: list[FakeClock] = []


@step(rate=Rate(2, per=timedelta(seconds=10), key="rated"))
def rated(user: str, i: int) -> int:
    info = current_step()
    starts.append((user, info.attempt, clock_box[0].now()))
    return i


@workflow(name="flow_unit_rated")
def flow_rated(ctx: Context, job: Job) -> Flow[int]:
    total = 0
    for i in range(job.steps):
        total += yield from ctx.run(f"rated-{i}", rated, job.user, i)
    return total


def test_rate_spaces_starts_by_the_window_and_spends_no_attempt() -> None:
    """Five steps at 2 per 10 s start at 0, 0, 10, 10, 20 s, each on its first attempt."""
    starts.clear()
    with WorkflowEnvironment() as env:
        clock_box[:] = [env.clock]
        assert env.run(flow_rated, Job(user="r", steps=5)) == 10
        offsets = [(at - EPOCH).total_seconds() for _, _, at in starts]
        assert offsets == [0, 0, 10, 10, 20]
        assert [attempt for _, attempt, _ in starts] == [1] * 5


def test_rate_is_shared_by_runs_on_one_key() -> None:
    """Two runs on one key share its rate: four starts in 10 s never exceed two."""
    starts.clear()
    with WorkflowEnvironment(auto_advance=False) as env:
        clock_box[:] = [env.clock]
        first = env.start(flow_rated, Job(user="a", steps=2))
        second = env.start(flow_rated, Job(user="b", steps=2))
        assert first.status is RunStatus.COMPLETED
        assert store_status(env, second.run_id) is RunStatus.RUNNING
        assert [user for user, _, _ in starts] == ["a", "a"]
        env.advance(9.9)
        assert len(starts) == 2
        env.advance(0.1)
        assert store_status(env, second.run_id) is RunStatus.COMPLETED
        assert [(u, (at - EPOCH).total_seconds()) for u, _, at in starts] == [
            ("a", 0),
            ("a", 0),
            ("b", 10),
            ("b", 10),
        ]


def store_status(env: WorkflowEnvironment, run_id: str) -> RunStatus:
    return env.store.runs[run_id].status


# -- concurrency -------------------------------------------------------------------------

gate_open = threading.Event()
entered = threading.Semaphore(0)


@step(concurrency=Limit(1, key="solo:{user}"))
def solo(user: str) -> str:
    entered.release()
    assert gate_open.wait(30), "never released"
    return user


@workflow(name="flow_unit_solo")
def flow_solo(ctx: Context, job: Job) -> Flow[str]:
    return (yield from ctx.run("solo", solo, job.user))


def waiting(store: MemoryStore, key: str) -> tuple[str, ...]:
    return store.flow_waiters.get(key, ())


def _runtime(clock: FakeClock, store: MemoryStore) -> Runtime:
    return Runtime(store, DatabaseScheduler(), clock=clock, lease=timedelta(seconds=60))


def test_a_full_key_makes_the_run_wait_and_its_release_wakes_it() -> None:
    """With the slot taken a second run waits (no attempt); the holder's end wakes it at once."""
    gate_open.clear()
    clock, store = FakeClock(), MemoryStore()
    runtime = _runtime(clock, store)
    holder, _ = runtime.start_run(flow_solo, Job(user="u"))
    waiter, _ = runtime.start_run(flow_solo, Job(user="u"))
    other, _ = runtime.start_run(flow_solo, Job(user="v"))
    thread = threading.Thread(target=runtime.tick, args=(holder.run_id,))
    thread.start()
    try:
        assert entered.acquire(timeout=30)
        report = runtime.tick(waiter.run_id)
        assert report.status is RunStatus.RUNNING and report.steps_run == 0
        # At the latest when the holder's lease ends (a killed holder frees its slot).
        assert report.wake_at == EPOCH + timedelta(seconds=60)
        assert store.steps(waiter.run_id) == []  # not claimed: no attempt spent
        assert waiting(store, "solo:u") == (waiter.run_id,)
        seq = store.runs[waiter.run_id].wake_seq
        gate_open.set()  # another key is not held up: "v" runs
        assert runtime.tick(other.run_id).status is RunStatus.COMPLETED
    finally:
        gate_open.set()
        thread.join(30)
    assert store.runs[holder.run_id].status is RunStatus.COMPLETED
    woken = store.runs[waiter.run_id]
    assert woken.wake_at == clock.now() and woken.wake_seq == seq + 1
    assert waiting(store, "solo:u") == ()
    assert runtime.tick(waiter.run_id).status is RunStatus.COMPLETED
    (record,) = store.steps(waiter.run_id)
    assert record.status is StepStatus.COMPLETED and record.attempts == 1


def test_a_lapsed_lease_frees_its_slot() -> None:
    """A holder whose lease lapsed (its worker died) holds no slot: the next run is admitted."""
    gate_open.clear()
    clock, store = FakeClock(), MemoryStore()
    runtime = _runtime(clock, store)
    holder, _ = runtime.start_run(flow_solo, Job(user="w"))
    waiter, _ = runtime.start_run(flow_solo, Job(user="w"))
    thread = threading.Thread(target=runtime.tick, args=(holder.run_id,))
    thread.start()
    try:
        assert entered.acquire(timeout=30)
        assert runtime.tick(waiter.run_id).wake_at == EPOCH + timedelta(seconds=60)
        clock.advance(60)
        result: list[RunStatus] = []
        second = threading.Thread(target=lambda: result.append(runtime.tick(waiter.run_id).status))
        second.start()
        assert entered.acquire(timeout=30)  # admitted while the first still hangs
        gate_open.set()
        second.join(30)
        assert result == [RunStatus.COMPLETED]
    finally:
        gate_open.set()
        thread.join(30)


@step(concurrency=Limit(2, key="pair"))
def paired(i: int) -> int:
    return i


@workflow(name="flow_unit_gather")
def flow_gather(ctx: Context, job: Job) -> Flow[tuple[int, ...]]:
    return (yield from ctx.gather(*(ctx.run(f"p{i}", paired, i) for i in range(job.steps))))


def test_gather_branches_on_one_key_all_complete() -> None:
    """A gather of limited branches completes in the environment, each branch once."""
    with WorkflowEnvironment() as env:
        assert env.run(flow_gather, Job(user="g", steps=4)) == (0, 1, 2, 3)


def _flow_of(fn: Callable[..., object], *args: object) -> tuple[FlowGate, ...]:
    spec: StepDefaults = getattr(fn, "__hookflow_step__")  # noqa: B009  # set by @step
    flow = flow_control(fn, spec.concurrency, spec.rate)
    assert flow is not None
    return flow.gates(args, {})
