"""A run's journal laid out on a time axis, for the admin's run page.

Pure: rows in, bars out (percentages of the axis). What is drawn is what
the journal stores: when a step was first reached (``started_at``), when it
settled (``completed_at``), when a pending one is next due (``wake_at``), and
how many attempts it took. A retried step's earlier attempts are kept with
their times and errors (``past_attempts``), so each is drawn as a bar of its
own (``hf-attempt``), followed by its back-off, and the last attempt after
them; a step waiting out a retry back-off shows that wait up to its next
attempt.

The journal does not mark a ``gather``, but its branches show in the times:
the workflow reaches its next step only after the one it waits on settled,
so consecutive steps that were open at once are branches of one ``gather``.
They are grouped and drawn side by side on the shared axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from .._journal import CANCELLED
from .._updates import is_update_key, update_name_in

__all__ = [
    "Bar",
    "Block",
    "PastAttempt",
    "Row",
    "Tick",
    "Timeline",
    "humanize",
    "layout",
    "past_attempts",
]

# The thinnest bar drawn, in percent of the axis: a 2 ms step on an hour-long
# axis still shows, as a sliver.
MIN_WIDTH = 0.6


def _error_type(error: object) -> object:
    """The ``type`` of a stored error (a JSON object), or None."""
    return cast("dict[str, object]", error).get("type") if isinstance(error, dict) else None


@dataclass(frozen=True, slots=True)
class PastAttempt:
    """An earlier, failed attempt of a step, as the journal keeps it."""

    attempt: int
    started_at: datetime | None
    ended_at: datetime
    error: str
    retry_at: datetime | None


def _moment(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def past_attempts(step: Any) -> list[PastAttempt]:
    """A step row's earlier attempts (its ``past_attempts`` JSON), oldest first."""
    stored: object = getattr(step, "past_attempts", None)
    if not isinstance(stored, list):
        return []
    attempts: list[PastAttempt] = []
    for item in cast("list[object]", stored):
        if not isinstance(item, dict):
            continue
        data = cast("dict[str, object]", item)
        ended = _moment(data.get("ended_at"))
        if ended is None:
            continue
        kind = str(data.get("error_type", "")).rsplit(".", 1)[-1]
        attempts.append(
            PastAttempt(
                attempt=int(cast("int", data.get("attempt", len(attempts) + 1))),
                started_at=_moment(data.get("started_at")),
                ended_at=ended,
                error=f"{kind}: {data.get('message', '')}" if kind else str(data.get("message")),
                retry_at=_moment(data.get("retry_at")),
            )
        )
    return attempts


def humanize(delta: timedelta | None) -> str:
    """``"6 ms"``, ``"2.5 s"``, ``"3 min 5 s"``, ``"1 h 2 min"``, ``"2 d 3 h"``."""
    if delta is None:
        return "-"
    seconds = delta.total_seconds()
    if seconds < 0:
        return "-" + humanize(-delta)
    if seconds < 0.001:
        return "0 ms" if seconds == 0 else "< 1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True, slots=True)
class Bar:
    """One stretch of a step's row.

    Attributes:
        css: its classes: ``hf-active`` (a step function or call running),
            ``hf-wait`` (a sleep or an event wait), ``hf-child`` (a child
            run), ``hf-backoff`` (waiting to retry), ``hf-planned`` (a wait
            still ahead: until a sleep ends or an event times out), plus
            ``hf-failed`` for a failed step.
        left: where it starts, in percent of the axis.
        width: its length, in percent of the axis.
        title: what a hover shows.
    """

    css: str
    left: float
    width: float
    title: str


@dataclass(frozen=True, slots=True)
class Row:
    """One step of the journal, laid out.

    Attributes:
        position: the journal position.
        kind: run, sleep, event, call, invoke or reply.
        name: the step name.
        status: pending, completed or failed; ``open`` for a step still
            pending when its run ended (cancelled, say).
        attempts: how many attempts it took so far.
        bars: its stretches on the axis.
        took: its humanized duration (so far, for a pending step).
        offset: when it began, humanized from the run's start (``+6 ms``).
        note: what it is doing or waiting for, in words.
        key: the event key of an event step, the child run id of an invoke.
        record: the step row itself (for results and errors).
        past: its earlier, failed attempts, oldest first.
    """

    position: int
    kind: str
    name: str
    status: str
    attempts: int
    bars: tuple[Bar, ...]
    took: str
    offset: str
    note: str
    key: str | None
    record: Any
    past: tuple[PastAttempt, ...] = ()


@dataclass(frozen=True, slots=True)
class Tick:
    """A mark on the axis: ``left`` percent, labelled ``label``."""

    left: float
    label: str


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive rows: one step, or the branches of one ``gather``."""

    rows: tuple[Row, ...]
    parallel: bool


@dataclass(frozen=True, slots=True)
class Timeline:
    """The run's steps on one axis from its start to its end (or ``now``, or a wait ahead).

    Attributes:
        blocks: the rows in journal order, ``gather`` branches grouped.
        ticks: marks along the axis.
        now: where ``now`` falls on the axis (percent), for a running run.
        span: the axis length, humanized.
    """

    blocks: tuple[Block, ...]
    ticks: tuple[Tick, ...]
    now: float | None
    span: str
    rows: tuple[Row, ...] = field(default=())


def _overlaps(block: Sequence[Any], step: Any) -> bool:
    """Whether ``step`` began while a step of ``block`` was still open.

    The workflow reaches its next step only once the one it waits on has
    settled, so a step that began before the steps just before it settled
    was in flight with them: a branch of the same ``gather``.
    """
    if step.started_at is None:
        return False
    for member in block:
        if member.completed_at is None or member.completed_at > step.started_at:
            return True
    return False


def _awaited(step: Any) -> str:
    """What an event step waits for: ``event 'key'``, or ``update 'name'`` for a receive."""
    key = cast("str", step.key or "")
    if not is_update_key(key):
        return f"event {key!r}"
    name = update_name_in(key, str(getattr(step, "run_id", "")))
    return f"update {name!r}" if name is not None else "an update"


def layout(
    *,
    created_at: datetime,
    finished_at: datetime | None,
    steps: Sequence[Any],
    now: datetime,
) -> Timeline:
    """Lay ``steps`` (rows with the journal's fields) out on the run's time axis.

    Args:
        created_at: when the run started: the axis's origin.
        finished_at: when it finished, or None while it runs.
        steps: its step rows in position order (``position``, ``kind``,
            ``name``, ``status``, ``attempts``, ``started_at``,
            ``completed_at``, ``wake_at``, ``key``, ``error``).
        now: the runtime clock's now.
    """
    running = finished_at is None
    end = finished_at if finished_at is not None else now
    horizon = end
    for step in steps:
        for moment in (step.started_at, step.completed_at):
            if moment is not None and moment > horizon:
                horizon = moment
        if running and step.status == "pending" and step.wake_at is not None:
            horizon = max(horizon, step.wake_at)
    span = max((horizon - created_at).total_seconds(), 0.001)

    def pct(moment: datetime) -> float:
        return min(max((moment - created_at).total_seconds() / span * 100, 0.0), 100.0)

    def bar(css: str, start: datetime, stop: datetime, title: str) -> Bar:
        left = pct(start)
        width = max(pct(stop) - left, MIN_WIDTH)
        left = min(left, 100.0 - width)
        classes = " ".join(f"hf-{name}" for name in css.split())
        return Bar(classes, round(left, 3), round(width, 3), title)

    rows: list[Row] = []
    previous_end = created_at
    for step in steps:
        start: datetime = step.started_at or previous_end
        pending = step.status == "pending"
        if pending and not running:
            # The run ended (cancelled, or failed elsewhere) with this step open.
            assert finished_at is not None
            stop: datetime = max(finished_at, start)
            css = {"sleep": "wait", "event": "wait", "invoke": "child"}.get(step.kind, "active")
            rows.append(
                Row(
                    position=step.position,
                    kind=step.kind,
                    name=step.name,
                    status="open",
                    attempts=step.attempts,
                    bars=(bar(css, start, stop, "open when the run ended"),),
                    took=humanize(stop - start),
                    offset="+" + humanize(start - created_at),
                    note="still open when the run ended",
                    key=step.key,
                    record=step,
                )
            )
            continue
        stop = step.completed_at or (now if pending else start)
        stop = max(stop, start)
        cancelled = (
            step.status == "failed" and _error_type(getattr(step, "error", None)) == CANCELLED
        )
        failed = " failed" if step.status == "failed" and not cancelled else ""
        bars: list[Bar] = []
        note = ""
        took = humanize(stop - start)
        if step.kind == "sleep":
            until = step.wake_at
            if pending and until is not None and until > now:
                bars.append(bar("wait", start, now, f"slept {humanize(now - start)} so far"))
                bars.append(bar("planned", now, until, f"sleeps until {until:%Y-%m-%d %H:%M:%S}"))
                note = f"sleeping, {humanize(until - now)} to go"
            else:
                bars.append(bar("wait" + failed, start, stop, f"slept {took}"))
                note = "slept"
        elif step.kind == "event":
            awaited = _awaited(step)
            if pending:
                bars.append(bar("wait", start, now, f"waiting for {awaited}"))
                note = f"waiting for {awaited}"
                if step.wake_at is not None and step.wake_at > now:
                    bars.append(
                        bar(
                            "planned",
                            now,
                            step.wake_at,
                            f"times out in {humanize(step.wake_at - now)}",
                        )
                    )
                    note += f", times out in {humanize(step.wake_at - now)}"
            else:
                bars.append(bar("wait" + failed, start, stop, f"waited {took} for {awaited}"))
                note = awaited + (" (timed out)" if step.result == "null" else "")
        elif step.kind == "invoke":
            bars.append(bar("child" + failed, start, stop, f"child run {step.key}"))
            note = "child run running" if pending else ""
        elif step.kind == "reply":
            # A reply (or rejection) is recorded the moment it is reached; its key
            # is the id of the update it answers.
            bars.append(bar("active" + failed, start, stop, f"reply to update {step.key}"))
            note = f"reply to update {step.key}" if not failed else ""
        else:
            # Each earlier attempt is a bar of its own, then its back-off.
            cursor = start
            earlier = past_attempts(step)
            for past in earlier:
                began = past.started_at or cursor
                bars.append(
                    bar(
                        "active failed attempt",
                        began,
                        max(past.ended_at, began),
                        f"attempt {past.attempt} failed after "
                        f"{humanize(past.ended_at - began)}: {past.error}",
                    )
                )
                cursor = past.ended_at
                retry = past.retry_at
                if retry is not None and retry > past.ended_at:
                    shown = min(retry, now) if pending else retry
                    if shown > past.ended_at:
                        bars.append(
                            bar(
                                "backoff",
                                past.ended_at,
                                shown,
                                f"waited {humanize(retry - past.ended_at)} "
                                f"before attempt {past.attempt + 1}",
                            )
                        )
                    cursor = retry
            retry_at: datetime | None = step.wake_at if pending else None
            if earlier and retry_at is not None and retry_at > now:
                bars.append(
                    bar(
                        "backoff",
                        now,
                        retry_at,
                        f"next attempt in {humanize(retry_at - now)}",
                    )
                )
                note = f"attempt {step.attempts} failed; retrying in {humanize(retry_at - now)}"
            elif earlier:
                last = min(max(cursor, start), stop)
                title = f"attempt {step.attempts}" + (" (running)" if pending else "")
                bars.append(bar("active" + failed, last, stop, title))
                if pending:
                    note = "running" if step.attempts else "ready"
            elif retry_at is not None and retry_at > now:
                bars.append(bar("active", start, now, f"{step.attempts} attempt(s) so far"))
                bars.append(
                    bar(
                        "backoff",
                        now,
                        retry_at,
                        f"next attempt in {humanize(retry_at - now)}",
                    )
                )
                note = f"attempt {step.attempts} failed; retrying in {humanize(retry_at - now)}"
            else:
                plural = "s" if step.attempts != 1 else ""
                bars.append(bar("active" + failed, start, stop, f"{step.attempts} attempt{plural}"))
                if pending:
                    note = "running" if step.attempts else "ready"
        if pending and step.kind in ("run", "call") and not step.attempts:
            took = "-"
        status = step.status
        if cancelled:
            status = "cancelled"
            note = "cancelled here: Cancelled was thrown into the workflow at this step"
        rows.append(
            Row(
                position=step.position,
                kind=step.kind,
                name=step.name,
                status=status,
                attempts=step.attempts,
                bars=tuple(bars),
                took=took,
                offset="+" + humanize(start - created_at),
                note=note,
                key=step.key,
                record=step,
                past=tuple(past_attempts(step)),
            )
        )
        if not pending:
            previous_end = max(previous_end, stop)

    blocks: list[list[Row]] = []
    members: list[list[Any]] = []
    for step, row in zip(steps, rows, strict=True):
        if members and _overlaps(members[-1], step):
            blocks[-1].append(row)
            members[-1].append(step)
        else:
            blocks.append([row])
            members.append([step])
    ticks = tuple(
        Tick(left=fraction * 100, label="+" + humanize(timedelta(seconds=span * fraction)))
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return Timeline(
        blocks=tuple(Block(rows=tuple(block), parallel=len(block) > 1) for block in blocks),
        ticks=ticks,
        now=round(pct(now), 3) if running else None,
        span=humanize(timedelta(seconds=span)),
        rows=tuple(rows),
    )
