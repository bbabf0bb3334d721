"""The workflow and URLs of the QStash crash-and-fault suite (``test_qstash_chaos``).

The web server under test is another process, so every effect is a row:
each plain step records an ``Execution`` when it starts and marks it
finished when it returns (a step in flight is a row with ``finished = 0``);
each atomic step writes an ``Entry`` in its own transaction, exactly once
if the runtime keeps its promise.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RetryPolicy, current_step, step, workflow
from tests.djangoapp.models import Entry, Execution


class Chaos(BaseModel):
    """One run of the suite: its index, how long plain steps take, where to call."""

    index: int
    delay: float
    echo_url: str


class Echo(BaseModel):
    """What the echo endpoint answers."""

    echoed: str


def plain(value: int, delay: float) -> int:
    """A non-atomic step: a row when it starts, a pause, the row marked finished."""
    info = current_step()
    row = Execution.objects.create(
        run_id=info.run_id, position=info.position, name=info.step_name, attempt=info.attempt,
        started=time.time(),
    )  # fmt: skip
    time.sleep(delay)
    Execution.objects.filter(pk=row.pk).update(finished=time.time())
    return value + 1


@step(atomic=True)
def write(label: str, value: int) -> int:
    """An atomic step: its ``Entry`` commits with its checkpoint, so exactly once."""
    Entry.objects.create(label=label)
    return value + 10


# Every kill of the site is a failed attempt of each step it cut short (a lapsed
# lease counts): give steps room for the suite's many kills.
@workflow(name="chaos_mix", retry=RetryPolicy(maximum_attempts=20))
def mix(ctx: Context, payload: Chaos) -> Flow[int]:
    """Plain and atomic steps, a gather, a call through QStash, a short sleep."""
    run = ctx.info.run_id
    total = yield from ctx.run("first", plain, 0, payload.delay)
    total = yield from ctx.run("atomic-1", write, f"{run}:atomic-1", total)
    a, b, c = yield from ctx.gather(
        ctx.run("branch-a", plain, total, payload.delay),
        ctx.run("branch-b", plain, total, payload.delay),
        ctx.run("branch-c", write, f"{run}:branch-c", total),
    )
    answer = yield from ctx.call(
        "fetch", payload.echo_url, method="POST", body={"text": str(payload.index)},
        response_model=Echo,
    )  # fmt: skip
    yield from ctx.sleep("nap", timedelta(milliseconds=200))
    total = yield from ctx.run("last", plain, a + b + c + int(answer.body.echoed), payload.delay)
    return (yield from ctx.run("atomic-2", write, f"{run}:atomic-2", total))


def expected(index: int) -> int:
    """The result of run ``index``: first 1, atomic 11, gather 12+12+21, call index, ..."""
    return 12 + 12 + 21 + index + 1 + 10


ATOMIC_STEPS = ("atomic-1", "branch-c", "atomic-2")
PLAIN_STEPS = ("first", "branch-a", "branch-b", "last")


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    """The endpoint the ``call`` step requests (through QStash): echoes ``text``."""
    data = json.loads(request.body or b"{}")
    return JsonResponse({"echoed": str(data.get("text"))})


urlpatterns = [
    path("hookflow/", include("hookflow_gen.django.urls")),
    path("echo/", echo, name="echo"),
]
