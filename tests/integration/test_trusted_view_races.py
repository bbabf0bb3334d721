"""A tick's trusted view of the journal racing a cancellation delivered by another worker.

While a tick holds the lease on the only step its workflow waits on, it
runs the step outside any transaction and, in its next transaction, trusts
its own copy of the journal instead of reading it again (``trusted_until``
in ``Runtime._tick``). One other writer does change that step while the
lease is live: a cancellation. ``cancel`` (the API, the admin's button,
``manage.py hookflow cancel``, a parent's cancellation reaching its child)
records the request and ticks the run, and that tick, or a worker's,
settles every step the workflow waits on as cancelled (``_deliver_cancel``),
leased or not, and throws ``Cancelled`` into the workflow.

The cancellation must win: the step's result (or its failed attempt) is
dropped, no step after it runs, and the workflow's ``except Cancelled``
handler goes on from where the cancelling tick left it. A workflow without
a handler ends at once, so the first tick's next transaction finds the run
finished; one whose handler waits (a sleep, an event) keeps the run
running, and that is when a stale view could record the step over its
cancellation and run the steps after it.

Every runtime here writes through ``_GuardedStore``, which reports a write
that changes a settled journal record or replaces a record with another
step's. Only ``resume`` and a child retried under an ``invoke`` step's
policy may do either, and neither happens here.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from pydantic import BaseModel

from hookflow_gen import Cancelled, Context, Flow, RetryPolicy, RunStatus, workflow
from hookflow_gen._client import use_runtime
from hookflow_gen._clock import Clock
from hookflow_gen._journal import StepRecord, StepStatus
from hookflow_gen._runtime import Runtime, TickReport
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import RunState
from hookflow_gen.django._worker import Worker
from tests._invariant import InvariantStore
from tests.djangoapp.models import Entry

if TYPE_CHECKING:
    from django.test import Client

    from hookflow_gen.testing import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)

#: The longest any thread of these tests waits for another before the test fails.
WAIT = 30.0
ITERATIONS = 50


# -- the step functions and their gates -------------------------------------------------


class Key(BaseModel):
    key: str


class _Flaky(Exception):
    """An attempt that fails (the step's retry policy tries it again)."""


@dataclass
class _Gate:
    """Pauses the first attempt of a run's ``slow`` step until the test releases it."""

    raises: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


_gates: dict[str, _Gate] = {}
#: Events a paused thread waits on, set when the test ends (in case it failed first).
_held: list[threading.Event] = []
_threads: list[threading.Thread] = []
_calls: Counter[tuple[str, str]] = Counter()
_calls_lock = threading.Lock()
#: Writes that changed a settled journal record or replaced another step's (``_GuardedStore``).
_rewrites: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> Generator[None, None, None]:
    _gates.clear()
    _calls.clear()
    _rewrites.clear()
    yield
    # A test that failed early leaves no thread waiting, nor one still writing.
    for event in [*(gate.release for gate in _gates.values()), *_held]:
        event.set()
    for thread in _threads:
        thread.join(WAIT)
    _held.clear()
    _threads.clear()


def _count(key: str, name: str) -> int:
    with _calls_lock:
        _calls[key, name] += 1
        return _calls[key, name]


def _calls_of(key: str) -> dict[str, int]:
    with _calls_lock:
        return {name: _calls[key, name] for name in ("slow", "after", "cleanup")}


def slow(key: str) -> str:
    """The step worker A is running when the run is cancelled: its first attempt waits."""
    attempt = _count(key, "slow")
    gate = _gates.get(key)
    if gate is not None and attempt == 1:
        gate.entered.set()
        if not gate.release.wait(WAIT):
            raise RuntimeError("the test never released the step")
        if gate.raises:
            raise _Flaky(f"attempt {attempt} failed")
    return f"slow #{attempt}"


def after(key: str) -> str:
    """The step after ``slow``: it must not run once the run was cancelled at ``slow``."""
    _count(key, "after")
    return "after"


def cleanup(key: str) -> str:
    """The cancellation handler's step."""
    _count(key, "cleanup")
    return "cleaned up"


def write_entry(key: str) -> int:
    """An atomic step: its row commits with its checkpoint, or not at all."""
    _count(key, "slow")
    Entry.objects.create(label=key)
    return Entry.objects.filter(label=key).count()


RETRIED = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


# -- the workflows --------------------------------------------------------------------


@workflow(name="trusted_view_sleeps_on_cancel")
def sleeps_on_cancel(ctx: Context, payload: Key) -> Flow[str]:
    """``slow``, then ``after``; cancelled, it sleeps an hour, cleans up and stays cancelled."""
    try:
        yield from ctx.run("slow", slow, payload.key).options(retry=RETRIED)
        yield from ctx.run("after", after, payload.key)
    except Cancelled:
        yield from ctx.sleep("cool-off", timedelta(hours=1))
        yield from ctx.run("cleanup", cleanup, payload.key)
        raise
    return "finished"


@workflow(name="trusted_view_no_handler")
def no_handler(ctx: Context, payload: Key) -> Flow[str]:
    """``slow``, then ``after``; no handler: a cancellation ends it at once."""
    yield from ctx.run("slow", slow, payload.key)
    yield from ctx.run("after", after, payload.key)
    return "finished"


@workflow(name="trusted_view_atomic_sleeps_on_cancel")
def atomic_sleeps_on_cancel(ctx: Context, payload: Key) -> Flow[str]:
    """An atomic ``slow`` (it writes an ``Entry``), then ``after``; cancelled, as above."""
    try:
        yield from ctx.run("slow", write_entry, payload.key).options(atomic=True)
        yield from ctx.run("after", after, payload.key)
    except Cancelled:
        yield from ctx.sleep("cool-off", timedelta(hours=1))
        yield from ctx.run("cleanup", cleanup, payload.key)
        raise
    return "finished"


@workflow(name="trusted_view_parent")
def parent(ctx: Context, payload: Key) -> Flow[str]:
    """A parent waiting on a ``sleeps_on_cancel`` child: cancelling it cancels the child."""
    return (yield from ctx.invoke("child", sleeps_on_cancel, payload))


@workflow(name="trusted_view_waits_on_cancel")
def waits_on_cancel(ctx: Context, payload: Key) -> Flow[str]:
    """``slow``, then ``after``; cancelled, it waits for an event, cleans up, stays cancelled."""
    try:
        yield from ctx.run("slow", slow, payload.key)
        yield from ctx.run("after", after, payload.key)
    except Cancelled:
        yield from ctx.wait_for_event("go-on", Key, key=f"{payload.key}-go-on")
        yield from ctx.run("cleanup", cleanup, payload.key)
        raise
    return "finished"


# -- stores, runtimes, threads ----------------------------------------------------------


def _tag(record: StepRecord) -> str:
    if record.status is StepStatus.COMPLETED:
        return "completed"
    if record.status is StepStatus.FAILED:
        if record.error is not None and record.error.is_cancellation:
            return "cancelled"
        return "failed"
    return "pending"


class _GuardedStore(InvariantStore):
    """``InvariantStore`` that reports journal writes no tick may make.

    Every step write happens under the run's lock, so the records read here
    are the ones the write replaces.
    """

    def save_steps(self, run_id: str, records: Sequence[StepRecord]) -> None:
        if records:
            stored = {r.position: r for r in self.steps(run_id, min(r.position for r in records))}
            for new in records:
                old = stored.get(new.position)
                if old is None:
                    continue
                if (old.kind, old.name) != (new.kind, new.name):
                    _rewrites.append(
                        f"run {run_id}: #{new.position} {old.kind} {old.name!r} ({_tag(old)}) "
                        f"replaced by {new.kind} {new.name!r} ({_tag(new)})"
                    )
                elif old.status is not StepStatus.PENDING and (
                    (old.status, old.result, old.error) != (new.status, new.result, new.error)
                ):
                    _rewrites.append(
                        f"run {run_id}: #{new.position} {new.kind} {new.name!r} was {_tag(old)}, "
                        f"rewritten as {_tag(new)}"
                    )
        super().save_steps(run_id, records)


class _HookedStore(_GuardedStore):
    """``_GuardedStore`` that calls a hook before the n-th outermost transaction from now.

    Whichever thread begins that transaction calls it, before it begins (on
    SQLite, ``BEGIN IMMEDIATE`` would hold the database's write lock).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hook: tuple[int, Callable[[], None]] | None = None
        self._hook_lock = threading.Lock()

    def before_transaction(self, n: int, hook: Callable[[], None] | None) -> None:
        """Call ``hook`` before the n-th outermost transaction from now (None: forget it)."""
        with self._hook_lock:
            self._hook = (n, hook) if hook is not None else None

    @contextlib.contextmanager
    def atomic(self) -> Generator[None, None, None]:
        due: Callable[[], None] | None = None
        if self._tx.depth == 0:
            with self._hook_lock:
                if self._hook is not None:
                    n, hook = self._hook
                    self._hook = (n - 1, hook) if n > 1 else None
                    due = hook if n == 1 else None
        if due is not None:
            due()
        with super().atomic():
            yield


def _runtime(clock: Clock | None, store: _GuardedStore | None = None) -> Runtime:
    """A worker of its own: a guarded store, the database scheduler, a five-minute lease."""
    store = store or _GuardedStore()
    if clock is not None:
        store.clock = clock  # leases are checked against the runtime's clock
    return Runtime(store, DatabaseScheduler(), clock=clock, lease=timedelta(minutes=5))


class _LostTick(Exception):
    pass


class _TickLost(Runtime):
    """A runtime whose ticks die (say, its process): ``cancel`` records the request only."""

    def tick(self, run_id: str, *, fresh: RunState | None = None) -> TickReport:
        raise _LostTick(f"the tick of run {run_id} was lost")


class _Ticker(threading.Thread):
    """Worker A: one tick of the run on its own thread and database connection."""

    def __init__(self, runtime: Runtime, run_id: str) -> None:
        super().__init__(name=f"worker-a-{run_id}", daemon=True)
        self.runtime = runtime
        self.run_id = run_id
        self.report: TickReport | None = None
        self.error: BaseException | None = None
        _threads.append(self)

    def run(self) -> None:
        try:
            self.report = self.runtime.tick(self.run_id)
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()

    def outcome(self) -> TickReport | None:
        """The tick's report once it ended; what it raised, raised here."""
        self.join(WAIT)
        assert not self.is_alive(), "worker A's tick did not end"
        if self.error is not None:
            raise self.error
        return self.report


def _journal(runtime: Runtime, run_id: str) -> list[tuple[int, str, str, str]]:
    return [(r.position, r.kind, r.name, _tag(r)) for r in runtime.store.steps(run_id)]


def _status(runtime: Runtime, run_id: str) -> RunStatus:
    run = runtime.store.get_run(run_id)
    assert run is not None
    return run.status


def _finish(runtime: Runtime, clock: FakeClock, run_id: str) -> None:
    """Tick the run, two hours later each time, until it ends (its handler sleeps an hour)."""
    for _ in range(5):
        if _status(runtime, run_id).finished:
            return
        clock.advance(timedelta(hours=2))
        runtime.tick(run_id)


def _state(runtime: Runtime, run_id: str, key: str) -> dict[str, Any]:
    return {
        "status": _status(runtime, run_id),
        "journal": _journal(runtime, run_id),
        "calls": _calls_of(key),
        "rewrites": list(_rewrites),
    }


#: The end of a ``sleeps_on_cancel`` run cancelled while its ``slow`` step ran.
CANCELLED_AT_SLOW = {
    "status": RunStatus.CANCELLED,
    "journal": [
        (0, "run", "slow", "cancelled"),
        (1, "sleep", "cool-off", "completed"),
        (2, "run", "cleanup", "completed"),
    ],
    "calls": {"slow": 1, "after": 0, "cleanup": 1},
    "rewrites": [],
}
#: What the cancelling tick leaves: the step cancelled, the handler asleep.
HANDLER_ASLEEP = [(0, "run", "slow", "cancelled"), (1, "sleep", "cool-off", "pending")]


def _cancel(
    how: str, b: Runtime, clock: FakeClock, run_id: str, request: pytest.FixtureRequest
) -> None:
    """Cancel the run as ``how`` says; worker B's tick delivers it before this returns."""
    if how in ("other-runtime", "same-runtime"):
        b.cancel(run_id)
    elif how == "admin":
        client: Client = request.getfixturevalue("admin_client")
        response = client.post(reverse("admin:hookflow_run_cancel", args=[run_id]), follow=True)
        assert "Cancelled the run (and its children)." in [
            str(m) for m in response.context["messages"]
        ]
    elif how == "command":
        out = io.StringIO()
        call_command("hookflow", "cancel", run_id, stdout=out)
        assert f"run {run_id} cancelled" in out.getvalue()
    else:
        assert how == "worker"
        # The cancel's own tick is lost: the database worker (its sweep, its
        # claim of the wake-up the request set) delivers the cancellation.
        lost = _TickLost(b.store, DatabaseScheduler(), clock=clock)
        lost.cancel(run_id)
        assert _journal(b, run_id) == [(0, "run", "slow", "pending")]
        assert Worker(b, poll_interval=0.01).run(once=True) == 1


CANCELLERS = ["other-runtime", "same-runtime", "admin", "command", "worker"]


# -- 1. deterministic: A paused inside the step, B cancels ---------------------------------


@pytest.mark.parametrize("attempt", ["returns", "raises"])
@pytest.mark.parametrize("how", CANCELLERS)
def test_cancel_delivered_while_a_runs_the_step_wins(
    how: str, attempt: str, clock: FakeClock, request: pytest.FixtureRequest
) -> None:
    """Cancelled and ticked by B while A runs the only step: A's outcome is dropped.

    A is paused inside the step; B (``how``) cancels the run, settles the
    step as cancelled and leaves the handler asleep. A's attempt then
    returns (or fails, to be retried): the step stays cancelled, ``after``
    never runs, and the handler cleans up and ends the run cancelled.
    """
    key = f"det-{how}-{attempt}"
    _gates[key] = gate = _Gate(raises=attempt == "raises")
    b = _runtime(clock)
    a = b if how == "same-runtime" else _runtime(clock)
    with use_runtime(b):
        run, _ = b.start_run(sleeps_on_cancel, Key(key=key))
        worker_a = _Ticker(a, run.run_id)
        worker_a.start()
        assert gate.entered.wait(WAIT), "worker A never ran the step"
        _cancel(how, b, clock, run.run_id, request)
        assert _journal(b, run.run_id) == HANDLER_ASLEEP
        assert _status(b, run.run_id) is RunStatus.RUNNING
        gate.release.set()
        worker_a.outcome()
        _finish(b, clock, run.run_id)
        assert _state(b, run.run_id, key) == CANCELLED_AT_SLOW
    a.close()
    b.close()


def test_cancel_without_a_handler_ends_the_run_before_a_checkpoints(clock: FakeClock) -> None:
    """No handler: B's cancel ends the run, so A's next transaction finds it finished."""
    key = "det-no-handler"
    _gates[key] = gate = _Gate()
    b = _runtime(clock)
    a = _runtime(clock)
    with use_runtime(b):
        run, _ = b.start_run(no_handler, Key(key=key))
        worker_a = _Ticker(a, run.run_id)
        worker_a.start()
        assert gate.entered.wait(WAIT), "worker A never ran the step"
        assert b.cancel(run.run_id).status is RunStatus.CANCELLED
        gate.release.set()
        report = worker_a.outcome()
        assert report is not None and report.status is RunStatus.CANCELLED
        assert _state(b, run.run_id, key) == {
            "status": RunStatus.CANCELLED,
            "journal": [(0, "run", "slow", "cancelled")],
            "calls": {"slow": 1, "after": 0, "cleanup": 0},
            "rewrites": [],
        }
    a.close()
    b.close()


def test_cancel_between_claim_and_atomic_step_wins(clock: FakeClock) -> None:
    """An atomic step is claimed in one transaction and run in the next; B cancels between.

    A trusts its view in the second transaction too: the cancellation must
    still win, so the step's write never commits and ``after`` never runs.
    """
    key = "det-atomic"
    claimed_by_a = threading.Event()
    resume_a = threading.Event()
    _held.append(resume_a)

    def pause() -> None:
        claimed_by_a.set()
        if not resume_a.wait(WAIT):
            raise RuntimeError("the test never resumed worker A")

    store_a = _HookedStore()
    store_a.before_transaction(2, pause)  # the first claims the step, the second runs it
    b = _runtime(clock)
    a = _runtime(clock, store_a)
    with use_runtime(b):
        run, _ = b.start_run(atomic_sleeps_on_cancel, Key(key=key))
        worker_a = _Ticker(a, run.run_id)
        worker_a.start()
        assert claimed_by_a.wait(WAIT), "worker A never claimed the step"
        claimed = b.store.steps(run.run_id)
        assert [(r.kind, r.name, r.attempts) for r in claimed] == [("run", "slow", 1)]
        assert claimed[0].lease_owner is not None  # claimed by A, not run yet
        assert _calls_of(key)["slow"] == 0
        b.cancel(run.run_id)
        assert _journal(b, run.run_id) == HANDLER_ASLEEP
        resume_a.set()
        worker_a.outcome()
        _finish(b, clock, run.run_id)
        state = _state(b, run.run_id, key)
        state["calls"].pop("slow")  # the function may run if its write is rolled back
        state["entries"] = Entry.objects.filter(label=key).count()
        expected = {**CANCELLED_AT_SLOW, "calls": {"after": 0, "cleanup": 1}, "entries": 0}
        assert state == expected
    a.close()
    b.close()


def test_parent_cancel_reaching_a_child_while_a_runs_its_step(clock: FakeClock) -> None:
    """A parent's cancellation cancels its child in B; A is running the child's only step."""
    key = "det-parent"
    _gates[key] = gate = _Gate()
    b = _runtime(clock)
    a = _runtime(clock)
    with use_runtime(b):
        top, _ = b.start_run(parent, Key(key=key))
        b.tick(top.run_id)  # starts the child
        child = f"{top.run_id}-0"
        worker_a = _Ticker(a, child)
        worker_a.start()
        assert gate.entered.wait(WAIT), "worker A never ran the child's step"
        assert b.cancel(top.run_id).status is RunStatus.CANCELLED
        assert _journal(b, child) == HANDLER_ASLEEP
        gate.release.set()
        worker_a.outcome()
        _finish(b, clock, child)
        assert _state(b, child, key) == CANCELLED_AT_SLOW
        assert _status(b, top.run_id) is RunStatus.CANCELLED
    a.close()
    b.close()


# -- 2. PostgreSQL: the race run many times on real threads ---------------------------------

#: When the canceller lets A's step return: before it calls ``cancel``, once the
#: request is committed and B's tick is about to begin, or once ``cancel`` returned.
RELEASES = ("before the cancel", "before B's tick", "after the cancel")


@dataclass
class _Round:
    """What one round's canceller saw."""

    cancelled: RunState | None = None
    error: BaseException | None = None


def _legal_ends(cancelled_running: bool) -> dict[str, dict[str, Any]]:
    """The ends of a ``waits_on_cancel`` run that some order of the two workers explains."""
    if not cancelled_running:  # the cancel came after the run had finished
        return {
            "completed first": {
                "status": RunStatus.COMPLETED,
                "journal": [(0, "run", "slow", "completed"), (1, "run", "after", "completed")],
                "calls": {"slow": 1, "after": 1, "cleanup": 0},
            }
        }
    ends: dict[str, dict[str, Any]] = {
        "cancelled at slow": {  # A's outcome dropped, `after` never ran
            "status": RunStatus.CANCELLED,
            "journal": [
                (0, "run", "slow", "cancelled"),
                (1, "event", "go-on", "completed"),
                (2, "run", "cleanup", "completed"),
            ],
            "calls": {"slow": 1, "after": 0, "cleanup": 1},
        }
    }
    for ran in (0, 1):  # `after` may have run, its result dropped
        ends[f"cancelled at after (ran {ran}x)"] = {
            "status": RunStatus.CANCELLED,
            "journal": [
                (0, "run", "slow", "completed"),
                (1, "run", "after", "cancelled"),
                (2, "event", "go-on", "completed"),
                (3, "run", "cleanup", "completed"),
            ],
            "calls": {"slow": 1, "after": ran, "cleanup": 1},
        }
    return ends


def _round(i: int, a: Runtime, b: Runtime, store_b: _HookedStore, release: str) -> str:
    """One run of ``waits_on_cancel`` cancelled by B while A ticks it: how it ended.

    Returns the name of a legal end, or a description of what went wrong.
    """
    key = f"stress-{i}"
    _gates[key] = gate = _Gate()
    run, _ = b.start_run(waits_on_cancel, Key(key=key))
    seen = _Round()

    def cancel() -> None:
        try:
            if not gate.entered.wait(WAIT):
                raise RuntimeError("worker A never ran the step")
            if release == RELEASES[0]:
                gate.release.set()
            elif release == RELEASES[1]:
                store_b.before_transaction(2, gate.release.set)  # 1: the request; 2: B's tick
            seen.cancelled = b.cancel(run.run_id)
        except BaseException as exc:
            seen.error = exc
        finally:
            store_b.before_transaction(0, None)
            gate.release.set()
            connection.close()

    worker_a = _Ticker(a, run.run_id)
    canceller = threading.Thread(target=cancel, name=f"worker-b-{i}", daemon=True)
    _threads.append(canceller)
    worker_a.start()
    canceller.start()
    canceller.join(WAIT)
    try:
        worker_a.outcome()
    except BaseException as exc:
        return f"wrong: worker A's tick raised {exc!r}"
    if canceller.is_alive() or seen.error is not None or seen.cancelled is None:
        return f"wrong: the cancel did not finish: {seen.error!r}"
    for _ in range(10):  # the handler waits for an event: send it, tick until the run ends
        if _status(b, run.run_id).finished:
            break
        b.notify(f"{key}-go-on", Key(key=key))
        b.tick(run.run_id)
    state = _state(b, run.run_id, key)
    rewrites = state.pop("rewrites")
    _rewrites.clear()
    ends = _legal_ends(cancelled_running=not seen.cancelled.status.finished)
    name = next((name for name, end in ends.items() if end == state), None)
    if rewrites or name is None:
        return f"wrong: the cancel saw {seen.cancelled.status.value}; {state}; rewrites {rewrites}"
    return name


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_cancel_racing_a_running_step_many_times() -> None:
    """50 rounds of B cancelling a run while A runs its step, on real threads and clocks.

    Whichever order the two workers' transactions take, the run ends as some
    order of them explains: a step cancelled stays cancelled, nothing after
    it runs, and a run cancelled while running ends cancelled through its
    handler. No settled record is ever rewritten.
    """
    rng = random.Random(20240611)
    store_b = _HookedStore()
    a = _runtime(None)
    b = _runtime(None, store_b)
    ends: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    with use_runtime(b):
        for i in range(ITERATIONS):
            release = rng.choice(RELEASES)
            end = _round(i, a, b, store_b, release)
            ends[release, end.partition(":")[0]] += 1
            if end.startswith("wrong"):
                problems.append(f"round {i} (A released {release}): {end}")
    a.close()
    b.close()
    tally = "\n".join(f"  A released {r}: {end}: {n}" for (r, end), n in sorted(ends.items()))
    assert not problems, (
        f"{len(problems)} of {ITERATIONS} rounds went wrong; how the rounds ended:\n{tally}\n"
        "the first few that went wrong:\n" + "\n".join(problems[:4])
    )
