"""Result records shared by the peer harnesses, and a growth-order fit.

The peer harnesses in this directory (``django_hookflow_harness.py``,
``azure_df_replay.py``) return the frozen dataclasses defined here and print
them as JSON through :func:`to_json_dict`, so a suite running them in a
subprocess gets one stable shape per peer.

:func:`fit_growth` fits ``log(time) = slope * log(n) + c`` by ordinary least
squares over (n, time) points and names the growth: a slope near 1 is linear,
near 2 quadratic. Timings at small n carry fixed per-run and per-step
overhead (Django request handling, for one) that flattens the overall slope
of a cost that is quadratic only asymptotically, so the fit also reports the
*tail slope* between the two largest n, and classifies by the tail slope when
there are three or more distinct n. Read the class as a hint, not a proof;
use points at least a decade apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

GrowthClass = Literal["constant", "sublinear", "linear", "superlinear", "quadratic", "cubic+"]


@dataclass(frozen=True)
class PeerRunStats:
    """One complete workflow run driven by a message-per-step peer.

    ``message_bytes`` lists the body size of every message the peer published,
    in publish order (the first is the trigger). ``wall_s`` is the whole run as
    the harness saw it, including the harness's own delivery loop;
    ``handler_s`` is only the time spent inside the peer's webhook view.
    """

    peer: str
    n: int
    mixed: bool
    messages: int
    message_bytes: tuple[int, ...]
    total_bytes: int
    last_message_bytes: int
    max_message_bytes: int
    deliveries: int
    sleeps: int
    virtual_delay_s: float
    wall_s: float
    handler_s: float
    result_ok: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplayStats:
    """Timing of one peer's replay of an n-step history.

    ``replay_s`` holds the wall time of each repeat of one full replay of n
    completed steps; ``us_per_step`` is the best repeat divided by n (the
    minimum is the least disturbed by other work on a shared machine).
    """

    peer: str
    n: int
    repeats: int
    replay_s: tuple[float, ...]
    best_replay_s: float
    median_replay_s: float
    us_per_step: float
    history_json_bytes: int
    output_ok: bool
    output_value: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WholeOrchestrationStats:
    """Total replay cost over the life of an n-step orchestration.

    A replaying engine wakes the orchestrator once per completed step and
    replays the whole history each time, so the life cost is the sum over
    wake-ups k = 1..n of replaying k events. ``method`` says whether every
    wake-up was timed (``"measured"``) or the sum was computed from a measured
    per-step cost (``"extrapolated"``).
    """

    peer: str
    n: int
    method: Literal["measured", "extrapolated"]
    total_s: float
    us_per_step_used: float
    wakeups: int
    replayed_steps: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class GrowthFit:
    """Least-squares fit of log(time) against log(n)."""

    slope: float
    intercept: float
    r_squared: float
    points: int
    tail_slope: float
    classification: GrowthClass


def classify_slope(slope: float) -> GrowthClass:
    """Name a log-log slope; the bands are centred on the integer orders."""
    if slope < 0.25:
        return "constant"
    if slope < 0.75:
        return "sublinear"
    if slope < 1.35:
        return "linear"
    if slope < 1.65:
        return "superlinear"
    if slope < 2.5:
        return "quadratic"
    return "cubic+"


def fit_growth(points: Sequence[tuple[float, float]]) -> GrowthFit:
    """Fit the growth order of ``time`` in ``n`` from ``(n, time)`` points.

    Needs at least two points with distinct positive n and positive time.
    """
    clean = [(math.log(n), math.log(t)) for n, t in points if n > 0 and t > 0]
    if len({x for x, _ in clean}) < 2:
        msg = "fit_growth needs at least two points with distinct positive n and positive time"
        raise ValueError(msg)
    k = len(clean)
    mean_x = sum(x for x, _ in clean) / k
    mean_y = sum(y for _, y in clean) / k
    sxx = sum((x - mean_x) ** 2 for x, _ in clean)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in clean)
    syy = sum((y - mean_y) ** 2 for _, y in clean)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    # A perfect horizontal line has syy == 0; call that a perfect fit.
    r_squared = 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    # Tail: the mean log time at each of the two largest distinct n.
    by_x: dict[float, list[float]] = {}
    for x, y in clean:
        by_x.setdefault(x, []).append(y)
    (x1, ys1), (x2, ys2) = sorted(by_x.items())[-2:]
    tail_slope = (sum(ys2) / len(ys2) - sum(ys1) / len(ys1)) / (x2 - x1)
    return GrowthFit(
        slope=slope,
        intercept=intercept,
        r_squared=r_squared,
        points=k,
        tail_slope=tail_slope,
        classification=classify_slope(tail_slope if len(by_x) >= 3 else slope),
    )


def to_json_dict(
    record: PeerRunStats | ReplayStats | WholeOrchestrationStats | GrowthFit,
) -> dict[str, object]:
    """Turn a result record into plain JSON-ready data (tuples become lists)."""
    return dataclasses.asdict(record)
