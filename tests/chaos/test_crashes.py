"""Worker processes SIGKILLed at every phase of a tick, and at random, on PostgreSQL.

Each test starts ``chaos_job`` runs (plain, atomic, gather, sleep and child
steps), runs real ``manage.py hookflow worker`` processes with a short lease
and kill points (``tests/_invariant.py``), restarts every killed worker, and
checks: every run completes with the right result, each atomic step's writes
committed exactly once, plain steps re-ran at most once per kill, and no
commit left a RUNNING run without a wake-up, lease or registered wait.

The small configuration runs in CI; ``HOOKFLOW_CHAOS_RUNS=200`` (and
optionally ``HOOKFLOW_CHAOS_KILLS``, ``HOOKFLOW_CHAOS_WORKERS``,
``HOOKFLOW_CHAOS_DEADLINE`` in seconds, ``HOOKFLOW_CHAOS_SEED``) makes the
random test larger; run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hookflow_gen import RunStatus
from hookflow_gen.django.models import Run
from tests.chaos._supervisor import Figures, Supervisor
from tests.chaos.workflows import Job, chaos_job
from tests.conftest import POSTGRES

pytestmark = [
    pytest.mark.skipif(
        not POSTGRES,
        reason="the crash suite needs PostgreSQL (HOOKFLOW_TEST_DB=postgres): SQLite has no "
        "row locks, so concurrent workers there test nothing about them",
    ),
    pytest.mark.django_db(transaction=True),
]

RUNS = int(os.environ.get("HOOKFLOW_CHAOS_RUNS", "0"))

# The phases of a tick the workers are killed at (see tests/_invariant.py), with
# the odds per crossing: high where a run crosses the phase only twice (its
# two atomic steps), so each test kills at least once.
PHASES = {
    "claimed": 0.3,
    "begin": 0.3,
    "savepoint": 0.6,
    "before_commit": 0.3,
    "after_commit": 0.3,
    "after_atomic_commit": 0.6,
    "in_step": 0.3,
    "in_atomic_step": 0.6,
}


def _check(figures: Figures) -> None:
    print(f"\ncrash suite: {figures.line()}")
    problems = [
        *(f"stranded: {run}" for run in figures.stranded),
        *(f"unfinished: {run}" for run in figures.unfinished),
        *(f"wrong result: {wrong}" for wrong in figures.wrong_results),
        *(f"invariant: {violation}" for violation in figures.invariant_violations[:10]),
    ]
    if figures.atomic_duplicates:
        problems.append(f"{figures.atomic_duplicates} atomic step(s) committed twice")
    if figures.atomic_missing:
        problems.append(f"{figures.atomic_missing} atomic step(s) never committed")
    if figures.plain_extra > figures.kills:
        problems.append(
            f"{figures.plain_extra} plain re-runs for {figures.kills} kills (one at most per kill)"
        )
    assert not problems, figures.line() + "\n" + "\n".join(problems)


def _start(count: int) -> list[str]:
    return [chaos_job.start(Job(n=n)).run_id for n in range(count)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("phase", list(PHASES))
def test_worker_killed_at_phase(phase: str, tmp_path: Path) -> None:
    """Workers killed up to four times at one phase of a tick: all runs complete, effects once."""
    run_ids = _start(4)
    chaos = f"{phase}={PHASES[phase]}"
    supervisor = Supervisor(tmp_path, chaos=chaos, max_kills=4, seed=len(phase))
    figures = supervisor.run(run_ids, deadline=150)
    assert figures.kills_by_phase[phase] >= 1, f"no kill at {phase}: {figures.line()}"
    _check(figures)


@pytest.mark.timeout(240)
def test_no_kills_baseline(tmp_path: Path) -> None:
    """Without kills the same runs complete on two workers with every step run once."""
    run_ids = _start(3)
    figures = Supervisor(tmp_path, chaos="", max_kills=0).run(run_ids, deadline=150)
    print(f"\ncrash suite, no kills: {figures.line()}")
    assert figures.completed == 3, figures.line()
    assert figures.plain_extra == figures.atomic_duplicates == figures.atomic_missing == 0
    statuses = Run.objects.filter(run_id__in=run_ids).values_list("status", flat=True)
    assert list(statuses) == [RunStatus.COMPLETED.value] * 3


@pytest.mark.timeout(max(240, 3 * RUNS + 120))
def test_workers_killed_at_random(tmp_path: Path) -> None:
    """Kills at random phases and moments with a short lease: no run stranded, effects once."""
    runs = RUNS or 6
    kills = int(os.environ.get("HOOKFLOW_CHAOS_KILLS", str(max(6, runs // 2))))
    odds = ",".join(f"{phase}=0.03" for phase in PHASES if phase != "after_atomic_commit")
    odds += ",after_atomic_commit=0.1"
    supervisor = Supervisor(
        tmp_path,
        chaos=odds,
        max_kills=kills,
        workers=int(os.environ.get("HOOKFLOW_CHAOS_WORKERS", "2")),
        external_kill_odds=0.02,
        seed=int(os.environ.get("HOOKFLOW_CHAOS_SEED", "1")),
    )
    deadline = float(os.environ.get("HOOKFLOW_CHAOS_DEADLINE", max(150.0, 2.5 * runs + 60)))
    figures = supervisor.run(_start(runs), deadline=deadline)
    assert figures.kills >= 1, figures.line()
    _check(figures)
