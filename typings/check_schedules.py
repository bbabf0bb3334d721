"""Typing of cron schedules: a ``Schedule``'s payload must fit the workflow's payload."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from hookflow_gen import Context, Flow, Schedule, Workflow, workflow


class Report(BaseModel):
    kind: str


def _weekly(ctx: Context, report: Report) -> Flow[str]:
    yield from ()
    return report.kind


def _nightly(ctx: Context, payload: None) -> Flow[int]:
    yield from ()
    return 0


weekly = workflow(schedule=Schedule("0 9 * * MON", Report(kind="weekly"), name="check-weekly"))(
    _weekly
)
assert_type(weekly, Workflow[Report, str])
assert_type(weekly.schedules, tuple[Schedule[Report], ...])

nightly = workflow(name="check-nightly", schedule="0 3 * * *")(_nightly)
assert_type(nightly, Workflow[None, int])

both = workflow(
    name="check-both",
    schedule=[
        Schedule("0 9 * * MON", Report(kind="weekly"), name="check-both-weekly"),
        Schedule("0 9 1 * *", Report(kind="monthly"), name="check-both-monthly"),
    ],
)(_weekly)
assert_type(both, Workflow[Report, str])

assert_type(Schedule("* * * * *", 3).payload, int)

# A schedule whose payload is not the workflow's payload type.
workflow(schedule=Schedule("0 9 * * MON", 42, name="check-wrong"))(_weekly)  # type: ignore[arg-type]
