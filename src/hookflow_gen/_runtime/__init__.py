"""The runtime: ``Runtime.tick`` drives a run's workflow against its stored journal.

The package is split along its seams, behind the ``Runtime`` facade:

- ``_core``: the tick, claiming and leases, checkpoints, run lifecycle;
- ``_execute``: running one attempt of a step (threads, event loops,
  timeouts, HTTP) and ``current_step()``;
"""

from ._core import Runtime, TickReport, waiting_children
from ._execute import (
    CallDispatcher,
    CallExecutor,
    StepInfo,
    call_response,
    current_step,
    http_call,
)

__all__ = [
    "CallDispatcher",
    "CallExecutor",
    "Runtime",
    "StepInfo",
    "TickReport",
    "call_response",
    "current_step",
    "http_call",
    "waiting_children",
]
