"""Time Azure Durable Functions for Python replaying an n-activity history.

Method
------
An Azure Durable Functions orchestrator is a generator. The Durable extension
never keeps it alive between wake-ups: every time an activity completes, the
host hands the Python worker the orchestration context as JSON, carrying the
*whole* history, and ``azure-functions-durable`` rebuilds a
``DurableOrchestrationContext`` from it (one ``HistoryEvent`` per event, each
timestamp parsed with ``dateutil``), re-runs the generator from the top and
feeds it every recorded result until it reaches the new event.

This module builds that context JSON for an orchestration of n sequential
activities, in the shape the host sends and the library parses (the same
field names its own test ``ContextBuilder`` uses): ``history``,
``instanceId``, ``isReplaying``, ``parentInstanceId``, ``input``,
``upperSchemaVersion``. The history holds, per activity i, one episode::

    TaskScheduled(EventId=i, Name="step", Input=i)   # end of the previous episode
    OrchestratorCompleted
    OrchestratorStarted
    TaskCompleted(TaskScheduledId=i, Result='{"i": i, "value": "xxxxxxxxxxxxxxxx"}')

after the opening ``OrchestratorStarted`` and ``ExecutionStarted``, so 4n + 2
events: this ``"episodes"`` layout is what the host records for sequential
activities (each ``yield`` ends an episode). The ``"compact"`` layout keeps
only ``TaskScheduled`` + ``TaskCompleted`` per activity (2n + 2 events, one
long episode); the library replays it the same way, at about half the
parsing cost, so it gives a lower bound on the peer's cost. Timestamps
advance by a few milliseconds per event and are written with seven
fractional digits and a ``Z``, as the .NET host writes them.
Events before the last ``OrchestratorStarted`` carry ``IsPlayed: true``.

The timed unit is the library's own entry point, ``df.Orchestrator.create(orch)``,
called with the context JSON string, i.e. parse + replay + serialize the
reply, exactly what one wake-up costs the worker. The reply is checked: with
k = n completed activities it must say ``isDone: true``, hold n scheduled
actions and output the sum of the ``i`` the orchestrator got back.

The whole life of an n-step orchestration wakes the orchestrator once per
completed activity and replays k events at wake-up k, so its replay cost is
the sum over k = 1..n of replay(k): quadratic in n. :func:`whole_orchestration_cost`
measures every wake-up when that fits in a time budget and otherwise fits
replay(k) = a + b*k on a few measured k and sums the fit (reported as
``"extrapolated"``).

Caveats
-------
* Only the worker side is timed. The host's own work (reading the history from
  Azure Storage, the gRPC/HTTP hop, writing new events) is not included, so
  these figures are a lower bound on a wake-up.
* No timers, events or fan-out: one activity per episode, as the sequential
  workflows it is compared with.
* ``azure-functions`` here lacks the SDK's ``df_loads``, so the library uses
  its documented fallback (plain ``json.loads`` with a custom-object hook).

Run: ``uv run python benchmarks/peers/azure_df_replay.py --n 10 100 1000 --json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import azure.durable_functions as df

# The peers directory is a flat set of scripts: make its siblings importable
# whether this file is run by path, with ``-m``, or imported from elsewhere.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _stats import (  # noqa: E402
    ReplayStats,
    WholeOrchestrationStats,
    fit_growth,
    to_json_dict,
)

if TYPE_CHECKING:
    from collections.abc import Generator

PEER_NAME = "azure-functions-durable"

# Event type numbers from azure.durable_functions.models.history.HistoryEventType.
_EXECUTION_STARTED = 0
_TASK_SCHEDULED = 4
_TASK_COMPLETED = 5
_ORCHESTRATOR_STARTED = 12
_ORCHESTRATOR_COMPLETED = 13

HistoryLayout: TypeAlias = Literal["episodes", "compact"]

_ACTIVITY = "step"
_ORCHESTRATOR = "steps_orchestrator"


def steps_orchestrator(context: Any) -> Generator[Any, Any, int]:
    """n sequential activities; returns the sum of the ``i`` they returned."""
    n = int(context.get_input())
    total = 0
    for i in range(n):
        x = yield context.call_activity(_ACTIVITY, i)
        total += int(x["i"])
    return total


_handle = df.Orchestrator.create(steps_orchestrator)


def _host_timestamp(t: datetime) -> str:
    """The .NET host's format: seven fractional digits, then ``Z``."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def build_context_json(
    n: int, completed: int | None = None, *, layout: HistoryLayout = "episodes"
) -> str:
    """Context JSON for the wake-up after ``completed`` (default n) activities finished.

    The history has the opening pair, then per finished activity the four
    events shown in the module docstring (``layout="episodes"``), or only
    ``TaskScheduled`` + ``TaskCompleted`` (``layout="compact"``, one long
    episode; cheaper to parse, not what the host sends for sequential
    activities). With ``completed < n`` the orchestrator will schedule
    activity ``completed`` and not finish.
    """
    k = n if completed is None else completed
    if not 0 <= k <= n:
        raise ValueError("completed must be within 0..n")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    tick = timedelta(milliseconds=3)
    instance_id = uuid.uuid4().hex
    events: list[dict[str, Any]] = []

    def add(event_type: int, event_id: int = -1, **fields: Any) -> None:
        nonlocal t
        t += tick
        events.append(
            {
                "EventType": event_type,
                "EventId": event_id,
                "IsPlayed": False,  # fixed up below, once the last episode is known
                "Timestamp": _host_timestamp(t),
                **fields,
            }
        )

    add(_ORCHESTRATOR_STARTED)
    add(
        _EXECUTION_STARTED,
        Name=_ORCHESTRATOR,
        Version="",
        Input=json.dumps(n),
        OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": uuid.uuid4().hex},
        ParentInstance=None,
        Tags=None,
    )
    for i in range(k):
        add(_TASK_SCHEDULED, i, Name=_ACTIVITY, Version="", Input=json.dumps(i))
        if layout == "episodes":
            add(_ORCHESTRATOR_COMPLETED)
            add(_ORCHESTRATOR_STARTED)
        add(_TASK_COMPLETED, TaskScheduledId=i, Result=json.dumps({"i": i, "value": "x" * 16}))
    last_started = max(j for j, e in enumerate(events) if e["EventType"] == _ORCHESTRATOR_STARTED)
    for j, event in enumerate(events):
        event["IsPlayed"] = j < last_started
    context = {
        "history": events,
        "instanceId": instance_id,
        "isReplaying": last_started > 0,
        "parentInstanceId": None,
        "input": json.dumps(n),
        "upperSchemaVersion": 0,
    }
    return json.dumps(context)


def replay_once(context_json: str) -> tuple[float, dict[str, Any]]:
    """One wake-up through the library's handle: (seconds, decoded reply)."""
    t0 = time.perf_counter()
    reply = _handle(context_json)
    elapsed = time.perf_counter() - t0
    return elapsed, json.loads(reply)


def _check_final(reply: dict[str, Any], n: int) -> bool:
    actions = reply.get("actions", [])
    return (
        reply.get("isDone") is True
        and reply.get("output") == n * (n - 1) // 2
        and len(actions) == n
        and all(a[0].get("functionName") == _ACTIVITY for a in actions)
    )


def replay_azure(n: int, repeats: int = 3, *, layout: HistoryLayout = "episodes") -> ReplayStats:
    """Time ``repeats`` full replays of a finished n-activity orchestration.

    Raises ``RuntimeError`` if the library's reply does not show the
    orchestration completed with all n results consumed.
    """
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be at least 1")
    from azure.durable_functions.models.DurableOrchestrationContext import (
        DurableOrchestrationContext,
    )

    context_json = build_context_json(n, layout=layout)
    times: list[float] = []
    reply: dict[str, Any] = {}
    for _ in range(repeats):
        elapsed, reply = replay_once(context_json)
        times.append(elapsed)
        if not _check_final(reply, n):
            msg = f"replay of n={n} did not complete as expected: {str(reply)[:300]}"
            raise RuntimeError(msg)
    # How much of a wake-up is only rebuilding the context (JSON + timestamps).
    parse_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        DurableOrchestrationContext.from_json(context_json)
        parse_times.append(time.perf_counter() - t0)
    best = min(times)
    parse_share = min(parse_times) / best
    return ReplayStats(
        peer=PEER_NAME,
        n=n,
        repeats=repeats,
        replay_s=tuple(times),
        best_replay_s=best,
        median_replay_s=statistics.median(times),
        us_per_step=best / n * 1e6,
        history_json_bytes=len(context_json.encode()),
        output_ok=True,
        output_value=int(reply["output"]),
        notes=(
            f"history layout: {layout}, events: {(4 if layout == 'episodes' else 2) * n + 2}",
            f"context rebuild (DurableOrchestrationContext.from_json) share of best: "
            f"{parse_share:.0%}",
        ),
    )


def whole_orchestration_cost(
    n: int,
    *,
    budget_s: float = 20.0,
    sample_ks: tuple[int, ...] = (10, 50, 100, 200),
    layout: HistoryLayout = "episodes",
) -> WholeOrchestrationStats:
    """Replay cost over an n-activity orchestration's life: sum of replay(k), k = 1..n.

    Every wake-up is measured when a quick estimate of the sum fits in
    ``budget_s``; otherwise replay(k) = a + b*k is fitted by least squares
    over ``sample_ks`` (best of 3 each) and summed in closed form.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    samples: list[tuple[int, float]] = []
    for k in sorted({min(k, n) for k in sample_ks}):
        ctx = build_context_json(n, k, layout=layout)
        samples.append((k, min(replay_once(ctx)[0] for _ in range(3))))
    a, b = _fit_line(samples)
    estimate = n * a + b * n * (n + 1) / 2
    if estimate <= budget_s:
        total = 0.0
        for k in range(1, n + 1):
            elapsed, reply = replay_once(build_context_json(n, k, layout=layout))
            total += elapsed
            if k == n and not _check_final(reply, n):
                raise RuntimeError(f"final wake-up of n={n} did not complete")
        return WholeOrchestrationStats(
            peer=PEER_NAME,
            n=n,
            method="measured",
            total_s=total,
            us_per_step_used=b * 1e6,
            wakeups=n,
            replayed_steps=n * (n + 1) // 2,
            notes=(f"history layout: {layout}; every wake-up k=1..{n} timed once",),
        )
    return WholeOrchestrationStats(
        peer=PEER_NAME,
        n=n,
        method="extrapolated",
        total_s=estimate,
        us_per_step_used=b * 1e6,
        wakeups=n,
        replayed_steps=n * (n + 1) // 2,
        notes=(
            f"history layout: {layout}; replay(k) = {a * 1e6:.0f} us + {b * 1e6:.1f} us * k, "
            f"fitted on k in {[k for k, _ in samples]} (best of 3), summed over k=1..{n}",
        ),
    )


def _fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of time against k."""
    if len(points) == 1:
        k, t = points[0]
        return 0.0, t / k
    mean_k = sum(k for k, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    skk = sum((k - mean_k) ** 2 for k, _ in points)
    skt = sum((k - mean_k) * (t - mean_t) for k, t in points)
    slope = skt / skk
    return max(0.0, mean_t - slope * mean_k), slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--whole", type=int, nargs="*", default=[100, 1000], help="n for whole-life cost"
    )
    parser.add_argument("--budget", type=float, default=20.0, help="seconds to measure fully")
    parser.add_argument("--layout", choices=["episodes", "compact"], default="episodes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    layout: HistoryLayout = "compact" if args.layout == "compact" else "episodes"

    replays = [replay_azure(n, args.repeats, layout=layout) for n in args.n]
    wholes = [whole_orchestration_cost(n, budget_s=args.budget, layout=layout) for n in args.whole]
    growth = None
    if len({r.n for r in replays}) >= 2:
        growth = to_json_dict(fit_growth([(r.n, r.best_replay_s) for r in replays]))
    if args.json:
        doc = {
            "peer": PEER_NAME,
            "version": _peer_version(),
            "history_layout": layout,
            "replays": [to_json_dict(r) for r in replays],
            "replay_growth": growth,
            "whole_orchestration": [to_json_dict(w) for w in wholes],
        }
        print(json.dumps(doc, indent=2))
    else:
        for r in replays:
            print(
                f"replay n={r.n:>6}: best {r.best_replay_s * 1e3:10.2f} ms, "
                f"{r.us_per_step:7.1f} us/step, history {r.history_json_bytes / 1e3:9.1f} KB"
            )
        if growth is not None:
            print(
                f"one-replay growth: slope={growth['slope']:.2f}, "
                f"tail slope={growth['tail_slope']:.2f} ({growth['classification']})"
            )
        for w in wholes:
            print(f"whole n={w.n:>6}: {w.total_s:9.2f} s ({w.method})")
    return 0


def _peer_version() -> str:
    from importlib.metadata import version

    return version("azure-functions-durable")


if __name__ == "__main__":
    raise SystemExit(main())
