"""The crash suite's workflows (autodiscovered: ``tests.chaos`` is an installed app).

Plain steps record each execution in ``Execution``; atomic steps write one
``Entry`` labelled ``<run id>:<position>`` each time their transaction
commits. Both call ``kill_point`` in the middle, where ``HOOKFLOW_CHAOS``
may kill the worker running them.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from hookflow_gen import Context, Flow, RetryPolicy, StepFailed, current_step, workflow
from tests._invariant import arm_after_commit, kill_point
from tests.djangoapp.models import Entry, Execution

# Enough attempts that the suite's bounded kills never exhaust a step's retries.
PATIENT = RetryPolicy(maximum_attempts=1000, initial_interval=timedelta(milliseconds=50))


class Job(BaseModel):
    n: int


def expected(n: int) -> int:
    """What ``chaos_job`` returns for ``Job(n=n)``."""
    b = 2 * (n + 1)
    child = b + 10
    return 2 * ((b + 1) + (b + 2) + child)


def plain(value: int) -> int:
    """A plain step: recorded once per execution, then maybe killed mid-step."""
    info = current_step()
    now = time.time()
    Execution.objects.create(
        run_id=info.run_id,
        position=info.position,
        name=info.step_name,
        attempt=info.attempt,
        started=now,
        finished=now,
    )
    kill_point("in_step")
    return value + 1


def effect(value: int) -> int:
    """An atomic step: one ``Entry`` per committed transaction, maybe killed mid-way."""
    info = current_step()
    Entry.objects.create(label=f"{info.run_id}:{info.position}")
    kill_point("in_atomic_step")
    arm_after_commit()
    return 2 * value


@workflow
def chaos_child(ctx: Context, job: Job) -> Flow[int]:
    """The child ``chaos_job`` invokes: one plain step."""
    return (yield from ctx.run("child-plain", plain, job.n + 9).options(retry=PATIENT))


@workflow
def chaos_job(ctx: Context, job: Job) -> Flow[int]:
    """Every kind of transition a worker can die in: plain, atomic, gather, sleep, child."""
    a = yield from ctx.run("first", plain, job.n).options(retry=PATIENT)
    b = yield from ctx.run("effect", effect, a).options(atomic=True, retry=PATIENT)
    left, right = yield from ctx.gather(
        ctx.run("left", plain, b).options(retry=PATIENT),
        ctx.run("right", plain, b + 1).options(retry=PATIENT),
    )
    yield from ctx.sleep("nap", timedelta(milliseconds=100))
    child = yield from ctx.invoke("child", chaos_child, Job(n=b))
    return (yield from ctx.run("last", effect, left + right + child).options(
        atomic=True, retry=PATIENT
    ))  # fmt: skip


TWO_ATTEMPTS = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=50))


def dies(marker: str) -> str:
    """Appends a line to ``marker``, then SIGKILLs the worker running it: every time."""
    with Path(marker).open("a") as file:
        file.write(f"{current_step().attempt}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


class Poison(BaseModel):
    marker: str
    atomic: bool


@workflow
def chaos_poison(ctx: Context, poison: Poison) -> Flow[str]:
    """A step that kills its worker on every attempt."""
    step = ctx.run("dies", dies, poison.marker)
    try:
        return (yield from step.options(retry=TWO_ATTEMPTS, atomic=poison.atomic))
    except StepFailed as exc:
        return f"gave up after {exc.attempts} attempts"
