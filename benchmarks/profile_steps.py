"""Where a durable step of hookflow_gen spends its time, on SQLite or PostgreSQL.

Two views of the same workload (one run of ``--steps`` trivial steps,
started and ticked to its end by an in-process worker, as in
``interleaved.py``):

1. Wall time split by what the database was asked: each statement is timed
   through Django's ``connection.execute_wrapper`` (the driver call and the
   server's answer, and on PostgreSQL the implicit ``BEGIN`` psycopg sends
   before the first statement of a transaction), each ``COMMIT`` through the
   connection's ``commit``, the hot path's guarded write around
   ``DjangoStore.write_guarded``; what is left is Python (the runtime,
   Django's cursor and transaction machinery, the workflow's own step).
2. A pyinstrument profile of a second run: the functions with the most time
   of their own, outside the database driver.

Run: ``uv run --group bench python benchmarks/profile_steps.py --db postgres [--steps 1000]``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from interleaved import ADMIN_DSN  # noqa: E402

CLASSES = (
    ("BEGIN IMMEDIATE (SQLite)", r"^BEGIN"),
    ("SELECT due run (claim_due)", r'"wake_at" <='),
    ("SELECT run (lock_run; FOR UPDATE + implicit BEGIN on PostgreSQL)", r'FROM "hookflow_run"'),
    ("INSERT ... ON CONFLICT DO UPDATE (step upsert)", r'^INSERT INTO "hookflow_step"'),
    ("UPDATE run (save_run / claim)", r'^UPDATE "hookflow_run"'),
    ("SELECT journal (steps)", r'FROM "hookflow_step"'),
    ("INSERT run (start)", r'^INSERT INTO "hookflow_run"'),
)


def classify(sql: str) -> str:
    for label, pattern in CLASSES:
        if re.search(pattern, sql):
            return label
    return "other SQL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    target = str(Path(tempfile.mkdtemp()) / "profile.sqlite3")
    if args.db == "postgres":
        import psycopg

        target = f"hfbench_profile_{os.getpid()}"
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {target}")
    try:
        from step_engines import HookflowGen

        engine = HookflowGen(args.db, target)
        engine.run_shape(5, 10)  # warm-up
        engine.reset()
        from django.db import connection

        spent: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)

        def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                label = classify(sql)
                spent[label] += time.perf_counter() - start
                calls[label] += 1

        connection.ensure_connection()
        commit = connection.commit

        def timed_commit() -> None:
            start = time.perf_counter()
            try:
                commit()
            finally:
                spent["COMMIT"] += time.perf_counter() - start
                calls["COMMIT"] += 1

        connection.commit = timed_commit  # type: ignore[method-assign]
        # The hot path's guarded write goes to the driver directly, past
        # Django's cursor wrappers: timed around the store's method.
        from hookflow_gen.django._store import DjangoStore

        guarded = DjangoStore.write_guarded
        begun = DjangoStore.begin_guarded
        label = "guarded writes (outcome + next claim or the run's end; its Python included)"
        first = "guarded first tick (wake-up + first claim; its Python included)"

        def timing(method: Any, part: str) -> Any:
            def timed_method(self: DjangoStore, *args: Any, **kwargs: Any) -> bool:
                start = time.perf_counter()
                try:
                    return bool(method(self, *args, **kwargs))
                finally:
                    spent[part] += time.perf_counter() - start
                    calls[part] += 1

            return timed_method

        DjangoStore.write_guarded = timing(guarded, label)  # type: ignore[method-assign]  # restored below
        DjangoStore.begin_guarded = timing(begun, first)  # type: ignore[method-assign]  # restored below
        try:
            with connection.execute_wrapper(timed):
                wall = engine.run_shape(1, args.steps)
        finally:
            DjangoStore.write_guarded = guarded  # type: ignore[method-assign]  # restored
            DjangoStore.begin_guarded = begun  # type: ignore[method-assign]  # restored
        engine.reset()
        n = args.steps
        print(f"hookflow_gen on {args.db}: one run of {n:,} steps, {wall / n * 1e6:.0f} us/step\n")
        print("| part | us/step | share | calls/step |")
        print("|---|---:|---:|---:|")
        db_total = 0.0
        for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
            if not calls[label]:
                continue
            db_total += seconds
            print(
                f"| {label} | {seconds / n * 1e6:.0f} | {seconds / wall:.0%} "
                f"| {calls[label] / n:.2f} |"
            )
        rest = wall - db_total
        python = "Python (runtime, Django, the step)"
        print(f"| {python} | {rest / n * 1e6:.0f} | {rest / wall:.0%} | - |")

        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        engine.run_shape(1, args.steps)
        profiler.stop()
        engine.reset()
        own: dict[str, float] = defaultdict(float)
        total = 0.0

        def walk(frame: Any) -> None:
            nonlocal total
            for child in frame.children:
                walk(child)
            if frame.is_synthetic:  # pyinstrument's [self] and [await] frames
                return
            mine = frame.total_self_time
            if mine:
                total += mine
                own[f"{frame.function} ({_short(frame.file_path)})"] += mine

        root = profiler.last_session.root_frame() if profiler.last_session else None
        if root is not None:
            walk(root)
        print(f"\npyinstrument, second run: time of their own, top {args.top} (us/step)\n")
        print("| function | us/step | share |")
        print("|---|---:|---:|")
        for name, seconds in sorted(own.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| `{name}` | {seconds / n * 1e6:.1f} | {seconds / total:.0%} |")
        engine.close()
    finally:
        if args.db == "postgres":
            import psycopg

            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
    return 0


def _short(path: str | None) -> str:
    if not path:
        return "?"
    for marker in ("site-packages/", "src/", "benchmarks/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


if __name__ == "__main__":
    raise SystemExit(main())
