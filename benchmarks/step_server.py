"""One engine on one database, driven over stdin/stdout by ``interleaved.py``.

Each engine lives in its own long-lived process (Django and DBOS each
configure themselves once per process), so the interleaved rounds switch
between engines without paying for a start-up. One JSON command per line on
stdin, one JSON answer per line on stdout:

* ``{"op": "shape", "runs": R, "steps": n}``: run the shape, timed; then
  clear what it left behind (untimed). Answer: ``seconds``, ``us_per_step``.
* ``{"op": "count", "runs": R, "steps": n}``: the same shape, traced by
  ``_probe.Probe`` (not timed): statements, transaction control, commits and
  round trips, in total and per step.
* ``{"op": "cold_replay", "n": n}``: engines that have one (hookflow_gen).
* ``{"op": "quit"}``.

Engines: ``hookflow_gen``, ``floor``, ``floor-durable`` (``step_engines.py``),
``dbos`` (``peers/dbos_peer.py``), or any module on ``benchmarks/`` or
``benchmarks/peers/`` with a ``make_engine(db, target)`` function, named by
its module name (``upstash_workflow_peer``, say).

Run: ``python benchmarks/step_server.py --engine dbos --db sqlite --target /tmp/x.sqlite3``
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _extra in (str(HERE), str(HERE / "peers")):
    if _extra not in sys.path:
        sys.path.insert(0, _extra)

from _probe import Probe, xact_commit  # noqa: E402

#: Peer engines by name: the module holding their ``make_engine(db, target)``.
PEER_MODULES = {"dbos": "dbos_peer"}


def load(name: str, db: str, target: str) -> Any:
    import step_engines

    try:
        return step_engines.make_engine(name, db, target)
    except KeyError:
        pass
    module = importlib.import_module(PEER_MODULES.get(name, name))
    return module.make_engine(db, target)


def counted(probe: Probe, engine: Any, db: str, target: str, *, runs: int, steps: int) -> Any:
    before = 0
    if db == "postgres":
        probe.flush_pg_stats()
        before = xact_commit(target)
    probe.start()
    engine.run_shape(runs, steps)
    counts = probe.stop()
    if db == "postgres":
        issued = probe.flush_pg_stats()
        counts.commits = xact_commit(target) - before - issued
    engine.reset()
    n = runs * steps
    return {"runs": runs, "steps": steps, "total": counts.per(1), "per_step": counts.per(n)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--target", required=True, help="SQLite file, or PostgreSQL database")
    args = parser.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr  # engines that print must not garble the answers
    probe = Probe()
    probe.install()
    engine = load(args.engine, args.db, args.target)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "quit":
                break
            if op == "shape":
                runs, steps = command["runs"], command["steps"]
                seconds = engine.run_shape(runs, steps)
                engine.reset()
                answer: Any = {"seconds": seconds, "us_per_step": seconds / (runs * steps) * 1e6}
            elif op == "count":
                answer = counted(
                    probe,
                    engine,
                    args.db,
                    args.target,
                    runs=command["runs"],
                    steps=command["steps"],
                )
            elif op == "cold_replay":
                replay = getattr(engine, "cold_replay", None)
                answer = replay(command["n"]) if replay is not None else {"unsupported": True}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            traceback.print_exc()
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
