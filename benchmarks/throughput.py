"""Durable-step throughput and per-step overhead, next to a bare INSERT+COMMIT.

For each database (SQLite, PostgreSQL):

1. The floor: a loop of one ``INSERT`` and one ``COMMIT`` per row into a bare
   table, through Django's connection (what a durable step cannot beat
   without batching).
2. Overhead per step: one in-process worker ticks R runs of an n-step
   workflow of trivial steps; wall time over the number of steps.
3. Steps per second with 1 and 2 worker *processes*
   (``manage.py hookflow worker``): R runs are created in one transaction,
   the clock starts at its commit and stops when every run has completed.

Run: ``uv run python benchmarks/throughput.py [--db sqlite postgres] [--runs 1000] [--steps 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def setup(db: str) -> None:
    """Configure Django for ``db`` on a fresh database, migrated."""
    os.environ["HOOKFLOW_BENCH_DB"] = db
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    sys.path.insert(0, str(HERE))
    if db == "postgres":
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS hookflow_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE hookflow_bench")
    else:
        sqlite = Path(os.environ.get("HOOKFLOW_BENCH_SQLITE", "/tmp/hookflow_bench.sqlite3"))
        os.environ["HOOKFLOW_BENCH_SQLITE"] = str(sqlite)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite}{suffix}").unlink(missing_ok=True)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def floor_us(rows: int = 2000) -> float:
    """Microseconds per INSERT+COMMIT of a small row (autocommit, raw cursor)."""
    from django.db import connection

    from bench_app.models import FloorRow

    table = connection.ops.quote_name(FloorRow._meta.db_table)
    sql = f"INSERT INTO {table} (run, position, result) VALUES (%s, %s, %s)"
    payload = json.dumps({"i": 1, "value": "x" * 16})
    with connection.cursor() as cursor:
        start = time.perf_counter()
        for i in range(rows):
            cursor.execute(sql, ["run", i, payload])  # autocommit: one COMMIT per row
        elapsed = time.perf_counter() - start
    return elapsed / rows * 1e6


def create_runs(runs: int, steps: int) -> list[str]:
    from django.db import transaction

    from bench_app.workflows import Steps
    from bench_app.workflows import steps as workflow

    with transaction.atomic():
        return [workflow.start(Steps(n=steps)).run_id for _ in range(runs)]


def wait_all_done(run_ids: list[str], timeout: float = 600) -> None:
    from hookflow_gen.django.models import Run

    deadline = time.monotonic() + timeout
    while Run.objects.filter(status="running").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("runs did not finish")
        time.sleep(0.02)
    failed = Run.objects.exclude(status="completed").count()
    assert failed == 0, f"{failed} runs did not complete"
    assert Run.objects.filter(pk__in=run_ids).count() == len(run_ids)


def in_process_us(runs: int, steps: int) -> float:
    """One in-process worker: microseconds per durable step, all included."""
    from hookflow_gen._client import current_runtime
    from hookflow_gen.django._worker import Worker

    run_ids = create_runs(runs, steps)
    worker = Worker(current_runtime(), poll_interval=0.01)
    start = time.perf_counter()
    worker.run(until_idle=0)
    elapsed = time.perf_counter() - start
    wait_all_done(run_ids)
    return elapsed / (runs * steps) * 1e6


def with_processes(workers: int, runs: int, steps: int) -> float:
    """Steps per second with ``workers`` worker processes."""
    from hookflow_gen.django.models import Run, Step

    Step.objects.all().delete()
    Run.objects.all().delete()
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "django", "hookflow", "--verbosity", "0", "worker"],
            env=env,
            cwd=HERE,
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(3)  # let the workers import Django and start polling
        for proc in procs:
            assert proc.poll() is None, "a worker exited early"
        start = time.perf_counter()
        run_ids = create_runs(runs, steps)
        wait_all_done(run_ids)
        elapsed = time.perf_counter() - start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
    return runs * steps / elapsed


def measure(db: str, runs: int, steps: int) -> dict[str, Any]:
    setup(db)
    floor = floor_us()
    overhead = in_process_us(runs, steps)
    result: dict[str, Any] = {
        "db": db,
        "runs": runs,
        "steps": steps,
        "floor_us": floor,
        "step_us": overhead,
        "ratio": overhead / floor,
    }
    for workers in (1, 2):
        result[f"steps_per_s_{workers}w"] = with_processes(workers, runs, steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Durable-step throughput and overhead.")
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="Print one JSON object per db.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.runs, args.steps)))
        return
    rows = []
    for db in args.db:
        # One process per database: Django is configured once per process.
        command = [sys.executable, __file__, "--child", db]
        command += ["--runs", str(args.runs), "--steps", str(args.steps)]
        child = subprocess.run(command, check=False, capture_output=True, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(f"the {db} measurement failed (exit {child.returncode})")
        out = child.stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{args.runs} runs x {args.steps} steps, trivial step functions")
    print(
        "| db | INSERT+COMMIT floor | per durable step | ratio | steps/s, 1 worker "
        "| steps/s, 2 workers |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['db']} | {r['floor_us']:.0f} us | {r['step_us']:.0f} us | {r['ratio']:.1f}x "
            f"| {r['steps_per_s_1w']:.0f} | {r['steps_per_s_2w']:.0f} |"
        )


if __name__ == "__main__":
    main()
