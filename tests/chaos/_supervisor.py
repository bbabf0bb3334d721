"""Start worker processes with kill points, restart the killed ones, and tally the damage."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.db import connection

from hookflow_gen.django.models import Run
from tests._invariant import stranded_runs
from tests.djangoapp.models import Entry, Execution

ROOT = Path(__file__).resolve().parents[2]

#: How long a run may break the invariant before it counts as stranded: a
#: live worker repairs a passing gap between two transactions in far less.
STRANDED_AFTER = 5.0


@dataclass
class Figures:
    """What one crash run did: counts for the assertions and the report."""

    runs: int = 0
    completed: int = 0
    wrong_results: list[str] = field(default_factory=list[str])
    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter[str])
    restarts: int = 0
    stranded: list[str] = field(default_factory=list[str])
    unfinished: list[str] = field(default_factory=list[str])
    atomic_duplicates: int = 0
    atomic_missing: int = 0
    plain_extra: int = 0
    invariant_violations: list[str] = field(default_factory=list[str])
    worker_errors: list[str] = field(default_factory=list[str])
    seconds: float = 0.0

    def line(self) -> str:
        """One line for a person reading the test's output."""
        phases = ", ".join(f"{phase} {n}" for phase, n in sorted(self.kills_by_phase.items()))
        return (
            f"runs {self.runs}, completed {self.completed}, kills {self.kills} ({phases}), "
            f"restarts {self.restarts}, stranded {len(self.stranded)}, "
            f"unfinished {len(self.unfinished)}, wrong results {len(self.wrong_results)}, "
            f"atomic duplicates {self.atomic_duplicates}, atomic missing {self.atomic_missing}, "
            f"plain re-executions {self.plain_extra}, "
            f"invariant violations {len(self.invariant_violations)}, "
            f"worker errors {len(self.worker_errors)}, {self.seconds:.1f}s"
        )


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    log: Path
    output: IO[bytes]


class Supervisor:
    """Keeps ``workers`` worker processes alive (restarting killed ones) until runs finish.

    Args:
        directory: where kills are counted and worker logs are written.
        chaos: the ``HOOKFLOW_CHAOS`` spec the workers get (``phase=odds,...``).
        max_kills: kills (by kill points) allowed in all, across restarts.
        workers: how many worker processes run at once.
        lease: the workers' ``LEASE`` in seconds (short: killed steps come back soon).
        external_kill_odds: per poll, the chance the supervisor itself SIGKILLs a
            random worker at an arbitrary point (counted against ``max_kills``).
        seed: makes the kill points' and the supervisor's choices repeatable.
    """

    def __init__(
        self,
        directory: Path,
        *,
        chaos: str,
        max_kills: int,
        workers: int = 2,
        lease: float = 2.0,
        external_kill_odds: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.directory = directory
        self.max_kills = max_kills
        self.workers = workers
        self.external_kill_odds = external_kill_odds
        self.rng = random.Random(seed)
        self.external_kills = 0
        self.restarts = 0
        self.invariant_log = directory / "invariant.log"
        self.env = dict(os.environ)
        self.env.update(
            {
                "HOOKFLOW_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
                "HOOKFLOW_TEST_LEASE": str(lease),
                "HOOKFLOW_TEST_POLL": "0.05",
                "HOOKFLOW_CHAOS": chaos,
                "HOOKFLOW_CHAOS_DIR": str(directory),
                "HOOKFLOW_CHAOS_MAX_KILLS": str(max_kills),
                "HOOKFLOW_CHAOS_SEED": str(seed),
                "HOOKFLOW_INVARIANT_LOG": str(self.invariant_log),
            }
        )
        if not chaos:
            del self.env["HOOKFLOW_CHAOS"]
        self._live: list[_Worker] = []
        self._all: list[_Worker] = []
        self._started = 0

    def _start(self) -> _Worker:
        self._started += 1
        log = self.directory / f"worker-{self._started}.log"
        output = log.open("wb")
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "manage.py"), "hookflow", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        worker = _Worker(process, log, output)
        self._all.append(worker)
        return worker

    def kills(self) -> Counter[str]:
        """Kills so far, by phase (``external`` for the supervisor's own)."""
        path = self.directory / "kills"
        phases: Counter[str] = Counter()
        if path.exists():
            phases.update(line.split()[1] for line in path.read_text().splitlines() if line)
        if self.external_kills:
            phases["external"] = self.external_kills
        return phases

    def run(
        self, run_ids: list[str], *, deadline: float, max_restarts: int | None = None
    ) -> Figures:
        """Keep workers going until every run finished, some are stranded, or ``deadline`` s.

        With ``max_restarts``, also give up once workers were restarted that often.
        """
        started = time.monotonic()
        self._live = [self._start() for _ in range(self.workers)]
        violating_since: dict[str, float] = {}
        stranded: list[str] = []
        try:
            while time.monotonic() - started < deadline:
                if max_restarts is not None and self.restarts > max_restarts:
                    break
                for index, worker in enumerate(self._live):
                    if worker.process.poll() is not None:
                        worker.output.close()
                        if worker.process.returncode != -signal.SIGKILL:
                            log = worker.log.read_text(errors="replace")[-4000:]
                            raise AssertionError(
                                f"a worker exited with {worker.process.returncode}:\n{log}"
                            )
                        self.restarts += 1
                        self._live[index] = self._start()
                if self._maybe_kill_one():
                    continue
                unfinished = set(
                    Run.objects.filter(run_id__in=run_ids, status="running").values_list(
                        "run_id", flat=True
                    )
                )
                if not unfinished:
                    break
                now = time.monotonic()
                violating = {problem.split()[1] for problem in stranded_runs()} & unfinished
                for run_id in list(violating_since):
                    if run_id not in violating:
                        del violating_since[run_id]
                for run_id in violating:
                    violating_since.setdefault(run_id, now)
                stranded = sorted(
                    run_id
                    for run_id, since in violating_since.items()
                    if now - since >= STRANDED_AFTER
                )
                if stranded and set(stranded) == unfinished:
                    break  # nothing left that any worker will ever tick
                time.sleep(0.1)  # polling rows, not waiting for readiness
        finally:
            self.stop()
        return self._figures(run_ids, stranded, time.monotonic() - started)

    def _maybe_kill_one(self) -> bool:
        if not self.external_kill_odds or self.rng.random() >= self.external_kill_odds:
            return False
        if sum(self.kills().values()) >= self.max_kills:
            return False
        victim = self.rng.choice(self._live)
        if victim.process.poll() is not None:
            return False
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        self.external_kills += 1
        return True

    def stop(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL) and close their logs."""
        for worker in self._all:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self._all:
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=30)
            worker.output.close()

    def _figures(self, run_ids: list[str], stranded: list[str], seconds: float) -> Figures:
        from tests.chaos.workflows import expected

        figures = Figures(runs=len(run_ids), restarts=self.restarts, seconds=seconds)
        figures.kills_by_phase = self.kills()
        figures.kills = sum(figures.kills_by_phase.values())
        rows = Run.objects.filter(run_id__in=run_ids, workflow="chaos_job").values_list(
            "run_id", "status", "payload", "result"
        )

        completed: list[str] = []
        for run_id, status, payload, result in rows:
            if status != "completed":
                figures.unfinished.append(f"{run_id} {status}")
                continue
            figures.completed += 1
            completed.append(run_id)
            want = expected(json.loads(payload)["n"])
            if result is None or json.loads(result) != want:
                figures.wrong_results.append(f"{run_id}: {result} != {want}")
        figures.stranded = stranded
        labels = Counter(Entry.objects.values_list("label", flat=True))
        figures.atomic_duplicates = sum(n - 1 for n in labels.values() if n > 1)
        # Two atomic steps per run: "effect" and "last" (one per completed run each).
        for run_id in completed:
            mine = [label for label in labels if label.startswith(f"{run_id}:")]
            figures.atomic_missing += max(0, 2 - len(mine))
        executions = Counter(Execution.objects.values_list("run_id", "position"))
        figures.plain_extra = sum(n - 1 for n in executions.values() if n > 1)
        if self.invariant_log.exists():
            figures.invariant_violations = self.invariant_log.read_text().splitlines()
        for worker in self._all:
            text = worker.log.read_text(errors="replace")
            if "Traceback" in text or " ERROR " in text:
                figures.worker_errors.append(f"{worker.log.name}: {text[-2000:]}")
        return figures
