"""OpenTelemetry spans: a tick span per tick, a step span per attempt, parented on ``start``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RetryPolicy, RunStatus, workflow
from hookflow_gen._tracing import OpenTelemetryTracer
from hookflow_gen.django.models import Run
from tests.conftest import run_worker

if TYPE_CHECKING:
    from hookflow_gen._runtime import Runtime

pytestmark = pytest.mark.django_db(transaction=True)


class Job(BaseModel):
    fail_times: int = 0


_tries: dict[str, int] = {}


def once_flaky(key: str, fail_times: int) -> int:
    _tries[key] = _tries.get(key, 0) + 1
    if _tries[key] <= fail_times:
        raise ConnectionError("lost the connection")
    return _tries[key]


@workflow(name="tracing-flow")
def traced(ctx: Context, job: Job) -> Flow[int]:
    first = yield from ctx.run("fetch", once_flaky, ctx.info.run_id, job.fail_times).options(
        retry=RetryPolicy(initial_interval=timedelta(seconds=1))
    )
    yield from ctx.sleep("pause", 10)
    second = yield from ctx.run("store", once_flaky, ctx.info.run_id + "-store", 0)
    return first + second


@workflow(name="tracing-parent")
def traced_parent(ctx: Context, job: Job) -> Flow[int]:
    return (yield from ctx.invoke("child", traced, job))


class Laps(BaseModel):
    left: int


@workflow(name="tracing-continuing")
def traced_chain(ctx: Context, laps: Laps) -> Flow[int]:
    yield from ctx.run("lap", str, laps.left)
    if laps.left:
        return (yield from ctx.continue_as_new(traced_chain, Laps(left=laps.left - 1)))
    return 0


@pytest.fixture
def provider(runtime: Runtime) -> Iterator[TracerProvider]:
    """The runtime traces into a provider of its own (``exporter`` holds what it exports)."""
    provider = TracerProvider()
    before = runtime.tracer
    runtime.tracer = OpenTelemetryTracer(provider)
    yield provider
    runtime.tracer = before
    provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    """The finished spans of ``provider``."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def test_ticks_and_attempts_are_spans_under_the_start(
    runtime: Runtime, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Each tick is a span under the span ``start`` was called in; each attempt one under it."""
    app = provider.get_tracer("the-application")
    with app.start_as_current_span("POST /checkout") as request:
        handle = traced.start(Job(fail_times=1))
    stored = Run.objects.get(pk=handle.run_id).traceparent
    context = request.get_span_context()
    flags = int(context.trace_flags)
    assert stored == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    run_worker(runtime)
    assert handle.result() == 3
    spans = exporter.get_finished_spans()
    ticks = _named(spans, "tick ")
    steps = _named(spans, "step ")
    assert ticks, "no tick span"
    for tick in ticks:
        assert tick.name == "tick tracing-flow"
        assert tick.parent is not None
        assert tick.parent.span_id == context.span_id
        assert tick.context is not None
        assert tick.context.trace_id == context.trace_id
        assert tick.attributes is not None
        assert tick.attributes["hookflow.run.id"] == handle.run_id
        assert tick.attributes["hookflow.workflow"] == "tracing-flow"
    assert ticks[-1].attributes is not None
    assert ticks[-1].attributes["hookflow.run.status"] == "completed"
    by_id = {tick.context.span_id: tick for tick in ticks if tick.context is not None}
    rows: list[tuple[object, ...]] = []
    for step in steps:
        assert step.parent is not None and step.parent.span_id in by_id
        attributes = step.attributes
        assert attributes is not None
        rows.append(
            (
                step.name,
                attributes["hookflow.step.name"],
                attributes["hookflow.step.position"],
                attributes["hookflow.step.attempt"],
                attributes["hookflow.step.outcome"],
                attributes["hookflow.run.id"],
                step.status.status_code,
            )
        )
    run_id = handle.run_id
    assert rows == [
        ("step fetch", "fetch", 0, 1, "failed", run_id, StatusCode.ERROR),
        ("step fetch", "fetch", 0, 2, "completed", run_id, StatusCode.UNSET),
        ("step store", "store", 2, 1, "completed", run_id, StatusCode.UNSET),
    ]
    failed = steps[0]
    assert [event.name for event in failed.events] == ["exception"]


def test_a_tick_in_another_thread_takes_its_parent_from_the_run(
    runtime: Runtime, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A worker thread shares no context with the caller: the stored traceparent parents it."""
    app = provider.get_tracer("the-application")
    with app.start_as_current_span("enqueue") as caller:
        handle = traced.start(Job())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(runtime)
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(120)
    assert not worker.is_alive() and not errors
    assert handle.status is RunStatus.COMPLETED
    ticks = _named(exporter.get_finished_spans(), "tick ")
    assert ticks
    expected = caller.get_span_context()
    for tick in ticks:
        assert tick.parent is not None
        assert (tick.parent.trace_id, tick.parent.span_id) == (
            expected.trace_id,
            expected.span_id,
        )


def test_a_child_run_is_traced_under_its_parents_tick(
    runtime: Runtime, exporter: InMemorySpanExporter
) -> None:
    """``invoke`` starts the child inside the parent's tick span: the child's ticks hang there."""
    handle = traced_parent.start(Job())
    assert Run.objects.get(pk=handle.run_id).traceparent is None  # started outside any span
    run_worker(runtime)
    assert handle.result() == 2
    spans = exporter.get_finished_spans()
    parent_ticks = _named(spans, "tick tracing-parent")
    child_ticks = _named(spans, "tick tracing-flow")
    assert parent_ticks and child_ticks
    first = parent_ticks[0]
    assert first.parent is None  # a root: nothing was current at start
    assert first.context is not None
    for tick in child_ticks:
        assert tick.parent is not None
        assert tick.parent.span_id == first.context.span_id


def test_no_tracer_stores_no_traceparent(runtime: Runtime) -> None:
    """With tracing off a run keeps no trace context and ticks open no span."""
    runtime.tracer = None
    handle = traced.start(Job())
    run_worker(runtime)
    assert handle.result() == 2
    assert Run.objects.get(pk=handle.run_id).traceparent is None


def test_the_tracing_setting_turns_spans_off() -> None:
    """``TRACING: False`` builds no tracer; by default an installed opentelemetry traces."""
    from hookflow_gen.django import apps
    from hookflow_gen.django._settings import HookflowSettings

    assert apps.build_tracer(HookflowSettings.from_dict({"TRACING": False})) is None
    assert isinstance(apps.build_tracer(HookflowSettings.from_dict({})), OpenTelemetryTracer)
    from hookflow_gen.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"HOOKFLOW\['TRACING'\] must be True or False"):
        HookflowSettings.from_dict({"TRACING": "yes"})


def test_no_spans_until_a_provider_records_them() -> None:
    """On the global provider nobody set (the API alone), ticks open no span: nothing records."""
    from opentelemetry import trace

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert OpenTelemetryTracer().tick("any-run") is None
    assert OpenTelemetryTracer(TracerProvider()).tick("any-run") is not None


def test_a_chain_continued_as_new_stays_in_the_start_trace(
    runtime: Runtime, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Every run of a continue-as-new chain ticks under the span that started its first run."""
    app = provider.get_tracer("the-application")
    with app.start_as_current_span("POST /sync") as request:
        handle = traced_chain.start(Laps(left=2))
    run_worker(runtime)
    assert handle.result() == 0
    context = request.get_span_context()
    ticks = _named(exporter.get_finished_spans(), "tick ")
    run_ids = {
        str(tick.attributes["hookflow.run.id"]) for tick in ticks if tick.attributes is not None
    }
    assert len(run_ids) == 3, run_ids
    for tick in ticks:
        assert tick.parent is not None and tick.parent.span_id == context.span_id
