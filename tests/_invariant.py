"""The durability invariant, checked after each outermost commit; the crash suite's kill points.

The invariant: a RUNNING run always has a way to be ticked again. After each
transaction that leaves a run RUNNING, the run has its ``wake_at`` set, or a
PENDING ``run``/``call`` step whose lease has not lapsed, or a PENDING
``event`` step (a registered wait), or a PENDING ``invoke`` step whose child
run (the step's key) exists and is RUNNING. And a CONTINUED run (ended by
``continue_as_new``) has no wake-up and names in ``continued_as`` a run that
exists, names it back in ``continued_from`` and is one generation later:
the end and the new run are one commit.

``InvariantStore`` is ``DjangoStore`` with the check added (the test settings
name it in ``HOOKFLOW["STORE"]``); ``check_memory_store`` does the same for
``MemoryStore``, whose ``atomic`` the test suite wraps. Violations are
collected in ``VIOLATIONS`` (the conftest fails the test that caused them)
and, in worker subprocesses, appended to the file ``HOOKFLOW_INVARIANT_LOG``
names.

Kill points: a worker subprocess started with ``HOOKFLOW_CHAOS`` set (for
example ``after_commit=0.3,claimed=1``) SIGKILLs itself at those phases of a
tick with that probability, until ``HOOKFLOW_CHAOS_MAX_KILLS`` kills in all
(counted across processes in the directory ``HOOKFLOW_CHAOS_DIR``) have
happened. The phases the store sees are ``claimed`` (a worker claimed a
due run), ``begin`` (a transaction began: after a step function returned,
its checkpoint's), ``before_commit``, ``after_commit`` and ``savepoint``
(the end of a nested transaction: an atomic step's function returned, its
writes and checkpoint not committed yet). Step functions call ``kill_point``
for the phases inside them (``in_step``, ``in_atomic_step``); an atomic step
calls ``arm_after_commit`` so that ``after_atomic_commit`` kills right after
the commit of its own transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookflow_gen import RunStatus
from hookflow_gen._clock import Clock, SystemClock
from hookflow_gen._journal import StepRecord, StepStatus
from hookflow_gen._store import MemoryStore, RunState
from hookflow_gen.django._store import Claimed, DjangoStore

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = [
    "PHASES",
    "VIOLATIONS",
    "InvariantStore",
    "arm_after_commit",
    "check_django_runs",
    "check_memory_store",
    "kill_point",
    "stranded_runs",
    "wrap_memory_store",
]

log = logging.getLogger("hookflow_gen.invariant")

#: The phases a worker can be killed at (``HOOKFLOW_CHAOS``).
PHASES = (
    "claimed",
    "begin",
    "savepoint",
    "before_commit",
    "after_commit",
    "after_atomic_commit",
    "in_step",
    "in_atomic_step",
)

#: Invariant violations seen in this process since the list was last cleared.
VIOLATIONS: list[str] = []

# -- kill points -------------------------------------------------------------------


@dataclass
class _Chaos:
    odds: dict[str, float] = field(default_factory=dict[str, float])
    directory: Path | None = None
    max_kills: int = 0
    rng: random.Random = field(default_factory=random.Random)


def _parse_chaos() -> _Chaos:
    spec = os.environ.get("HOOKFLOW_CHAOS", "").strip()
    chaos = _Chaos()
    if not spec:
        return chaos
    for part in spec.split(","):
        phase, _, odds = part.partition("=")
        phase = phase.strip()
        if phase not in PHASES:
            raise ValueError(f"HOOKFLOW_CHAOS names an unknown phase {phase!r}; use {PHASES}")
        chaos.odds[phase] = float(odds) if odds else 1.0
    directory = os.environ.get("HOOKFLOW_CHAOS_DIR")
    if not directory:
        raise ValueError("HOOKFLOW_CHAOS needs HOOKFLOW_CHAOS_DIR (where kills are counted)")
    chaos.directory = Path(directory)
    chaos.max_kills = int(os.environ.get("HOOKFLOW_CHAOS_MAX_KILLS", "1"))
    seed = os.environ.get("HOOKFLOW_CHAOS_SEED")
    chaos.rng = random.Random(f"{seed}-{os.getpid()}" if seed else None)
    return chaos


_CHAOS = _parse_chaos()


def kill_point(phase: str) -> None:
    """SIGKILL this process here if ``HOOKFLOW_CHAOS`` says so for ``phase``."""
    odds = _CHAOS.odds.get(phase)
    if odds is None or _CHAOS.directory is None or _CHAOS.rng.random() >= odds:
        return
    with (_CHAOS.directory / "kills.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kills = _CHAOS.directory / "kills"
        done = len(kills.read_text().splitlines()) if kills.exists() else 0
        if done >= _CHAOS.max_kills:
            return
        with kills.open("a") as file:
            file.write(f"{os.getpid()} {phase}\n")
            file.flush()
            os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


_ARMED = threading.local()


def arm_after_commit() -> None:
    """Make the next outermost commit in this thread a crossing of ``after_atomic_commit``."""
    _ARMED.armed = True


def _after_commit(cross: Callable[[str], None]) -> None:
    cross("after_commit")
    if getattr(_ARMED, "armed", False):
        _ARMED.armed = False
        cross("after_atomic_commit")


# -- the invariant -----------------------------------------------------------------


def _report(problems: Iterable[str]) -> None:
    for problem in problems:
        VIOLATIONS.append(problem)
        log.error("invariant violated: %s", problem)
        path = os.environ.get("HOOKFLOW_INVARIANT_LOG")
        if path:
            with Path(path).open("a") as file:
                file.write(problem + "\n")


def check_django_runs(using: str, now: datetime, run_ids: Iterable[str] | None = None) -> list[str]:
    """The RUNNING runs (of ``run_ids``, or all) that break the invariant, described.

    One statement, so it reads one snapshot even while other workers commit.
    """
    from django.db.models import Exists, OuterRef, Q

    from hookflow_gen.django.models import Run, Step

    pending = Step.objects.using(using).filter(run_id=OuterRef("run_id"), status="pending")
    live_child = Run.objects.using(using).filter(run_id=OuterRef("key"), status="running")
    kept = (
        pending.filter(kind__in=("run", "call"), lease_until__gt=now)
        | pending.filter(kind="event")
        | pending.filter(kind="invoke").filter(Exists(live_child))
    )
    runs = Run.objects.using(using).filter(Q(status="running"), Q(wake_at__isnull=True))
    if run_ids is not None:
        runs = runs.filter(run_id__in=list(run_ids))
    stranded = list(runs.exclude(Exists(kept)).values_list("run_id", "workflow"))
    problems = [
        f"run {run_id} ({workflow}) is RUNNING with no wake-up, live lease or registered wait "
        f"at {now.isoformat()}; pending steps: {_pending_steps(using, run_id) or 'none'}"
        for run_id, workflow in stranded
    ]
    successor = Run.objects.using(using).filter(
        run_id=OuterRef("continued_as"),
        continued_from=OuterRef("run_id"),
        generation=OuterRef("generation") + 1,
    )
    continued = Run.objects.using(using).filter(status="continued")
    if run_ids is not None:
        continued = continued.filter(run_id__in=list(run_ids))
    broken = continued.filter(Q(wake_at__isnull=False) | ~Exists(successor))
    problems += [
        f"run {run_id} is CONTINUED as {continued_as!r}, but that run does not continue it "
        "(missing, or not linked back one generation later), or it still has a wake-up"
        for run_id, continued_as in broken.values_list("run_id", "continued_as")
    ]
    return problems


def _pending_steps(using: str, run_id: str) -> str:
    from hookflow_gen.django.models import Step

    rows = Step.objects.using(using).filter(run_id=run_id, status="pending").order_by("position")
    return "; ".join(
        f"#{position} {kind} {name!r} lease_until={lease} key={key}"
        for position, kind, name, lease, key in rows.values_list(
            "position", "kind", "name", "lease_until", "key"
        )
    )


def stranded_runs(using: str = "default", now: datetime | None = None) -> list[str]:
    """Every RUNNING run in the database that breaks the invariant (end-of-test checks)."""
    return check_django_runs(using, now or SystemClock().now())


def _chain_problem(store: MemoryStore, run: RunState) -> str | None:
    following = store.runs.get(run.continued_as) if run.continued_as else None
    if (
        run.wake_at is None
        and following is not None
        and following.continued_from == run.run_id
        and following.generation == run.generation + 1
    ):
        return None
    return (
        f"run {run.run_id} is CONTINUED as {run.continued_as!r}, but that run does not "
        "continue it (missing, or not linked back one generation later), or it still has a wake-up"
    )


def _memory_problems(store: MemoryStore, run_ids: Iterable[str]) -> list[str]:
    problems: list[str] = []
    for run_id in run_ids:
        run = store.runs.get(run_id)
        if run is not None and run.status is RunStatus.CONTINUED:
            problem = _chain_problem(store, run)
            if problem is not None:
                problems.append(problem)
            continue
        if run is None or run.status is not RunStatus.RUNNING or run.wake_at is not None:
            continue
        if not any(_keeps(store, record) for record in store.journals.get(run_id, {}).values()):
            problems.append(
                f"run {run_id} ({run.workflow}) is RUNNING with no wake-up, "
                "lease or registered wait"
            )
    return problems


def _keeps(store: MemoryStore, record: StepRecord) -> bool:
    if record.status is not StepStatus.PENDING:
        return False
    if record.kind in ("run", "call"):
        # MemoryStore knows no clock: a lease written at all counts as live here.
        return record.lease_until is not None
    if record.kind == "event":
        return True
    if record.kind == "invoke" and record.key is not None:
        child = store.runs.get(record.key)
        return child is not None and child.status is RunStatus.RUNNING
    return False


def check_memory_store(store: MemoryStore, run_ids: Iterable[str] | None = None) -> list[str]:
    """The RUNNING runs of a ``MemoryStore`` that break the invariant, described."""
    return _memory_problems(store, list(store.runs) if run_ids is None else run_ids)


# -- the wrappers --------------------------------------------------------------------


class _Transaction(threading.local):
    depth = 0
    touched: set[str]

    def __init__(self) -> None:
        self.touched = set()


class InvariantStore(DjangoStore):
    """``DjangoStore`` that checks the invariant after each outermost commit.

    Only the runs the transaction touched are checked (locked, created or
    written), so rows a test builds by hand elsewhere are not its concern.
    Its ``clock`` (set by the test fixtures to the runtime's) says when a
    lease has lapsed.
    """

    clock: Clock = SystemClock()

    def __init__(self, using: str | None = None) -> None:
        super().__init__(using=using)
        self._tx = _Transaction()

    @contextlib.contextmanager
    def atomic(self) -> Generator[None, None, None]:
        tx = self._tx
        outermost = tx.depth == 0
        block = super().atomic()
        block.__enter__()
        tx.depth += 1
        if outermost:
            self.cross("begin")
        try:
            yield
        except BaseException as exc:
            tx.depth -= 1
            if outermost:
                tx.touched = set()
            if not block.__exit__(type(exc), exc, exc.__traceback__):
                raise
            return
        tx.depth -= 1
        if not outermost:
            self.cross("savepoint")
            block.__exit__(None, None, None)
            return
        touched, tx.touched = tx.touched, set()
        self.cross("before_commit")
        block.__exit__(None, None, None)
        if _enabled() and touched:
            _report(check_django_runs(self.db, self.clock.now(), touched))
        _after_commit(self.cross)

    def cross(self, phase: str) -> None:
        """The tick reached ``phase``: a kill point (a test's subclass may do more)."""
        kill_point(phase)

    def _touch(self, run_id: str) -> None:
        self._tx.touched.add(run_id)

    def create_run(self, run: RunState) -> tuple[RunState, bool]:
        self._touch(run.run_id)
        return super().create_run(run)

    def lock_run(self, run_id: str) -> RunState | None:
        self._touch(run_id)
        return super().lock_run(run_id)

    def save_run(self, run: RunState) -> None:
        self._touch(run.run_id)
        super().save_run(run)

    def save_steps(self, run_id: str, records: Sequence[StepRecord]) -> None:
        self._touch(run_id)
        super().save_steps(run_id, records)

    def write_guarded(
        self,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        """The guarded write is a transaction of its own: the same kill points and check."""
        if self._tx.depth:  # inside a transaction of the caller's: checked at its commit
            self._touch(run_id)
            return super().write_guarded(run_id, guard, owner, others, finish=finish)
        self.cross("begin")
        self.cross("before_commit")
        written = super().write_guarded(run_id, guard, owner, others, finish=finish)
        if written and _enabled():
            _report(check_django_runs(self.db, self.clock.now(), (run_id,)))
        _after_commit(self.cross)
        return written

    def claim_due(
        self, now: datetime, lease: timedelta, exclude: Collection[str] = ()
    ) -> Claimed | None:
        claimed = super().claim_due(now, lease, exclude)
        if claimed is not None:
            self.cross("claimed")
        return claimed

    def begin_guarded(self, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        """A guarded first tick is a transaction of its own: the same kill points and check."""
        if self._tx.depth:
            self._touch(run.run_id)
            return super().begin_guarded(run, seen_seq, claim)
        self.cross("begin")
        self.cross("before_commit")
        written = super().begin_guarded(run, seen_seq, claim)
        if written and _enabled():
            _report(check_django_runs(self.db, self.clock.now(), (run.run_id,)))
        _after_commit(self.cross)
        return written


#: Set False by a test marked ``no_invariant`` (it builds a broken state on purpose).
_ENABLED = [True]


def _enabled() -> bool:
    return _ENABLED[0]


def set_enabled(enabled: bool) -> None:
    """Turn the after-commit checks on or off (the conftest does, per test)."""
    _ENABLED[0] = enabled


_MEMORY_TOUCHING = ("create_run", "lock_run", "save_run", "save_step", "save_steps")


def wrap_memory_store(setattr_: Callable[[object, str, object], None]) -> None:
    """Make every ``MemoryStore`` check the invariant after its outermost commits.

    ``setattr_`` is ``monkeypatch.setattr``, so the wrapping ends with the test.
    """
    original_atomic = MemoryStore.atomic
    state = threading.local()

    def _touched(store: MemoryStore) -> set[str]:
        by_store: dict[int, set[str]] = state.__dict__.setdefault("touched", {})
        return by_store.setdefault(id(store), set())

    @contextlib.contextmanager
    def atomic(self: MemoryStore) -> Generator[None, None, None]:
        depths: dict[int, int] = state.__dict__.setdefault("depth", {})
        outermost = depths.get(id(self), 0) == 0
        depths[id(self)] = depths.get(id(self), 0) + 1
        try:
            with original_atomic(self):
                yield
        except BaseException:
            if outermost:
                _touched(self).clear()
            raise
        finally:
            depths[id(self)] -= 1
        if outermost:
            touched = set(_touched(self))
            _touched(self).clear()
            if _enabled() and touched:
                _report(_memory_problems(self, touched))

    setattr_(MemoryStore, "atomic", atomic)

    for name in _MEMORY_TOUCHING:
        original: Callable[..., Any] = getattr(MemoryStore, name)

        def touching(
            self: MemoryStore, first: Any, *args: Any, _original: Callable[..., Any] = original
        ) -> Any:
            _touched(self).add(first.run_id if isinstance(first, RunState) else str(first))
            return _original(self, first, *args)

        setattr_(MemoryStore, name, touching)

    original_guarded = MemoryStore.write_guarded

    def write_guarded(
        self: MemoryStore,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        written = original_guarded(self, run_id, guard, owner, others, finish=finish)
        if written and _enabled() and depths_of(self) == 0:
            _report(_memory_problems(self, (run_id,)))
        return written

    def depths_of(store: MemoryStore) -> int:
        depths: dict[int, int] = state.__dict__.setdefault("depth", {})
        return depths.get(id(store), 0)

    setattr_(MemoryStore, "write_guarded", write_guarded)

    original_begin = MemoryStore.begin_guarded

    def begin_guarded(self: MemoryStore, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        written = original_begin(self, run, seen_seq, claim)
        if written and _enabled() and depths_of(self) == 0:
            _report(_memory_problems(self, (run.run_id,)))
        return written

    setattr_(MemoryStore, "begin_guarded", begin_guarded)
