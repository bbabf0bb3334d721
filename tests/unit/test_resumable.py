"""check_resumable: a crash after any journal record must not change how a run ends."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RunStatus, StepFailed, current_step, get_workflow, workflow
from hookflow_gen.testing import (
    ResumabilityError,
    ResumabilityWarning,
    ResumeProblem,
    check_resumable,
)

from .models import Approval, Charge, Order, charge_card, double, refund

log = logging.getLogger(__name__)


class Batch(BaseModel):
    items: list[int]


def add(a: int, b: int) -> int:
    return a + b


def flaky_ship(order_id: int) -> str:
    """Fails its first two attempts, the same way on every run."""
    if current_step().attempt < 3:
        raise ConnectionError("carrier timeout")
    return f"PC{order_id}"


def stamp(label: str) -> str:
    """A step function may read the clock: its result is recorded."""
    return f"{label}@{datetime.now(UTC).isoformat()}"


@workflow
def rs_order(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    reserved, emailed = yield from ctx.gather(
        ctx.run("reserve", double, order.order_id), ctx.run("email", double, 1)
    )
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    approval = yield from ctx.wait_for_event("approval", Approval, key=f"o-{order.order_id}")
    tracking = yield from ctx.run("ship", flaky_ship, order.order_id)
    when = ctx.now().isoformat()
    token = ctx.uuid4().hex[:6]
    yield from ctx.run("stamp", stamp, token)
    return f"{charge.charge_id}/{reserved + emailed}/{approval.approved_by}/{tracking}/{when}"


@workflow
def rs_saga(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    try:
        yield from ctx.run("ship", flaky_ship, order.order_id)
    except StepFailed as failed:
        yield from ctx.run("refund", refund, charge.charge_id)
        raise RuntimeError(f"cancelled: {failed.message}") from None
    return "shipped"


@workflow
def rs_child(ctx: Context, batch: Batch) -> Flow[int]:
    total = 0
    for i, item in enumerate(batch.items):
        total = yield from ctx.run(f"add-{i}", add, total, item)
    return total


@workflow
def rs_parent(ctx: Context, batch: Batch) -> Flow[int]:
    first = yield from ctx.run("first", double, len(batch.items))
    child = yield from ctx.invoke("sum", rs_child, batch)
    return first + child


def test_a_correct_workflow_passes_at_every_position() -> None:
    """Runs, a gather, a sleep, an event, retries and ctx helpers resume identically."""
    report = check_resumable(
        rs_order, Order(order_id=7), events={"o-7": Approval(approved_by="ann")}
    )
    assert report.status is RunStatus.COMPLETED
    assert report.result.startswith("ch_7_100/16/ann/PC7/2026-01-01T01:00")
    names = [r.name for r in report.journal]
    assert names == ["charge", "reserve", "email", "cool-off", "approval", "ship", "stamp"]
    assert report.restarts == len(names) + 1 + 1  # every prefix, and "email" before "reserve"
    ship_attempts = [e.attempt for e in report.effects if e.step == "run 'ship'"]
    assert ship_attempts == [1, 2, 3]
    assert report.warnings == ()


@workflow
def rs_uneven_gather(ctx: Context, order: Order) -> Flow[str]:
    slow, fast, other = yield from ctx.gather(
        ctx.run("slow", flaky_ship, order.order_id),  # retried twice: settles last
        ctx.run("fast", double, order.order_id),
        ctx.run("other", double, 1),
    )
    return f"{slow} {fast} {other} at {ctx.now().isoformat()}"


def test_a_gather_is_also_resumed_with_an_earlier_branch_unsettled() -> None:
    """Later branches kept while an earlier one still ran: the same times, the same result."""
    report = check_resumable(rs_uneven_gather, Order(order_id=5))
    assert report.result == "PC5 10 2 at 2026-01-01T00:00:03+00:00"
    assert report.restarts == 4 + 2  # 4 prefixes; "slow" or "fast" left out with later ones kept


def test_a_problem_inside_a_gather_names_the_branch_left_out() -> None:
    """A difference found with a gather branch unsettled says which branch that was."""
    problem = ResumeProblem(3, "journal", "at position 1, ...", missing=1)
    assert problem.describe() == (
        "resumed with 3 journal records kept, all up to position 3 but 1 (a gather branch "
        "still running), the journal differed: at position 1, ..."
    )


def test_a_failing_workflow_must_fail_the_same_way() -> None:
    """A run that ends failed (after compensating) is checked like a completed one."""
    report = check_resumable(rs_saga, Order(order_id=3), stubs={"ship": ValueError("no carrier")})
    assert report.status is RunStatus.FAILED
    assert report.error is not None and "cancelled" in report.error.message
    assert [e.step for e in report.effects] == ["run 'charge'"] + ["run 'ship'"] * 3 + [
        "run 'refund'"
    ]


def test_children_are_run_again_only_when_their_invoke_is_not_in_the_journal() -> None:
    """A child started by invoke counts toward the step calls of the position that started it."""
    report = check_resumable(rs_parent, Batch(items=[1, 2, 3]))
    assert report.result == 6 + 6
    assert {e.run_id for e in report.effects} == {"check", "check-1"}


_datetime_class, _time_time, _random_random = datetime, time.time, random.random


@workflow
def rs_by_the_clock(ctx: Context, order: Order) -> Flow[int]:
    # Wrong: the branch depends on the wall clock, which replay does not repeat.
    if datetime.now(UTC).hour < 12:
        a = yield from ctx.run("morning", double, 1)
        b = yield from ctx.run("report", double, 2)
    else:
        b = yield from ctx.run("report", double, 2)
        a = yield from ctx.run("morning", double, 1)
    return a + b


def test_step_order_depending_on_datetime_now_is_caught() -> None:
    """The clock seen by the body differs per restart, so the reordering shows, with its read."""
    with pytest.raises(ResumabilityError) as info:
        check_resumable(rs_by_the_clock, Order(order_id=1))
    message = str(info.value)
    assert "restarted with an empty journal, the journal differed: at position 0" in message
    assert "uninterrupted: run 'morning' completed" in message
    assert "resumed: run 'report' completed" in message
    assert (
        "resumed after position 1 (the first 2 journal records kept), the outcome differed: "
        "uninterrupted: completed with 6; resumed: failed: "
        "hookflow_gen.exceptions.NonDeterminismError: position 0 was run 'morning' in the "
        "journal, now the workflow asks for run 'report'"
    ) in message
    assert "datetime.now() at tests/unit/test_resumable.py:" in message
    assert "(rs_by_the_clock)" in message
    assert {p.what for p in info.value.problems} >= {"journal", "outcome", "step calls"}


_counter = 0


def next_invoice_number() -> int:
    global _counter
    _counter += 1
    return _counter


@workflow
def rs_counter(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    # Wrong: a process-global counter moves on with every replay.
    number = next_invoice_number()
    yield from ctx.run("invoice", double, number)
    return charge.charge_id


def test_a_global_counter_read_by_the_body_is_caught() -> None:
    """The counter's value differs on a resumed run: the step's arguments differ."""
    with pytest.raises(ResumabilityError) as info:
        check_resumable(rs_counter, Order(order_id=2))
    problems = info.value.problems
    assert problems[0].position == 0 and problems[0].what == "journal"
    calls = [p for p in problems if p.what == "step calls"]
    assert calls, problems
    assert "uninterrupted: run 'invoice' (run check, position 1, attempt 1) with (1)" in (
        calls[0].detail
    )
    assert "resumed: run 'invoice' (run check, position 1, attempt 1) with (" in calls[0].detail


@workflow
def rs_coin(ctx: Context, order: Order) -> Flow[str]:
    # Wrong: the module-level random generator is not replayed.
    if random.random() < 0.5:
        return (yield from ctx.run("heads", refund, "a"))
    return (yield from ctx.run("tails", refund, "b"))


def test_a_branch_on_random_random_is_caught() -> None:
    """random.random() gives other values on a resumed run, so the other branch shows."""
    with pytest.raises(ResumabilityError) as info:
        check_resumable(rs_coin, Order(order_id=3))
    message = str(info.value)
    assert "restarted with an empty journal, the journal differed" in message
    assert "random.random() at tests/unit/test_resumable.py:" in message


@workflow
def rs_ctx_random(ctx: Context, order: Order) -> Flow[str]:
    if ctx.random().random() < 0.5:
        return (yield from ctx.run("heads", refund, "a"))
    return (yield from ctx.run("tails", refund, "b"))


def test_ctx_random_and_clock_reads_in_steps_are_fine() -> None:
    """ctx.random() replays its values, and reads inside step functions are not flagged."""
    report = check_resumable(rs_ctx_random, Order(order_id=3))
    assert report.reads == {}
    stamped = check_resumable(rs_order, Order(order_id=1), events={"o-1": {"approved_by": "x"}})
    assert stamped.reads == {} and stamped.warnings == ()


@workflow
def rs_logs_the_time(ctx: Context, order: Order) -> Flow[int]:
    started = time.time()  # only logged, but still a wall-clock read
    log.info("order %s (started %s)", order.order_id, started)
    return (yield from ctx.run("work", double, order.order_id))


def test_a_harmless_clock_read_is_a_warning_that_says_what_was_checked() -> None:
    """A read that changes nothing passes, with a warning naming the read and the watch list."""
    with pytest.warns(ResumabilityWarning) as caught:
        report = check_resumable(rs_logs_the_time, Order(order_id=4))
    assert report.result == 8
    text = str(caught[0].message)
    assert "time.time() at tests/unit/test_resumable.py:" in text
    assert "(rs_logs_the_time)" in text
    assert "logging" not in text  # the log record's own timestamp is not the workflow's
    assert "Watched while the workflow body ran (not in step functions)" in text
    assert "random.{" in text and "datetime.{now, utcnow, today}()" in text
    assert report.warnings == (text,)


def test_strict_turns_warnings_into_failures() -> None:
    """With strict=True, a wall-clock read fails the check."""
    with pytest.raises(ResumabilityError, match=r"warning: the workflow body read the wall clock"):
        check_resumable(rs_logs_the_time, Order(order_id=4), strict=True)


@workflow
def rs_poller(ctx: Context, batch: Batch) -> Flow[int]:
    total = 0
    for item in batch.items:
        total = yield from ctx.run("add", add, total, item)  # one name for every step
        yield from ctx.sleep("wait", 10)
    return total


def test_step_names_used_twice_are_flagged() -> None:
    """The same name at several positions of one run is a warning naming the positions."""
    with pytest.warns(ResumabilityWarning) as caught:
        report = check_resumable(rs_poller, Batch(items=[1, 2, 3]))
    assert report.result == 6
    texts = [str(w.message) for w in caught]
    assert any("the step name 'add' is used at positions 0, 2, 4" in t for t in texts), texts
    assert any("the step name 'wait' is used at positions 1, 3, 5" in t for t in texts), texts


def test_a_run_waiting_for_a_missing_event_is_reported() -> None:
    """Without the event it waits for, the check says which event to give."""
    with pytest.raises(ResumabilityError, match=r"waits for event 'approval' \(key 'o-5'\)"):
        check_resumable(rs_order, Order(order_id=5))


@workflow
def rs_two_events(ctx: Context, order: Order) -> Flow[str]:
    first = yield from ctx.wait_for_event("first", Approval, key="k")
    second = yield from ctx.wait_for_event("second", Approval, key="k")
    return f"{first.approved_by},{second.approved_by}"


def test_events_already_received_are_not_sent_again_on_resume() -> None:
    """Two events on one key reach the right steps whatever the restart position."""
    report = check_resumable(
        rs_two_events,
        Order(order_id=1),
        events=[("k", Approval(approved_by="a")), ("k", Approval(approved_by="b"))],
    )
    assert report.result == "a,b"


def test_stubs_replace_steps_and_their_calls_are_compared() -> None:
    """A stub answers for its step; each call is recorded with its arguments."""

    def fake_charge(order_id: int, amount: int) -> Charge:
        return Charge(charge_id=f"stub-{order_id}-{amount}")

    report = check_resumable(rs_counter_safe, Order(order_id=9), stubs={"charge": fake_charge})
    assert report.result == "stub-9-100"
    assert [(e.step, e.args) for e in report.effects] == [
        ("run 'charge'", (9, 100)),
        ("run 'invoice'", (9,)),
    ]


@workflow
def rs_counter_safe(ctx: Context, order: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    yield from ctx.run("invoice", double, order.order_id)
    return charge.charge_id


def test_steps_that_answer_differently_each_time_do_not_fail_the_check() -> None:
    """A call repeated with the same arguments gets the first answer, like a deduplicating API."""
    calls: list[int] = []

    def new_id(order_id: int) -> int:
        calls.append(order_id)
        return len(calls)  # a fresh id on every call

    report = check_resumable(rs_counter_safe, Order(order_id=9), stubs={"invoice": new_id})
    assert report.result == "ch_9_100"
    assert calls == [9]  # called once; every resumed run was given the recorded answer


@workflow
def rs_many_reads(ctx: Context, order: Order) -> Flow[int]:
    # Each read below is harmless here (nothing depends on it) but still reported.
    assert isinstance(ctx.now(), datetime)  # the look-alike still answers isinstance
    stamps = [dt.datetime.now(UTC), date.today(), uuid.uuid4(), timezone.now(), time.monotonic()]
    assert len(stamps) == 5
    return (yield from ctx.run("work", double, order.order_id))


def test_every_watched_read_is_reported_with_its_line() -> None:
    """Module-level, aliased and Django clock reads, and uuid4, are each named in the warning."""
    with pytest.warns(ResumabilityWarning):
        report = check_resumable(rs_many_reads, Order(order_id=2))
    assert report.result == 4
    seen = {read.what for read in report.reads}
    assert seen == {
        "datetime.now()",
        "date.today()",
        "uuid.uuid4()",
        "django.utils.timezone.now()",
        "time.monotonic()",
    }
    assert all(read.where.startswith("tests/unit/test_resumable.py:") for read in report.reads)


def what_time() -> datetime:
    """Annotated with the module's `datetime`, which the check stands in for."""
    return datetime(2026, 5, 1, tzinfo=UTC)


@workflow
def rs_annotations(ctx: Context, order: Order) -> Flow[str]:
    when = yield from ctx.run("when", what_time)  # its result type is first read here
    return f"{type(when).__name__} {when.isoformat()}"


def test_the_stand_ins_keep_annotations_and_step_functions_working() -> None:
    """A step typed with the watched module's datetime validates as a real datetime."""
    report = check_resumable(rs_annotations, Order(order_id=1))
    assert report.result == "datetime 2026-05-01T00:00:00+00:00"
    assert report.reads == {}


class Quote(BaseModel):
    rate: float


@workflow
def rs_http(ctx: Context, order: Order) -> Flow[float]:
    quote = yield from ctx.call(
        "fx", "https://fx.example.com/eur", method="POST", body={"id": 1}, response_model=Quote
    )
    yield from ctx.sleep("settle", 30)
    return quote.body.rate * order.amount_cents


def test_http_call_steps_are_stubbed_and_compared_by_request() -> None:
    """A stubbed call step answers 200 with the stub; its method, URL and body are compared."""
    report = check_resumable(rs_http, Order(order_id=1), stubs={"fx": {"rate": 1.5}})
    assert report.result == 150.0
    assert [e.args for e in report.effects] == [("POST", "https://fx.example.com/eur", {"id": 1})]


def test_the_registry_is_restored_after_a_check() -> None:
    """The watched copies used during the check are gone afterwards, even after a failure."""
    with pytest.raises(ResumabilityError):
        check_resumable(rs_coin, Order(order_id=3))
    assert get_workflow("rs_coin") is rs_coin
    assert datetime is _datetime_class
    assert time.time is _time_time and random.random is _random_random
