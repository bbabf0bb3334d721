"""The per-step transitions build their records field by field: they must change only theirs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hookflow_gen._journal import Attempt, ErrorInfo, StepRecord, StepStatus
from hookflow_gen._runtime import _transitions as T

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _every_field_set() -> StepRecord:
    error = ErrorInfo(type="builtins.ValueError", message="earlier")
    record = StepRecord(
        position=3,
        kind="run",
        name="charge",
        status=StepStatus.PENDING,
        result="12",
        error=error,
        attempts=2,
        completed_at=AT,
        wake_at=AT + timedelta(seconds=1),
        key="key",
        started_at=AT - timedelta(seconds=5),
        lease_until=AT + timedelta(minutes=5),
        lease_owner="owner",
        past_attempts=(
            Attempt(
                attempt=1, started_at=AT, ended_at=AT, error_type=error.type, message="earlier"
            ),
        ),
    )
    # Every field differs from its default, so a field left out would show.
    for field in dataclasses.fields(StepRecord):
        assert getattr(record, field.name) != field.default, field.name
    return record


def _all_fields(record: StepRecord) -> dict[str, object]:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def test_claim_changes_only_the_attempt_the_lease_and_the_wake_up() -> None:
    record = _every_field_set()
    claimed = T.claim(record, "next owner", AT + timedelta(minutes=9))
    expected = dataclasses.replace(
        record,
        attempts=3,
        wake_at=None,
        lease_until=AT + timedelta(minutes=9),
        lease_owner="next owner",
    )
    assert _all_fields(claimed) == _all_fields(expected)


def test_complete_changes_only_the_status_result_end_and_lease() -> None:
    record = _every_field_set()
    done = T.complete(record, '"ok"', AT + timedelta(seconds=2))
    expected = dataclasses.replace(
        record,
        status=StepStatus.COMPLETED,
        result='"ok"',
        completed_at=AT + timedelta(seconds=2),
        lease_until=None,
        lease_owner=None,
    )
    assert _all_fields(done) == _all_fields(expected)
