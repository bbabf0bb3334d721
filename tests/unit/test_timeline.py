"""The admin timeline's layout: humanized durations and bars on the run's time axis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from hookflow_gen.django._timeline import MIN_WIDTH, humanize, layout

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Row:
    position: int
    kind: str
    name: str
    status: str = "completed"
    attempts: int = 1
    started_at: datetime | None = None
    completed_at: datetime | None = None
    wake_at: datetime | None = None
    key: str | None = None
    result: str | None = "1"
    error: object = None
    past_attempts: object = None


def attempt(n: int, start: float, end: float, retry: float, message: str = "boom") -> object:
    """A ``past_attempts`` entry, as the journal stores it (JSON)."""
    return {
        "attempt": n,
        "started_at": at(start).isoformat(),
        "ended_at": at(end).isoformat(),
        "error_type": "builtins.ValueError",
        "message": message,
        "retry_at": at(retry).isoformat(),
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 ms"),
        (0.0004, "< 1 ms"),
        (0.006126, "6 ms"),
        (0.9994, "999 ms"),
        (2.46, "2.5 s"),
        (42, "42 s"),
        (60, "1 min"),
        (185, "3 min 5 s"),
        (3720, "1 h 2 min"),
        (7200, "2 h"),
        (86400 * 2 + 3600 * 3, "2 d 3 h"),
    ],
)
def test_humanize(seconds: float, text: str) -> None:
    """Durations read as people say them: 6 ms, 2.5 s, 3 min 5 s, 1 h 2 min."""
    assert humanize(timedelta(seconds=seconds)) == text


def test_steps_in_a_row_sit_on_one_axis() -> None:
    """Each bar starts where its step began and is as long as it took, in percent of the run."""
    steps = [
        Row(0, "run", "a", started_at=at(0), completed_at=at(1)),
        Row(1, "sleep", "nap", started_at=at(1), completed_at=at(3), wake_at=None),
        Row(2, "run", "b", started_at=at(3), completed_at=at(4)),
    ]
    timeline = layout(created_at=T0, finished_at=at(4), steps=steps, now=at(100))
    bars = [row.bars for row in timeline.rows]
    assert [(b[0].css, b[0].left, b[0].width) for b in bars] == [
        ("hf-active", 0.0, 25.0),
        ("hf-wait", 25.0, 50.0),
        ("hf-active", 75.0, 25.0),
    ]
    assert [row.took for row in timeline.rows] == ["1.0 s", "2.0 s", "1.0 s"]
    assert timeline.now is None and timeline.span == "4.0 s"
    assert [len(block.rows) for block in timeline.blocks] == [1, 1, 1]


def test_gather_branches_are_grouped_and_short_steps_stay_visible() -> None:
    """Branches reached together form one parallel block; a tiny step keeps a minimum width."""
    steps = [
        Row(0, "run", "tiny", started_at=at(0), completed_at=at(0.001)),
        Row(1, "run", "x", started_at=at(0.001), completed_at=at(5)),
        Row(2, "run", "y", started_at=at(0.001), completed_at=at(10)),
        Row(3, "invoke", "z", started_at=at(0.001), completed_at=at(8), key="child"),
    ]
    timeline = layout(created_at=T0, finished_at=at(10), steps=steps, now=at(10))
    assert [(len(b.rows), b.parallel) for b in timeline.blocks] == [(1, False), (3, True)]
    assert timeline.rows[0].bars[0].width == MIN_WIDTH
    assert timeline.rows[3].bars[0].css == "hf-child"


def test_branches_claimed_by_other_workers_still_group() -> None:
    """Branches whose start times differ (claimed by other workers) group while they overlap."""
    steps = [
        Row(0, "run", "north", started_at=at(0.18), completed_at=at(0.59)),
        Row(1, "run", "south", started_at=at(0.29), completed_at=at(0.70)),
        Row(2, "run", "east", started_at=at(0.18), completed_at=at(0.99)),
        Row(3, "invoke", "render", started_at=at(0.99), completed_at=at(1.2), key="c"),
        Row(4, "run", "after", started_at=at(1.2), completed_at=None, status="pending"),
    ]
    timeline = layout(created_at=T0, finished_at=None, steps=steps, now=at(2))
    assert [len(b.rows) for b in timeline.blocks] == [3, 1, 1]


def test_running_run_draws_the_wait_ahead_and_a_retry_backoff() -> None:
    """A pending sleep shows slept-so-far and the rest ahead; a retrying step its back-off."""
    steps = [
        Row(0, "run", "flaky", "pending", attempts=2, started_at=at(0), wake_at=at(30)),
        Row(1, "sleep", "nap", "pending", started_at=at(0), wake_at=at(40), result=None),
    ]
    timeline = layout(created_at=T0, finished_at=None, steps=steps, now=at(20))
    flaky, nap = timeline.rows
    assert [b.css for b in flaky.bars] == ["hf-active", "hf-backoff"]
    assert flaky.note == "attempt 2 failed; retrying in 10 s"
    assert [(b.css, b.left, b.width) for b in nap.bars] == [
        ("hf-wait", 0.0, 50.0),
        ("hf-planned", 50.0, 50.0),
    ]
    assert nap.note == "sleeping, 20 s to go"
    assert timeline.now == 50.0


def test_event_wait_with_timeout_and_a_step_open_when_the_run_was_cancelled() -> None:
    """A waiting event shows its timeout ahead; in a finished run an open step ends with the run."""
    waiting = [Row(0, "event", "ok", "pending", started_at=at(0), wake_at=at(60), key="k")]
    running = layout(created_at=T0, finished_at=None, steps=waiting, now=at(15))
    assert running.rows[0].note == "waiting for event 'k', times out in 45 s"
    assert [b.css for b in running.rows[0].bars] == ["hf-wait", "hf-planned"]
    cancelled = layout(created_at=T0, finished_at=at(15), steps=waiting, now=at(500))
    row = cancelled.rows[0]
    assert row.status == "open" and row.took == "15 s"
    assert [(b.css, b.width) for b in row.bars] == [("hf-wait", 100.0)]


def test_failed_step_is_marked_failed() -> None:
    """A failed step's bar carries the failed class, and its attempts are counted."""
    steps = [Row(0, "run", "x", "failed", attempts=3, started_at=at(0), completed_at=at(2))]
    timeline = layout(created_at=T0, finished_at=at(2), steps=steps, now=at(2))
    assert timeline.rows[0].bars[0].css == "hf-active hf-failed"
    assert timeline.rows[0].bars[0].title == "3 attempts"


def test_each_retried_attempt_is_a_bar_then_its_back_off() -> None:
    """Two failed attempts, their back-offs, and the attempt that worked: five bars in order."""
    steps = [
        Row(
            0,
            "run",
            "charge",
            attempts=3,
            started_at=at(0),
            completed_at=at(10),
            past_attempts=[attempt(1, 0, 1, 3, "first"), attempt(2, 3, 4, 8, "second")],
        )
    ]
    timeline = layout(created_at=T0, finished_at=at(10), steps=steps, now=at(10))
    (row,) = timeline.rows
    assert [(b.css, b.left, b.width) for b in row.bars] == [
        ("hf-active hf-failed hf-attempt", 0.0, 10.0),
        ("hf-backoff", 10.0, 20.0),
        ("hf-active hf-failed hf-attempt", 30.0, 10.0),
        ("hf-backoff", 40.0, 40.0),
        ("hf-active", 80.0, 20.0),
    ]
    assert row.bars[0].title == "attempt 1 failed after 1.0 s: ValueError: first"
    assert row.bars[3].title == "waited 4.0 s before attempt 3"
    assert [p.error for p in row.past] == ["ValueError: first", "ValueError: second"]


def test_a_step_waiting_to_retry_draws_its_attempt_and_the_wait_ahead() -> None:
    """A pending step in back-off: the failed attempt, the wait so far, the wait still ahead."""
    steps = [
        Row(
            0,
            "run",
            "charge",
            status="pending",
            attempts=1,
            started_at=at(0),
            wake_at=at(10),
            past_attempts=[attempt(1, 0, 2, 10)],
        )
    ]
    timeline = layout(created_at=T0, finished_at=None, steps=steps, now=at(5))
    (row,) = timeline.rows
    assert [(b.css, b.left, b.width) for b in row.bars] == [
        ("hf-active hf-failed hf-attempt", 0.0, 20.0),
        ("hf-backoff", 20.0, 30.0),
        ("hf-backoff", 50.0, 50.0),
    ]
    assert row.note == "attempt 1 failed; retrying in 5.0 s"


def test_a_step_that_failed_for_good_ends_in_a_failed_bar() -> None:
    """The last attempt of a step that ran out of attempts is drawn failed, after the earlier."""
    steps = [
        Row(
            0,
            "run",
            "charge",
            status="failed",
            attempts=2,
            started_at=at(0),
            completed_at=at(4),
            result=None,
            error={"type": "builtins.ValueError", "message": "no"},
            past_attempts=[attempt(1, 0, 1, 3)],
        )
    ]
    timeline = layout(created_at=T0, finished_at=at(4), steps=steps, now=at(4))
    (row,) = timeline.rows
    assert [b.css for b in row.bars] == [
        "hf-active hf-failed hf-attempt",
        "hf-backoff",
        "hf-active hf-failed",
    ]
