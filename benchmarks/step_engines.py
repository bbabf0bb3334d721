"""The engines the interleaved step benchmark drives, each in its own process.

An engine runs a *shape*, ``runs`` workflow runs of ``steps`` trivial durable
steps each, as its users run it, and says how long that took; the caller
divides by ``runs * steps``. Every engine gets its own database (a scratch
PostgreSQL database, or its own SQLite file in WAL mode with
``synchronous=NORMAL`` and immediate transactions), so the server's per
database counters belong to one engine alone.

* ``hookflow_gen``: each run started with ``Workflow.start`` in its own
  transaction, as a request would, then one in-process database-scheduler
  worker (``Worker.run(until_idle=0)``) ticks them all to completion. The
  clock covers the starts and the worker.
* ``floor``: one ``INSERT`` and its ``COMMIT`` per step, on the raw driver
  (``sqlite3``/``psycopg`` in autocommit): what one durable write costs.
* ``floor-durable``: a floor shaped like a durable step: ``BEGIN`` (immediate
  on SQLite), ``SELECT ... FOR UPDATE`` of a run row (a plain ``SELECT`` on
  SQLite, which has no row locks), ``INSERT``, ``COMMIT``.

A peer lives in its own module with a ``make_engine(db, target)`` function
(``peers/dbos_peer.py``); ``step_server.py`` loads engines by name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname={name}"
PAYLOAD = json.dumps({"i": 1, "value": "x" * 16})


class StepEngine(Protocol):
    """What ``step_server.py`` drives."""

    def run_shape(self, runs: int, steps: int) -> float:
        """Run ``runs`` runs of ``steps`` steps to completion; wall seconds (checked)."""
        ...

    def reset(self) -> None:
        """Delete what the runs left behind (not timed)."""
        ...

    def close(self) -> None: ...


def sqlite_pragmas(conn: Any) -> None:
    """The SQLite settings every engine gets: WAL, synchronous=NORMAL."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


# --------------------------------------------------------------------------- floors


class Floor:
    """A bare INSERT+COMMIT per step, or one shaped like a durable step."""

    def __init__(self, db: str, target: str, *, durable: bool) -> None:
        self.db = db
        self.durable = durable
        if db == "sqlite":
            self.conn: Any = sqlite3.connect(target, isolation_level=None)
            sqlite_pragmas(self.conn)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS floor_row (id INTEGER PRIMARY KEY, run TEXT, "
                "position INTEGER, result TEXT)"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS floor_run (id TEXT PRIMARY KEY)")
            self.conn.execute("INSERT OR IGNORE INTO floor_run VALUES ('run')")
            self.insert = "INSERT INTO floor_row (run, position, result) VALUES (?, ?, ?)"
            self.lock = "SELECT id FROM floor_run WHERE id = ?"
        else:
            import psycopg

            self.conn = psycopg.connect(PG_DSN.format(name=target), autocommit=True)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS floor_row (id BIGSERIAL PRIMARY KEY, run TEXT, "
                "position INTEGER, result TEXT)"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS floor_run (id TEXT PRIMARY KEY)")
            self.conn.execute("INSERT INTO floor_run VALUES ('run') ON CONFLICT DO NOTHING")
            self.insert = "INSERT INTO floor_row (run, position, result) VALUES (%s, %s, %s)"
            self.lock = "SELECT id FROM floor_run WHERE id = %s FOR UPDATE"

    def run_shape(self, runs: int, steps: int) -> float:
        conn, insert, lock = self.conn, self.insert, self.lock
        n = runs * steps
        start = time.perf_counter()
        if not self.durable:
            for i in range(n):
                conn.execute(insert, ("run", i, PAYLOAD))
        elif self.db == "sqlite":
            for i in range(n):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(lock, ("run",)).fetchall()
                conn.execute(insert, ("run", i, PAYLOAD))
                conn.execute("COMMIT")
        else:
            for i in range(n):
                with conn.transaction():
                    conn.execute(lock, ("run",)).fetchall()
                    conn.execute(insert, ("run", i, PAYLOAD))
        return time.perf_counter() - start

    def reset(self) -> None:
        self.conn.execute("DELETE FROM floor_row")

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- hookflow_gen


class HookflowGen:
    """The product: ``Workflow.start`` per run, then an in-process worker."""

    def __init__(self, db: str, target: str) -> None:
        os.environ["HOOKFLOW_BENCH_DB"] = db
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
        if db == "sqlite":
            os.environ["HOOKFLOW_BENCH_SQLITE"] = target
        else:
            os.environ["HOOKFLOW_BENCH_PG_NAME"] = target
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)

    def run_shape(self, runs: int, steps: int) -> float:
        from bench_app.workflows import Steps
        from bench_app.workflows import steps as workflow
        from hookflow_gen._client import current_runtime
        from hookflow_gen.django._worker import Worker
        from hookflow_gen.django.models import Run

        payload = Steps(n=steps)
        start = time.perf_counter()
        ids = [workflow.start(payload).run_id for _ in range(runs)]
        Worker(current_runtime(), poll_interval=0.01).run(until_idle=0)
        elapsed = time.perf_counter() - start
        done = Run.objects.filter(pk__in=ids, status="completed")
        expected = json.dumps(steps * (steps - 1) // 2)
        if done.count() != runs or done.exclude(result=expected).exists():
            raise AssertionError("not every run completed with the expected result")
        return elapsed

    def cold_replay(self, n: int) -> dict[str, float]:
        """Load a completed n-step journal from the database and replay it, cold.

        The run row and its journal are read through the store (what a tick
        that has no warm generator does), then the workflow is replayed to
        its end. Repeated until it has taken a while; per step, in us: the
        total, the load alone and the replay alone.
        """
        from bench_app.workflows import Item, Steps
        from bench_app.workflows import steps as workflow
        from hookflow_gen import StepRecord
        from hookflow_gen._client import current_runtime
        from hookflow_gen._context import RunInfo
        from hookflow_gen._engine import Completed, Replay
        from hookflow_gen._workflow import get_workflow
        from hookflow_gen.django.models import Run

        store: Any = current_runtime().store
        run_id = f"cold-{n}-{uuid.uuid4().hex[:8]}"
        workflow.start(Steps(n=n), run_id=run_id)
        Run.objects.filter(pk=run_id).update(wake_at=None)  # no worker may tick it
        at = datetime.now(UTC)
        records = [
            StepRecord(
                position=i,
                kind="run",
                name=f"step-{i}",
                result=Item(i=i, value="x" * 16).model_dump_json(),
                completed_at=at,
                started_at=at,
                attempts=1,
            )
            for i in range(n)
        ]
        for lo in range(0, n, 500):
            store.save_steps(run_id, records[lo : lo + 500])
        expected = n * (n - 1) // 2
        totals: list[float] = []
        loads: list[float] = []
        t_end = time.perf_counter() + 0.3
        while len(totals) < 3 or (time.perf_counter() < t_end and len(totals) < 200):
            t0 = time.perf_counter()
            run = store.get_run(run_id)
            journal = store.steps(run_id)
            t1 = time.perf_counter()
            info = RunInfo(run_id=run_id, workflow_name=run.workflow, started_at=run.created_at)
            decision = Replay(get_workflow(run.workflow), run.payload, info, journal).advance()
            t2 = time.perf_counter()
            if not (isinstance(decision, Completed) and decision.value == expected):
                raise AssertionError("the cold replay did not complete")
            totals.append(t2 - t0)
            loads.append(t1 - t0)
        Run.objects.filter(pk=run_id).delete()
        total = min(totals)
        load = min(loads)
        return {
            "n": n,
            "total_us": total / n * 1e6,
            "load_us": load / n * 1e6,
            "replay_us": (total - load) / n * 1e6,
        }

    def reset(self) -> None:
        from hookflow_gen.django.models import Run, Step

        Step.objects.all().delete()
        Run.objects.all().delete()

    def close(self) -> None:
        from django.db import connections

        connections.close_all()


def make_engine(name: str, db: str, target: str) -> Any:
    """The built-in engines by name."""
    if name == "hookflow_gen":
        return HookflowGen(db, target)
    if name == "floor":
        return Floor(db, target, durable=False)
    if name == "floor-durable":
        return Floor(db, target, durable=True)
    raise KeyError(name)
