"""The runtime: ``Runtime.tick`` drives a run's workflow against its stored journal.

The package is split along its seams, behind the ``Runtime`` facade:

- ``_core``: the tick (claims, leases, checkpoints, cancellation delivery);
- ``_execute``: running one attempt of a step (threads, event loops,
  timeouts, HTTP) and ``current_step()``;
- ``_events``: ``notify`` and event waits;
- ``_lifecycle``: start, cancel, resume, child runs;
- ``_updates``: accepting updates and recording replies;
- ``_poison``: bounding ticks that keep raising;
- ``_transitions``: every legal change of a step or run, and the invariant;
- ``_warm``: the cache of live generators;
- ``_base``: what they share.
"""

from ._base import TickReport, check_id
from ._core import Runtime, waiting_children
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
    "check_id",
    "current_step",
    "http_call",
    "waiting_children",
]
