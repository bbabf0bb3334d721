"""Runs and steps per second of one worker process at ``--concurrency`` 1, 4 and 16.

Each step waits 50 ms on I/O (a sleep, as a call to another service would):
one tick at a time, a worker can do at most 20 such steps a second, and
``--concurrency N`` lets N ticks wait at once. For each database (SQLite,
PostgreSQL) and concurrency, R runs of n steps are created in one
transaction with one ``manage.py hookflow worker --concurrency N`` process
already polling; the clock starts at the commit and stops when every run has
completed.

Run: ``uv run python benchmarks/concurrency.py [--db sqlite postgres] [--runs 64] [--steps 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import setup, wait_all_done  # noqa: E402

CONCURRENCY = (1, 4, 16)


def create_runs(runs: int, steps: int, seconds: float) -> list[str]:
    from django.db import transaction

    from bench_app.workflows import Waits, io_steps

    with transaction.atomic():
        return [io_steps.start(Waits(n=steps, seconds=seconds)).run_id for _ in range(runs)]


def _wait_for_line(stream: IO[str], text: str, timeout: float = 120) -> None:
    """Return once the worker printed a line containing ``text``; keep draining it after."""
    seen = threading.Event()

    def read() -> None:
        for line in stream:
            if text in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    if not seen.wait(timeout):
        raise TimeoutError(f"the worker did not print {text!r} within {timeout}s")


def one_worker(concurrency: int, runs: int, steps: int, seconds: float) -> dict[str, float]:
    """Runs and steps per second with one worker process ticking ``concurrency`` runs at once."""
    from hookflow_gen.django.models import Run, Step

    Step.objects.all().delete()
    Run.objects.all().delete()
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "django", "hookflow", "worker"]
    command += ["--concurrency", str(concurrency)]
    proc = subprocess.Popen(
        command, env=env, cwd=HERE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stderr is not None
        _wait_for_line(proc.stderr, "worker started")
        start = time.perf_counter()
        run_ids = create_runs(runs, steps, seconds)
        wait_all_done(run_ids)
        elapsed = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"runs_per_s": runs / elapsed, "steps_per_s": runs * steps / elapsed}


def measure(db: str, runs: int, steps: int, seconds: float) -> dict[str, Any]:
    setup(db)
    result: dict[str, Any] = {"db": db, "runs": runs, "steps": steps, "seconds": seconds}
    for concurrency in CONCURRENCY:
        result[str(concurrency)] = one_worker(concurrency, runs, steps, seconds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Worker throughput by --concurrency.")
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="Print one JSON object per db.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.runs, args.steps, args.step_seconds)))
        return
    rows = []
    for db in args.db:
        # One process per database: Django is configured once per process.
        command = [sys.executable, __file__, "--child", db, "--runs", str(args.runs)]
        command += ["--steps", str(args.steps), "--step-seconds", str(args.step_seconds)]
        child = subprocess.run(command, check=False, capture_output=True, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(f"the {db} measurement failed (exit {child.returncode})")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(
        f"{args.runs} runs x {args.steps} steps of {args.step_seconds * 1000:.0f} ms, "
        "one worker process"
    )
    print("| db | concurrency | runs/s | steps/s |")
    print("|---|---|---|---|")
    for r in rows:
        for concurrency in CONCURRENCY:
            figures = r[str(concurrency)]
            print(
                f"| {r['db']} | {concurrency} | {figures['runs_per_s']:.1f} "
                f"| {figures['steps_per_s']:.1f} |"
            )


if __name__ == "__main__":
    main()
