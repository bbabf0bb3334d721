"""The pieces the testing kit's drivers share: a fake clock and a runtime with stubbed steps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .._runtime import Runtime
from .._steps import CallStep, LeafStep, RunStep

__all__ = ["EPOCH", "FakeClock", "Stub", "StubRuntime"]

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told to (or when the runtime sleeps on it)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware start time")
        self._now = start
        self._origin = start

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._origin).total_seconds()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += timedelta(seconds=seconds)

    def advance(self, delta: timedelta | float) -> None:
        """Move the clock forward."""
        self.sleep(delta.total_seconds() if isinstance(delta, timedelta) else delta)


Stub = Callable[..., Any] | object


class StubRuntime(Runtime):
    """The real runtime with some steps stubbed out by name."""

    def __init__(self, stubs: dict[str, Stub], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stubs = stubs
        self.executor.route = self.call_step

    def call_step(self, step: LeafStep, *, timeout: float | None = None) -> Any:
        """One attempt's call: the stub named like the step, else the real function."""
        if step.name in self.stubs:
            stub = self.stubs[step.name]
            if isinstance(stub, BaseException):
                raise stub
            if callable(stub):
                if isinstance(step, RunStep):
                    return stub(*step.args, **step.kwargs)
                return stub(step)
            if isinstance(step, CallStep):
                return {"status": 200, "headers": {}, "body": stub}
            return stub
        return self.executor.call(step, timeout=timeout)
