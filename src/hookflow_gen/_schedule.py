"""Cron schedules: ``@workflow(schedule="*/5 * * * *")`` starts a run on every tick.

A schedule is a cron expression (five fields, or six with seconds first;
evaluated in UTC, parsed by ``cronsim``) and the payload each run gets. Each
tick of a schedule starts at most one run, whose id is derived from the
schedule's name and the tick's time (``schedule_run_id``): starting a run of
an existing id is idempotent, so however many workers (or QStash deliveries)
try to start the run of one tick, there is one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar, cast

from cronsim import CronSim, CronSimError

from .exceptions import WorkflowDefinitionError

__all__ = ["Schedule", "latest_ticks", "next_tick", "parse_tick", "schedule_run_id"]

M = TypeVar("M")

_TICK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class Schedule(Generic[M]):
    """Start a run of the workflow with ``payload`` on every tick of ``cron``.

    ``@workflow(schedule=Schedule("0 9 * * MON", Report(kind="weekly")))``;
    a workflow whose payload may be None takes the cron string alone:
    ``@workflow(schedule="*/5 * * * *")``.

    Attributes:
        cron: five fields (minute, hour, day of month, month, day of week),
            or six with seconds first (``"*/10 * * * * *"``: every ten
            seconds; the database scheduler only, QStash takes five). UTC.
        payload: the payload of every run the schedule starts.
        name: the schedule's stable name (default: the workflow's name); run
            ids and the stored cursor are derived from it.
        catch_up: after downtime (or a worker too busy to look), how many of
            the ticks that fell due meanwhile start a run: the latest ones;
            the older ones are skipped. At least 1.
    """

    cron: str
    payload: M
    name: str | None = None
    catch_up: int = 1

    def check(self) -> None:
        """Raise ``WorkflowDefinitionError`` unless the cron expression is valid and fires."""
        cron = cast(object, self.cron)  # callers without a type checker may pass anything
        if not isinstance(cron, str) or not cron.strip():
            raise WorkflowDefinitionError(
                f"a schedule's cron expression is a string, not {self.cron!r}"
            )
        fields = len(self.cron.split())
        if fields not in (5, 6):
            raise WorkflowDefinitionError(
                f"invalid cron expression {self.cron!r}: it has {fields} field(s); five "
                "(minute hour day-of-month month day-of-week) or six (seconds first) are expected"
            )
        try:
            next(CronSim(self.cron, datetime.now(UTC)))
        except (CronSimError, StopIteration) as exc:
            reason = str(exc) or "it never fires"
            raise WorkflowDefinitionError(
                f"invalid cron expression {self.cron!r}: {reason}"
            ) from None
        catch_up = cast(object, self.catch_up)
        if not isinstance(catch_up, int) or catch_up < 1:
            raise WorkflowDefinitionError(
                f"a schedule's catch_up is at least 1, not {self.catch_up!r}"
            )


def next_tick(cron: str, after: datetime) -> datetime:
    """The first tick of ``cron`` strictly after ``after`` (UTC)."""
    return next(CronSim(cron, after.astimezone(UTC)))


def latest_ticks(cron: str, after: datetime | None, until: datetime, limit: int) -> list[datetime]:
    """The latest ``limit`` ticks in ``(after, until]``, oldest first (UTC)."""
    # Reverse iteration yields ticks strictly before its start (to the
    # second), so start a microsecond past ``until``'s second.
    start = until.astimezone(UTC).replace(microsecond=0) + timedelta(microseconds=1)
    found: list[datetime] = []
    ticks: Iterator[datetime] = CronSim(cron, start, reverse=True)
    for tick in ticks:
        if (after is not None and tick <= after) or len(found) >= limit:
            break
        found.append(tick)
    found.reverse()
    return found


def schedule_run_id(name: str, tick: datetime) -> str:
    """The id of the run a schedule's tick starts: ``"<name>@2026-01-31T09:00:00Z"``."""
    return f"{name}@{tick.astimezone(UTC).strftime(_TICK_FORMAT)}"


def parse_tick(text: str) -> datetime:
    """A tick written by ``schedule_run_id`` (``2026-01-31T09:00:00Z``), as a UTC datetime.

    Raises:
        ValueError: ``text`` is not such a time.
    """
    return datetime.strptime(text, _TICK_FORMAT).replace(tzinfo=UTC)
