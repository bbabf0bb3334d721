"""Each retried attempt's times and error in the journal: written only when a step retries."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RetryPolicy, current_step, workflow
from hookflow_gen.django.models import Step
from tests.conftest import run_worker

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db

RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=2))
_CLOCK: list[FakeClock] = []


class Job(BaseModel):
    fail_times: int = 0
    die: bool = False


class WorkerDied(BaseException):
    """Stands for the worker process dying in the middle of a step."""


def work(fail_times: int, die: bool) -> str:
    attempt = current_step().attempt
    _CLOCK[0].advance(0.25)  # each attempt takes 250 ms
    if die and attempt == 1:
        raise WorkerDied
    if attempt <= fail_times:
        raise TimeoutError(f"attempt {attempt} timed out")
    return f"attempt {attempt}"


@workflow(name="attempt-times")
def timed(ctx: Context, job: Job) -> Flow[str]:
    yield from ctx.run("one-try", work, 0, False)
    return (yield from ctx.run("flaky", work, job.fail_times, job.die).options(retry=RETRY))


@pytest.fixture(autouse=True)
def _clock(clock: FakeClock) -> None:
    _CLOCK[:] = [clock]


def test_each_retried_attempt_keeps_its_times_and_error(runtime: Runtime, clock: FakeClock) -> None:
    """Two failed attempts are stored with start, end, error and retry time; a first try none."""
    handle = timed.start(Job(fail_times=2))
    run_worker(runtime)
    assert handle.result() == "attempt 3"
    one, flaky = Step.objects.filter(run_id=handle.run_id).order_by("position")
    assert one.past_attempts is None  # the common case writes nothing extra
    assert flaky.attempts == 3
    past: list[dict[str, object]] = flaky.past_attempts
    assert [(a["attempt"], a["error_type"], a["message"]) for a in past] == [
        (1, "builtins.TimeoutError", "attempt 1 timed out"),
        (2, "builtins.TimeoutError", "attempt 2 timed out"),
    ]
    record = handle.steps()[1]
    first, second = record.past_attempts
    assert first.started_at is not None and second.started_at is not None
    assert first.ended_at - first.started_at == timedelta(seconds=0.25)
    assert first.retry_at == first.ended_at + timedelta(seconds=2)
    assert second.started_at == first.retry_at  # the worker took it as soon as it was due
    assert second.retry_at == second.ended_at + timedelta(seconds=4)
    assert record.completed_at is not None and second.retry_at is not None
    assert record.completed_at - second.retry_at == timedelta(seconds=0.25)


def test_a_lapsed_attempt_is_kept_when_the_step_is_tried_again(
    runtime: Runtime, clock: FakeClock
) -> None:
    """An attempt whose worker died counts once its lease lapses, and is kept with its times."""
    handle = timed.start(Job(die=True))
    with pytest.raises(WorkerDied):
        runtime.tick(handle.run_id)
    clock.advance(runtime.lease)
    run_worker(runtime)
    assert handle.result() == "attempt 2"
    (lapsed,) = handle.steps()[1].past_attempts
    assert lapsed.attempt == 1
    assert lapsed.error_type == "hookflow_gen._runtime._core._LeaseLapsed"
    assert "stopped before it finished" in lapsed.message
    assert lapsed.started_at is not None
    assert lapsed.ended_at - lapsed.started_at == runtime.lease
