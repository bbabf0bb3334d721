"""Workflows and a test endpoint for the QStash webhook and end-to-end tests.

Each step function counts its executions per (run, position) in a
module-level counter, so a test can tell a step that ran twice. The live
server answers on threads of this process, so the counter sees them all.
"""

from __future__ import annotations

import collections
import json
import threading
from datetime import timedelta

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel

from hookflow_gen import Context, Flow, current_step, workflow

_lock = threading.Lock()
EXECUTIONS: collections.Counter[tuple[str, int]] = collections.Counter()
CALLS: collections.Counter[str] = collections.Counter()


def executions(run_id: str) -> dict[int, int]:
    """How many times each position of the run executed a step function."""
    with _lock:
        return {pos: n for (rid, pos), n in EXECUTIONS.items() if rid == run_id}


def reset() -> None:
    """Forget every count."""
    with _lock:
        EXECUTIONS.clear()
        CALLS.clear()


def _count() -> None:
    info = current_step()
    with _lock:
        EXECUTIONS[(info.run_id, info.position)] += 1


class Count(BaseModel):
    """How many steps to run."""

    n: int


class Nap(BaseModel):
    """How long to sleep between two steps."""

    seconds: float


class Wait(BaseModel):
    """The event key to wait on."""

    key: str


class Approval(BaseModel):
    """The event a waiting run receives."""

    approved_by: str


class Fetch(BaseModel):
    """The URL a call step requests."""

    url: str


class Echo(BaseModel):
    """What the echo endpoint answers."""

    echoed: str


def bump(total: int) -> int:
    """Add one (a step)."""
    _count()
    return total + 1


def square(x: int) -> int:
    """Square (a step)."""
    _count()
    return x * x


@workflow(name="qstash_linear")
def linear(ctx: Context, payload: Count) -> Flow[int]:
    """``n`` steps one after another."""
    total = 0
    for i in range(payload.n):
        total = yield from ctx.run(f"step-{i}", bump, total)
    return total


@workflow(name="qstash_mixed")
def mixed(ctx: Context, payload: Count) -> Flow[int]:
    """``n`` steps with a one-second sleep after every quarter."""
    total = 0
    for i in range(payload.n):
        total = yield from ctx.run(f"step-{i}", bump, total)
        if payload.n >= 4 and (i + 1) % (payload.n // 4) == 0 and i + 1 < payload.n:
            yield from ctx.sleep(f"nap-{i}", timedelta(seconds=1))
    return total


@workflow(name="qstash_sleepy")
def sleepy(ctx: Context, payload: Nap) -> Flow[int]:
    """A step, a sleep, a step."""
    first = yield from ctx.run("before", bump, 0)
    yield from ctx.sleep("nap", timedelta(seconds=payload.seconds))
    return (yield from ctx.run("after", bump, first))


@workflow(name="qstash_waiter")
def waiter(ctx: Context, payload: Wait) -> Flow[str]:
    """Wait for an approval event."""
    yield from ctx.run("ask", bump, 0)
    approval = yield from ctx.wait_for_event("approval", Approval, key=payload.key)
    return approval.approved_by


@workflow(name="qstash_fan")
def fan(ctx: Context, payload: Count) -> Flow[int]:
    """Three branches in parallel, then one more step."""
    a, b, c = yield from ctx.gather(
        ctx.run("a", square, payload.n),
        ctx.run("b", square, payload.n + 1),
        ctx.run("c", square, payload.n + 2),
    )
    return (yield from ctx.run("sum", bump, a + b + c))


@workflow(name="qstash_parent")
def parent(ctx: Context, payload: Count) -> Flow[int]:
    """Invoke a linear child run and add one to its result."""
    child = yield from ctx.invoke("child", linear, Count(n=payload.n))
    return (yield from ctx.run("after-child", bump, child))


@workflow(name="qstash_caller")
def caller(ctx: Context, payload: Fetch) -> Flow[str]:
    """Call an HTTP endpoint through the scheduler, then a step."""
    response = yield from ctx.call(
        "fetch", payload.url, method="POST", body={"text": "hi"}, response_model=Echo
    )
    yield from ctx.run("after-call", bump, 0)
    return response.body.echoed


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    """The endpoint the ``call`` step requests: echoes ``text``, counts its calls."""
    data = json.loads(request.body or b"{}")
    with _lock:
        CALLS[str(data.get("text"))] += 1
    return JsonResponse({"echoed": str(data.get("text"))})


urlpatterns = [
    path("hookflow/", include("hookflow_gen.django.urls")),
    path("echo/", echo, name="echo"),
]
