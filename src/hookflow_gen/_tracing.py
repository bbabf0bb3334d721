"""OpenTelemetry spans for ticks and step attempts (the ``otel`` extra).

``OpenTelemetryTracer`` fills the runtime's ``tracer`` seam: one span per
tick (``tick <workflow>``) and one per step attempt (``step <name>``, a
child of its tick), with attributes under the ``hookflow.`` prefix. The
trace context current at ``start`` is stored with the run as a W3C
``traceparent`` and becomes the parent of every tick span of the run, in
whichever process the tick runs; a child run started by ``invoke`` is
parented on its parent's tick.

This module imports ``opentelemetry`` (``opentelemetry-api``) when it is
imported itself; nothing else in hookflow_gen does, so hookflow_gen works
without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._journal import StepRecord
from ._store import RunState, RunStatus

__all__ = ["ATTRIBUTES", "OpenTelemetryTracer"]

#: The span attributes, by what they hold.
ATTRIBUTES = {
    "run_id": "hookflow.run.id",
    "workflow": "hookflow.workflow",
    "status": "hookflow.run.status",
    "steps_run": "hookflow.tick.steps_run",
    "step": "hookflow.step.name",
    "kind": "hookflow.step.kind",
    "position": "hookflow.step.position",
    "attempt": "hookflow.step.attempt",
    "outcome": "hookflow.step.outcome",
}
_RUN_ID = ATTRIBUTES["run_id"]
_WORKFLOW = ATTRIBUTES["workflow"]

_propagator = TraceContextTextMapPropagator()
# What the global provider is before an application sets one: nothing records.
_NO_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


class _TickSpan:
    """A tick's span: begun once the tick has read its run, so under its stored parent."""

    __slots__ = ("_run_id", "_span", "_start", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, run_id: str) -> None:
        self._tracer = tracer
        self._run_id = run_id
        self._start = time.time_ns()
        self._span: Span | None = None
        self._token: Token[Context] | None = None

    def begin(self, run: RunState) -> None:
        if self._span is not None:
            return
        parent = None
        if run.traceparent:
            parent = _propagator.extract({"traceparent": run.traceparent})
        span = self._tracer.start_span(
            f"tick {run.workflow}",
            context=parent,
            kind=SpanKind.INTERNAL,
            start_time=self._start,
            attributes={_RUN_ID: run.run_id, _WORKFLOW: run.workflow},
        )
        self._span = span
        # Current for the rest of the tick: attempt spans and child runs hang under it.
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def end(self, status: RunStatus | None, steps_run: int, error: BaseException | None) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if status is not None:
            span.set_attribute(ATTRIBUTES["status"], status.value)
        span.set_attribute(ATTRIBUTES["steps_run"], steps_run)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


class _AttemptSpan:
    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def settle(self, error: BaseException | None) -> None:
        span = self.span
        if error is None:
            span.set_attribute(ATTRIBUTES["outcome"], "completed")
            return
        span.set_attribute(ATTRIBUTES["outcome"], "failed")
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class OpenTelemetryTracer:
    """The runtime's ``tracer`` on OpenTelemetry's global tracer provider.

    Args:
        tracer_provider: the provider to take the tracer from (default: the
            global one, as ``opentelemetry.trace.get_tracer`` does).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("hookflow_gen", tracer_provider=tracer_provider)
        self._global = tracer_provider is None

    def inject(self) -> str | None:
        """The current span's context as a ``traceparent``, or None outside any span."""
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        return carrier.get("traceparent")

    def tick(self, run_id: str) -> _TickSpan | None:
        """A tick span for ``run_id``, begun by its ``begin``; None while nothing records spans.

        On the global provider, spans are opened only once the application
        has set a real one (an SDK's): until then the API's no-op spans would
        cost each step for nothing.
        """
        if self._global and isinstance(trace.get_tracer_provider(), _NO_RECORDING):
            return None
        return _TickSpan(self._tracer, run_id)

    @contextlib.contextmanager
    def attempt(
        self, run: RunState, record: StepRecord, position: int
    ) -> Generator[_AttemptSpan, None, None]:
        """A span around one attempt, current while the step function runs."""
        attributes: dict[str, Any] = {
            _RUN_ID: run.run_id,
            _WORKFLOW: run.workflow,
            ATTRIBUTES["step"]: record.name,
            ATTRIBUTES["kind"]: record.kind,
            ATTRIBUTES["position"]: position,
            ATTRIBUTES["attempt"]: record.attempts,
        }
        with self._tracer.start_as_current_span(
            f"step {record.name}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _AttemptSpan(span)
