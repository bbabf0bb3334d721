"""Typed access to the parts of the Upstash Workflow SDK the contract tests use.

``upstash-workflow`` ships no type information, so the tests talk to it
through this module: a Protocol for the context and one typed function for
serving a workflow with Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from upstash_workflow.flask import Serve  # type: ignore[import-untyped]  # ships no py.typed

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["CallResult", "WorkflowContext", "flask_serve"]


class CallResult(Protocol):
    """What ``context.call`` returns."""

    status: int
    body: Any
    header: dict[str, list[str]]


class WorkflowContext(Protocol):
    """The SDK's ``WorkflowContext``, as far as the tests use it."""

    request_payload: Any
    workflow_run_id: str

    def run(self, step_name: str, step_function: Callable[[], Any]) -> Any: ...

    def sleep(self, step_name: str, duration: int | str) -> None: ...

    def sleep_until(self, step_name: str, date_time: float) -> None: ...

    def call(
        self,
        step_name: str,
        *,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> CallResult: ...


Route = Callable[[WorkflowContext], None]


def flask_serve(app: Flask, path: str, **options: Any) -> Callable[[Route], Route]:
    """``upstash_workflow.flask.Serve(app).route(path, **options)``, typed."""
    # Held as Any: the SDK's annotations leave WorkflowContext's payload type unknown.
    serve: Any = Serve(app)
    return cast("Callable[[Route], Route]", serve.route(path, **options))
