"""Schedules are checked when the workflow is defined; tick arithmetic and run ids."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from hookflow_gen import Context, Flow, Schedule, workflow
from hookflow_gen._schedule import latest_ticks, next_tick, parse_tick, schedule_run_id
from hookflow_gen._workflow import _registry  # pyright: ignore[reportPrivateUsage]  # clean-up
from hookflow_gen.exceptions import DuplicateWorkflowError, WorkflowDefinitionError


class Report(BaseModel):
    kind: str


def _report(ctx: Context, report: Report) -> Flow[str]:
    yield from ()
    return report.kind


def _plain(ctx: Context, payload: None) -> Flow[str]:
    yield from ()
    return "done"


@pytest.fixture(autouse=True)
def _forget_test_workflows() -> Iterator[None]:
    """A registered schedule would be started by other tests' workers: forget them."""
    before = set(_registry)
    yield
    for name in set(_registry) - before:
        del _registry[name]


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * *", r"it has 3 field\(s\)"),
        ("* * * * * * *", r"it has 7 field\(s\)"),
        ("0 0 31 2 *", "Bad day-of-month"),
        ("", "is a string"),
    ],
)
def test_a_bad_cron_expression_is_refused_at_decoration(cron: str, message: str) -> None:
    """The error names the workflow, the expression and what is wrong with it."""
    with pytest.raises(WorkflowDefinitionError, match=message) as caught:
        workflow(name="unit-bad-cron", schedule=cron)(_plain)
    assert "unit-bad-cron" in str(caught.value)
    assert "unit-bad-cron" not in _registry


def test_a_cron_string_needs_a_workflow_that_takes_none() -> None:
    """A bare cron string means the payload None: a workflow taking a model says what to do."""
    with pytest.raises(WorkflowDefinitionError, match=r"Schedule\(cron, payload\)"):
        workflow(name="unit-needs-payload", schedule="* * * * *")(_report)


def test_a_schedule_payload_must_fit_the_workflow() -> None:
    """A payload the workflow's type refuses is an error at decoration, not at the first tick."""
    with pytest.raises(WorkflowDefinitionError, match="does not match"):
        workflow(name="unit-bad-payload", schedule=Schedule("* * * * *", {"kind": 3}))(_report)  # type: ignore[arg-type]  # the mistake under test


def test_catch_up_is_at_least_one() -> None:
    """``catch_up=0`` is refused."""
    with pytest.raises(WorkflowDefinitionError, match="catch_up"):
        workflow(name="unit-no-catch-up", schedule=Schedule("* * * * *", None, catch_up=0))(_plain)


def test_schedules_get_names_and_must_not_clash() -> None:
    """One schedule takes the workflow's name; several need names; names are unique."""
    one = workflow(name="unit-one", schedule=Schedule("0 9 * * *", Report(kind="daily")))(_report)
    assert [s.name for s in one.schedules] == ["unit-one"]
    with pytest.raises(WorkflowDefinitionError, match="give each a name"):
        workflow(
            name="unit-unnamed",
            schedule=[
                Schedule("0 9 * * *", Report(kind="a")),
                Schedule("0 10 * * *", Report(kind="b")),
            ],
        )(_report)
    with pytest.raises(DuplicateWorkflowError, match="unit-one"):
        workflow(name="unit-other", schedule=Schedule("0 9 * * *", None, name="unit-one"))(_plain)


def test_tick_arithmetic_and_run_ids() -> None:
    """Ticks are UTC, strictly after / at most the bounds; run ids round-trip their tick."""
    at = datetime(2026, 1, 31, 9, 7, 30, tzinfo=UTC)
    assert next_tick("*/5 * * * *", at) == datetime(2026, 1, 31, 9, 10, tzinfo=UTC)
    assert next_tick("*/5 * * * *", datetime(2026, 1, 31, 9, 10, tzinfo=UTC)) == datetime(
        2026, 1, 31, 9, 15, tzinfo=UTC
    )
    assert latest_ticks("*/5 * * * *", None, at, 2) == [
        datetime(2026, 1, 31, 9, 0, tzinfo=UTC),
        datetime(2026, 1, 31, 9, 5, tzinfo=UTC),
    ]
    # The upper bound is included, the lower one is not.
    assert latest_ticks(
        "*/5 * * * *",
        datetime(2026, 1, 31, 9, 0, tzinfo=UTC),
        datetime(2026, 1, 31, 9, 5, tzinfo=UTC),
        10,
    ) == [datetime(2026, 1, 31, 9, 5, tzinfo=UTC)]
    assert latest_ticks("* * * * * *", at.replace(second=28), at, 10) == [
        at.replace(second=29),
        at,
    ]
    run_id = schedule_run_id("report", datetime(2026, 1, 31, 9, 5, tzinfo=UTC))
    assert run_id == "report@2026-01-31T09:05:00Z"
    assert parse_tick(run_id.split("@", 1)[1]) == datetime(2026, 1, 31, 9, 5, tzinfo=UTC)
