"""Flow control on the Django store (SQLite or PostgreSQL), driven tick by tick on a fake clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from hookflow_gen import Context, Flow, Limit, Rate, RunStatus, current_step, step, workflow
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen.django import DjangoStore
from hookflow_gen.django.models import FlowStart, FlowWaiter, Step
from hookflow_gen.testing import EPOCH, FakeClock

pytestmark = pytest.mark.django_db

clocks = [FakeClock()]
started: list[tuple[str, float]] = []


class Group(BaseModel):
    """The key a run's steps are limited on, and how many steps it runs."""

    name: str
    steps: int = 1
    crash: bool = False


@step(rate=Rate(2, per=timedelta(seconds=10), key="store-rate:{group}"))
def counted(group: str, i: int) -> int:
    started.append((current_step().run_id, (clocks[0].now() - EPOCH).total_seconds()))
    return i


@workflow(name="flow_store_rated")
def flow_store_rated(ctx: Context, group: Group) -> Flow[int]:
    total = 0
    for i in range(group.steps):
        total += yield from ctx.run(f"c{i}", counted, group.name, i)
    return total


class Crash(BaseException):
    """Stands for a worker that dies in the middle of a step."""


@step(concurrency=Limit(1, key="store-solo:{group}"))
def dies_first(group: str, crash: bool) -> str:
    if crash and current_step().attempt == 1:
        raise Crash
    return group


@workflow(name="flow_store_solo")
def flow_store_solo(ctx: Context, group: Group) -> Flow[str]:
    return (yield from ctx.run("solo", dies_first, group.name, group.crash))


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock, which the step functions read too."""
    clocks[0] = FakeClock()
    started.clear()
    return clocks[0]


@pytest.fixture
def runtime(clock: FakeClock) -> Runtime:
    """A runtime on the Django store, ticked by hand on the fake clock."""
    return Runtime(DjangoStore(), DatabaseScheduler(), clock=clock, lease=timedelta(seconds=60))


def test_the_rate_window_spaces_steps_and_old_starts_are_dropped(
    runtime: Runtime, clock: FakeClock
) -> None:
    """Two starts per 10 s: the third step waits for the window; starts past it are deleted."""
    run, _ = runtime.start_run(flow_store_rated, Group(name="a", steps=5))
    report = runtime.tick(run.run_id)
    assert report.steps_run == 2 and report.wake_at == EPOCH + timedelta(seconds=10)
    assert not FlowWaiter.objects.exists()  # a rate's wait needs no waiting list
    clock.advance(9.9)
    assert runtime.tick(run.run_id).steps_run == 0
    clock.advance(0.1)
    assert runtime.tick(run.run_id).steps_run == 2
    clock.advance(10)
    assert runtime.tick(run.run_id).status is RunStatus.COMPLETED
    assert [at for _, at in started] == [0, 0, 10, 10, 20]
    assert set(Step.objects.filter(run_id=run.run_id).values_list("attempts", flat=True)) == {1}
    # Only the starts still inside the window (10 s, 20 s] are kept: the last one.
    assert FlowStart.objects.filter(key="store-rate:a").count() == 1


def test_a_live_lease_denies_a_slot_until_it_lapses(runtime: Runtime, clock: FakeClock) -> None:
    """A step whose worker died holds its slot until its lease ends; then the waiter runs."""
    holder, _ = runtime.start_run(flow_store_solo, Group(name="crash", crash=True))
    with pytest.raises(Crash):
        runtime.tick(holder.run_id)
    waiter, _ = runtime.start_run(flow_store_solo, Group(name="crash"))
    other, _ = runtime.start_run(flow_store_solo, Group(name="other"))
    report = runtime.tick(waiter.run_id)
    assert report.steps_run == 0 and report.wake_at == EPOCH + timedelta(seconds=60)
    assert list(FlowWaiter.objects.values_list("key", "run_id")) == [
        ("store-solo:crash", waiter.run_id)
    ]
    assert not Step.objects.filter(run_id=waiter.run_id).exists()  # no attempt spent
    assert runtime.tick(other.run_id).status is RunStatus.COMPLETED  # another key is free
    clock.advance(60)
    assert runtime.tick(waiter.run_id).status is RunStatus.COMPLETED
    assert not FlowWaiter.objects.exists()
    assert runtime.tick(holder.run_id).status is RunStatus.COMPLETED
    assert Step.objects.get(run_id=holder.run_id).attempts == 2


@pytest.mark.django_db(transaction=True)  # the wake-up is sent once the checkpoint commits
def test_a_settled_holder_wakes_the_oldest_waiter(runtime: Runtime, clock: FakeClock) -> None:
    """The holder's checkpoint takes the oldest waiter off the list and wakes it now."""
    holder, _ = runtime.start_run(flow_store_solo, Group(name="crash", crash=True))
    with pytest.raises(Crash):
        runtime.tick(holder.run_id)
    first, _ = runtime.start_run(flow_store_solo, Group(name="crash"))
    runtime.tick(first.run_id)
    clock.advance(1)
    second, _ = runtime.start_run(flow_store_solo, Group(name="crash"))
    runtime.tick(second.run_id)
    clock.advance(60)  # the lapsed attempt is retried, and settles
    assert runtime.tick(holder.run_id).status is RunStatus.COMPLETED
    store = DjangoStore()
    woken = store.get_run(first.run_id)
    assert woken is not None and woken.wake_at == clock.now()
    still = store.get_run(second.run_id)
    assert still is not None and still.wake_at == EPOCH + timedelta(seconds=60)
    assert list(FlowWaiter.objects.values_list("run_id", flat=True)) == [second.run_id]
