"""Race, patching and call answers on the Django store and the database worker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.core.management import call_command
from pydantic import BaseModel

import hookflow_gen
from hookflow_gen import Context, Flow, RetryPolicy, RunStatus, Workflow, workflow
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]  # a deploy
from hookflow_gen.django.models import Run, Step
from hookflow_gen.testing import replay
from tests.conftest import run_worker

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db


class Key(BaseModel):
    key: str


class Vote(BaseModel):
    by: str


@workflow(name="features-vote-or-deadline")
def vote_or_deadline(ctx: Context, payload: Key) -> Flow[str]:
    won = yield from ctx.race(
        ctx.wait_for_event("vote", Vote, key=payload.key), ctx.sleep("deadline", 3600)
    )
    if won.index == 0:
        return f"vote by {won.value.by}"
    return "deadline"


def _journal(run_id: str) -> list[tuple[int, str, str]]:
    return list(
        Step.objects.filter(run_id=run_id)
        .order_by("position")
        .values_list("position", "kind", "status")
    )


def test_event_wins_a_race_on_the_database_scheduler(runtime: Runtime) -> None:
    """An event beats a one-hour timer; the timer is stored cancelled and the run ends."""
    handle = vote_or_deadline.start(Key(key="features-1"))
    run_worker(runtime, once=True)
    assert handle.status is RunStatus.RUNNING
    assert hookflow_gen.notify("features-1", {"by": "ann"}) == 1
    run_worker(runtime)
    assert handle.result() == "vote by ann"
    assert _journal(handle.run_id) == [
        (0, "event", "completed"),
        (1, "sleep", "failed"),
        (2, "race", "completed"),
    ]
    timer = Step.objects.get(run_id=handle.run_id, position=1)
    assert "StepCancelled" in str(timer.error)
    assert replay(vote_or_deadline, Key(key="features-1"), handle.steps()).finished


def test_timer_wins_a_race_on_the_database_scheduler(runtime: Runtime, clock: FakeClock) -> None:
    """The timer fires first; the event wait is cancelled, so a late event is buffered."""
    handle = vote_or_deadline.start(Key(key="features-2"))
    run_worker(runtime, once=True)
    clock.advance(3600)
    run_worker(runtime)
    assert handle.result() == "deadline"
    assert _journal(handle.run_id)[0] == (0, "event", "failed")
    assert hookflow_gen.notify("features-2", {"by": "late"}) == 0


class Tries(BaseModel):
    key: str
    failures: int


_tries: dict[str, int] = {}


def _flaky_once(key: str, failures: int) -> int:
    _tries[key] = _tries.get(key, 0) + 1
    if _tries[key] <= failures:
        raise ConnectionError(f"try {_tries[key]} failed")
    return _tries[key]


@workflow(name="features-flaky-child", retry=RetryPolicy(maximum_attempts=1))
def flaky_child(ctx: Context, payload: Tries) -> Flow[int]:
    return (yield from ctx.run("flaky", _flaky_once, payload.key, payload.failures))


@workflow(name="features-retrying-parent")
def retrying_parent(ctx: Context, payload: Tries) -> Flow[int]:
    policy = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=30))
    return (yield from ctx.invoke("child", flaky_child, payload, retry=policy))


def test_invoke_retries_children_on_the_database_scheduler(runtime: Runtime) -> None:
    """A failed child is followed by a new child run after the back-off, via the worker."""
    handle = retrying_parent.start(Tries(key=f"features-{id(runtime)}", failures=1))
    run_worker(runtime)
    assert handle.result() == 2
    children = dict(Run.objects.filter(parent_run_id=handle.run_id).values_list("run_id", "status"))
    assert children == {
        f"{handle.run_id}-0": "failed",
        f"{handle.run_id}-0-attempt-2": "completed",
    }
    assert replay(retrying_parent, Tries(key="x", failures=1), handle.steps()).finished


def _old_greeting(ctx: Context, payload: Key) -> Flow[str]:
    greeting = yield from ctx.run("greet", str.upper, payload.key)
    yield from ctx.sleep("wait", 60)
    return greeting


def _new_greeting(ctx: Context, payload: Key) -> Flow[str]:
    if ctx.patched("greet-v2"):
        greeting = yield from ctx.run("greet-v2", str.title, payload.key)
    else:
        greeting = yield from ctx.run("greet", str.upper, payload.key)
    yield from ctx.sleep("wait", 60)
    return greeting


GREETING = "features-greeting"


@pytest.fixture
def deployed() -> Iterator[dict[str, Workflow[Any, Any]]]:
    """The greeting workflow's registry entry, swapped the way a deploy swaps code."""
    _registry[GREETING] = Workflow(_old_greeting, name=GREETING)
    try:
        yield _registry
    finally:
        _registry.pop(GREETING, None)


def test_patched_runs_replay_with_the_command(
    runtime: Runtime, clock: FakeClock, deployed: dict[str, Workflow[Any, Any]]
) -> None:
    """Runs from before and after a patch both finish, and `hookflow replay` accepts both."""
    old = deployed[GREETING].start(Key(key="old run"))
    run_worker(runtime, once=True)  # the old code greets, then sleeps
    new_code = Workflow(_new_greeting, name=GREETING)
    deployed[GREETING] = new_code
    runtime.close()  # a new process: no warm generator of the old code
    new = new_code.start(Key(key="new run"))
    clock.advance(60)
    run_worker(runtime)
    assert old.result() == "OLD RUN"
    assert new.result() == "New Run"
    assert [k for _, k, _ in _journal(new.run_id)] == ["patch", "run", "sleep"]
    out = io.StringIO()
    call_command("hookflow", "replay", "--workflow", GREETING, stdout=out)
    assert "2 run(s) replay deterministically" in out.getvalue()


class Url(BaseModel):
    url: str


@workflow(name="features-lenient-call")
def lenient_call(ctx: Context, payload: Url) -> Flow[str]:
    answer = yield from ctx.call("page", payload.url, raise_for_status=False)
    return f"{answer.status} ok={answer.ok} {answer.headers.get('content-type', '?')[:9]}"


@pytest.mark.urls("tests.e2e.flows")
@pytest.mark.django_db(transaction=True)
def test_a_404_answer_is_a_value_over_http(runtime: Runtime, live_server: Any) -> None:
    """Under raise_for_status=False the worker records a real 404 as the step's answer."""
    handle = lenient_call.start(Url(url=f"{live_server.url}/no-such-page/"))
    run_worker(runtime)
    assert handle.result() == "404 ok=False text/html"
    (call,) = handle.steps()
    assert (call.status, call.attempts) == ("completed", 1)
