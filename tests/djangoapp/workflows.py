"""Workflows the Django integration tests run (autodiscovered by the app)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hookflow_gen import (
    Context,
    ErrorInfo,
    Flow,
    Limit,
    Rate,
    RetryPolicy,
    StepFailed,
    current_step,
    step,
    workflow,
)

from .models import Entry, Execution


class Numbers(BaseModel):
    a: int
    b: int


class Total(BaseModel):
    total: int


class Nap(BaseModel):
    seconds: float


class Wait(BaseModel):
    key: str


class Approval(BaseModel):
    approved_by: str


class Fan(BaseModel):
    width: int = 4
    delay: float = 0.0


class Flaky(BaseModel):
    failures: int
    attempts: int = 3


class Write(BaseModel):
    label: str
    fail_first: bool = False


class Slow(BaseModel):
    marker: str
    seconds: float


def _record(started: float | None = None) -> None:
    info = current_step()
    now = time.time()
    Execution.objects.create(
        run_id=info.run_id,
        position=info.position,
        name=info.step_name,
        attempt=info.attempt,
        started=started if started is not None else now,
        finished=now,
    )


def add(a: int, b: int) -> int:
    _record()
    return a + b


def double(x: int) -> Total:
    _record()
    return Total(total=2 * x)


def pause(seconds: float) -> int:
    started = time.time()
    if seconds:
        time.sleep(seconds)
    _record(started)
    return current_step().position


def flaky(failures: int) -> str:
    info = current_step()
    _record()
    if info.attempt <= failures:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return f"ok on attempt {info.attempt}"


def write_entry(label: str, fail_first: bool) -> int:
    Entry.objects.create(label=label)
    if fail_first and current_step().attempt == 1:
        raise RuntimeError("failed after writing")
    return Entry.objects.filter(label=label).count()


def slow_with_marker(marker: str, seconds: float) -> str:
    with Path(marker).open("a") as file:
        file.write("started\n")
    started = time.time()
    time.sleep(seconds)
    _record(started)
    return "done"


def explode() -> int:
    _record()
    raise ValueError("boom")


@workflow
def linear(ctx: Context, numbers: Numbers) -> Flow[Total]:
    """Two steps, one after the other."""
    total = yield from ctx.run("add", add, numbers.a, numbers.b)
    doubled = yield from ctx.run("double", double, total)
    return doubled


@workflow
def sleeper(ctx: Context, nap: Nap) -> Flow[str]:
    """Sleeps, then answers."""
    yield from ctx.sleep("nap", timedelta(seconds=nap.seconds))
    return "awake"


@workflow
def approval(ctx: Context, wait: Wait) -> Flow[str]:
    """Waits for an approval event."""
    event = yield from ctx.wait_for_event("approval", Approval, key=wait.key)
    return event.approved_by


@workflow
def parent(ctx: Context, numbers: Numbers) -> Flow[int]:
    """Invokes ``linear`` as a child and uses its typed result."""
    child = yield from ctx.invoke("child", linear, numbers)
    return child.total + 1


@workflow
def fan_out(ctx: Context, fan: Fan) -> Flow[list[int]]:
    """Runs ``width`` branches in parallel."""
    branches = [ctx.run(f"branch-{i}", pause, fan.delay) for i in range(fan.width)]
    results = yield from ctx.gather(*branches)
    return list(results)


@workflow
def retrying(ctx: Context, spec: Flaky) -> Flow[str]:
    """A step that fails ``failures`` times; the workflow catches the final failure."""
    policy = RetryPolicy(maximum_attempts=spec.attempts, initial_interval=timedelta(seconds=10))
    try:
        return (yield from ctx.run("flaky", flaky, spec.failures).options(retry=policy))
    except StepFailed as exc:
        return f"gave up after {exc.attempts} attempts: {exc.message}"


@workflow
def atomic_write(ctx: Context, write: Write) -> Flow[int]:
    """An atomic step writing a model row."""
    policy = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
    step = ctx.run("write", write_entry, write.label, write.fail_first)
    return (yield from step.options(atomic=True, retry=policy))


def record_failure(run_id: str, payload: Any, error: ErrorInfo) -> None:
    """The ``doomed`` workflow's on_failure handler."""
    Execution.objects.create(run_id=run_id, position=-1, name="on_failure")
    assert "boom" in error.message


@workflow(on_failure=record_failure, retry=RetryPolicy(maximum_attempts=1))
def doomed(ctx: Context, numbers: Numbers) -> Flow[int]:
    """A step that raises, uncaught: the run fails and ``on_failure`` runs."""
    return (yield from ctx.run("explode", explode))


@workflow
def crashy(ctx: Context, slow: Slow) -> Flow[str]:
    """A slow non-atomic step that leaves a marker when it starts."""
    return (yield from ctx.run("slow", slow_with_marker, slow.marker, slow.seconds))


class Tally(BaseModel):
    start: int
    stop: int
    total: int = 0
    per_run: int = 2


class TallyStatus(BaseModel):
    done: int
    total: int


@workflow
def tally(ctx: Context, t: Tally) -> Flow[int]:
    """Adds start..stop-1, ``per_run`` numbers per run, continuing as new between runs."""
    total = t.total
    end = min(t.start + t.per_run, t.stop)
    for i in range(t.start, end):
        total = yield from ctx.run(f"add-{i}", add, total, i)
    ctx.set_status(TallyStatus(done=end, total=total))
    if end < t.stop:
        nxt = Tally(start=end, stop=t.stop, total=total, per_run=t.per_run)
        return (yield from ctx.continue_as_new(tally, nxt))
    return total


@workflow
def tally_parent(ctx: Context, t: Tally) -> Flow[str]:
    """Invokes a tally chain as its child."""
    total = yield from ctx.invoke("tally", tally, t)
    return f"tallied {total}"


@workflow
def pager(ctx: Context, t: Tally) -> Flow[int]:
    """Waits for one event per run and continues as new after each, without end."""
    ctx.set_status(TallyStatus(done=t.start, total=t.total))
    yield from ctx.wait_for_event("page", Approval, key=f"pager-{t.stop}")
    return (yield from ctx.continue_as_new(pager, Tally(start=t.start + 1, stop=t.stop)))


from . import update_workflows  # noqa: E402, F401  # pyright: ignore[reportUnusedImport]  # registers its workflows

# -- flow control -------------------------------------------------------------------


class Crowd(BaseModel):
    group: str
    seconds: float = 0.0


@step(concurrency=Limit(2, key="crowd:{group}"))
def crowded(group: str, seconds: float) -> int:
    started = time.time()
    time.sleep(seconds)
    _record(started)
    return 1


@workflow(name="flow_crowd")
def flow_crowd(ctx: Context, crowd: Crowd) -> Flow[int]:
    """One step of which at most two run at once per group."""
    return (yield from ctx.run("crowded", crowded, crowd.group, crowd.seconds))


@step(rate=Rate(3, per=timedelta(seconds=1), key="rated:{group}"))
def rated(group: str, seconds: float) -> int:
    started = time.time()
    time.sleep(seconds)
    _record(started)
    return 1


@workflow(name="flow_rated")
def flow_rated(ctx: Context, crowd: Crowd) -> Flow[int]:
    """One step of which at most three start per second per group."""
    return (yield from ctx.run("rated", rated, crowd.group, crowd.seconds))


class Held(BaseModel):
    marker: str
    seconds: float


@step(concurrency=Limit(1, key="held:{marker}"))
def hold_slot(marker: str, seconds: float) -> str:
    """Leaves a marker, then takes ``seconds`` on its first attempt only."""
    info = current_step()
    with Path(marker).open("a") as file:
        file.write(f"{info.run_id} {os.getpid()}\n")
    started = time.time()
    if info.attempt == 1:
        time.sleep(seconds)
    _record(started)
    return "done"


@workflow(name="flow_held")
def flow_held(ctx: Context, held: Held) -> Flow[str]:
    """One step of which one runs at a time per marker."""
    return (yield from ctx.run("held", hold_slot, held.marker, held.seconds))


#: What ``rendezvous`` steps wait on, by name: set by the worker concurrency tests.
RENDEZVOUS: dict[str, threading.Barrier] = {}
#: Called by a ``rendezvous`` step before it waits, by barrier name.
PROBES: dict[str, Callable[[], None]] = {}


class Meet(BaseModel):
    barrier: str


def meet(barrier: str) -> int:
    """Block until every party of the named barrier arrived (ticks overlap), or fail."""
    _record()
    probe = PROBES.get(barrier)
    if probe is not None:
        probe()
    return RENDEZVOUS[barrier].wait()


@workflow
def rendezvous(ctx: Context, meet_at: Meet) -> Flow[int]:
    """One step that returns only once as many steps as the barrier has parties meet."""
    return (yield from ctx.run("meet", meet, meet_at.barrier))


if os.environ.get("HOOKFLOW_TEST_SCHEDULES") == "1":
    # A worker subprocess of the schedule tests: it starts their scheduled runs.
    from . import scheduled

    scheduled.register()
