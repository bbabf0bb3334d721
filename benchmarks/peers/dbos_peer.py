"""DBOS Transact as a peer of the interleaved step benchmark.

Driven as its users run it: a ``@DBOS.workflow`` called directly, whose
trivial steps are ``@DBOS.step`` functions returning the same small pydantic
model as hookflow_gen's benchmark steps (``Item(i=i, value="x" * 16)``);
the workflow returns the sum of the ``i`` it got back, which is checked.

System database: a SQLite file (DBOS takes immediate transactions there by
itself; WAL and ``synchronous=NORMAL`` are set on each connection, as for
every engine of the benchmark) or a scratch PostgreSQL database, through
``postgresql+psycopg``.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel


class Item(BaseModel):
    i: int
    value: str


class Dbos:
    def __init__(self, db: str, target: str) -> None:
        import sqlalchemy as sa
        from dbos import DBOS, DBOSConfig
        from sqlalchemy import event

        @event.listens_for(sa.engine.Engine, "connect")
        def _settings(dbapi_conn: Any, _record: Any) -> None:
            if type(dbapi_conn).__module__.startswith("sqlite3"):
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        @DBOS.step()
        def make_item(i: int) -> Item:
            return Item(i=i, value="x" * 16)

        @DBOS.workflow()
        def steps(n: int) -> int:
            total = 0
            for i in range(n):
                total += make_item(i).i
            return total

        self.workflow = steps
        url = (
            f"sqlite:///{target}"
            if db == "sqlite"
            else f"postgresql+psycopg://postgres@127.0.0.1:5432/{target}"
        )
        config: DBOSConfig = {"name": "hookflow-bench", "system_database_url": url}
        config["log_level"] = "WARNING"
        self.dbos = DBOS(config=config)
        DBOS.launch()

    def run_shape(self, runs: int, steps: int) -> float:
        expected = steps * (steps - 1) // 2
        results: list[int] = []
        start = time.perf_counter()
        for _ in range(runs):
            results.append(self.workflow(steps))
        elapsed = time.perf_counter() - start
        if results != [expected] * runs:
            raise AssertionError("DBOS returned unexpected results")
        return elapsed

    def reset(self) -> None:
        from dbos import DBOS

        ids = [w.workflow_id for w in DBOS.list_workflows()]
        for lo in range(0, len(ids), 500):
            DBOS.delete_workflows(ids[lo : lo + 500])

    def close(self) -> None:
        from dbos import DBOS

        DBOS.destroy()


def make_engine(db: str, target: str) -> Dbos:
    return Dbos(db, target)
