"""Count what an engine asks of its database: statements, commits, round trips.

The probe sits under every engine alike, at the driver: it wraps
``sqlite3.connect`` and ``psycopg.connect`` (which Django and SQLAlchemy both
call), so each connection an engine opens while the probe is installed can be
traced.

* SQLite: ``Connection.set_trace_callback`` sees every statement the library
  runs, the ``BEGIN``/``COMMIT`` that Python's ``sqlite3`` issues on its own
  included. Commits are the ``COMMIT`` statements plus the writes run outside
  a transaction (each of which commits by itself). A "round trip" into an
  embedded library is one statement.
* PostgreSQL: libpq's protocol trace (``PGconn.trace``) of each connection.
  A round trip is one ``ReadyForQuery`` from the server (one request the
  client waited for); a statement is one ``CommandComplete``. Commits come
  from the server: the delta of ``pg_stat_database.xact_commit`` of the
  engine's own database (read-only transactions count too, as they cost a
  commit), read after the engine's backends were made to flush their
  statistics.

Transaction control (``BEGIN``, ``COMMIT``, ``SAVEPOINT``, ...) is counted
apart from the statements that read or write rows.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|END)\b", re.IGNORECASE)
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


@dataclass
class Counts:
    """What a workload cost the database, in total."""

    statements: int = 0  # statements that read or write rows
    control: int = 0  # BEGIN, COMMIT, SAVEPOINT, RELEASE, ROLLBACK
    commits: int = 0
    round_trips: int = 0
    by_verb: dict[str, int] = field(default_factory=dict)

    def per(self, steps: int) -> dict[str, Any]:
        out: dict[str, Any] = {k: v / steps for k, v in asdict(self).items() if isinstance(v, int)}
        out["by_verb"] = {k: v / steps for k, v in sorted(self.by_verb.items())}
        return out


class _SqliteTrace:
    def __init__(self) -> None:
        self.counts = Counts()
        self.in_tx = False

    def __call__(self, sql: str) -> None:
        c = self.counts
        c.round_trips += 1
        verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
        if verb == "PRAGMA":
            return
        if _CONTROL.match(sql):
            c.control += 1
            c.by_verb[verb] = c.by_verb.get(verb, 0) + 1
            if verb == "BEGIN" or (verb == "SAVEPOINT" and not self.in_tx):
                self.in_tx = True
            elif verb in ("COMMIT", "END"):
                c.commits += 1
                self.in_tx = False
            elif verb == "ROLLBACK" and " TO " not in sql.upper():
                self.in_tx = False
            return
        c.statements += 1
        c.by_verb[verb] = c.by_verb.get(verb, 0) + 1
        if _WRITE.match(sql) and not self.in_tx:
            c.commits += 1  # autocommit: the statement is its own transaction


class Probe:
    """Installed once per process, before the engine opens a connection."""

    def __init__(self) -> None:
        self.sqlite: list[sqlite3.Connection] = []
        self.pg: list[Any] = []
        self._sqlite_traces: list[_SqliteTrace] = []
        self._pg_files: list[tuple[Any, Any]] = []
        self.tracing = False

    # -- installation ------------------------------------------------------------

    def install(self) -> None:
        original_sqlite = sqlite3.connect
        probe = self

        def connect_sqlite(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = original_sqlite(*args, **kwargs)
            probe.sqlite.append(conn)
            if probe.tracing:
                probe._trace_sqlite(conn)
            return conn

        sqlite3.connect = connect_sqlite  # type: ignore[assignment]
        sqlite3.dbapi2.connect = connect_sqlite  # type: ignore[assignment]
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is in the dev group
            return
        original_pg = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

        @classmethod  # type: ignore[misc]
        def connect_pg(cls: Any, *args: Any, **kwargs: Any) -> Any:
            conn = original_pg(cls, *args, **kwargs)
            probe.pg.append(conn)
            if probe.tracing:
                probe._trace_pg(conn)
            return conn

        psycopg.Connection.connect = connect_pg  # type: ignore[method-assign,assignment]
        psycopg.connect = psycopg.Connection.connect  # the module's alias was bound at import

    # -- tracing -----------------------------------------------------------------

    def _trace_sqlite(self, conn: sqlite3.Connection) -> None:
        trace = _SqliteTrace()
        trace.in_tx = conn.in_transaction
        self._sqlite_traces.append(trace)
        conn.set_trace_callback(trace)

    def _trace_pg(self, conn: Any) -> None:
        from psycopg.pq import Trace

        out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        self._pg_files.append((conn, out))

    def start(self) -> None:
        self.tracing = True
        self.sqlite = [c for c in self.sqlite if _open_sqlite(c)]
        self.pg = [c for c in self.pg if not c.closed]
        for conn in self.sqlite:
            self._trace_sqlite(conn)
        for conn in self.pg:
            self._trace_pg(conn)

    def stop(self) -> Counts:
        """Stop tracing; what was seen since ``start`` (commits: SQLite only)."""
        self.tracing = False
        total = Counts()
        for conn in self.sqlite:
            if _open_sqlite(conn):
                conn.set_trace_callback(None)
        for trace in self._sqlite_traces:
            _add(total, trace.counts)
        self._sqlite_traces = []
        for conn, out in self._pg_files:
            if not conn.closed:
                conn.pgconn.untrace()  # flushes libpq's buffer
            out.seek(0)
            _add(total, parse_pg_trace(out.read()))
            out.close()
        self._pg_files = []
        return total

    def flush_pg_stats(self) -> int:
        """Make every idle backend of ours flush its statistics; the statements it took."""
        issued = 0
        for conn in self.pg:
            if conn.closed or conn.info.transaction_status != 0 or conn.lock.locked():
                continue  # busy, or held by another thread (a LISTEN loop, say)
            autocommit = conn.autocommit
            conn.autocommit = True
            try:
                conn.execute("SELECT pg_stat_force_next_flush()")
                issued += 1
            finally:
                conn.autocommit = autocommit
        return issued


def _open_sqlite(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - raises on a closed connection
    except sqlite3.ProgrammingError:
        return False
    return True


def _add(total: Counts, part: Counts) -> None:
    total.statements += part.statements
    total.control += part.control
    total.commits += part.commits
    total.round_trips += part.round_trips
    for k, v in part.by_verb.items():
        total.by_verb[k] = total.by_verb.get(k, 0) + v


def parse_pg_trace(text: str) -> Counts:
    """Counts from a libpq protocol trace (``SUPPRESS_TIMESTAMPS`` layout)."""
    counts = Counts()
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0] != "B":
            continue
        message = parts[2]
        if message == "ReadyForQuery":
            counts.round_trips += 1
        elif message == "CommandComplete":
            tag = parts[3].strip().strip('"') if len(parts) > 3 else ""
            verb = tag.split(" ", 1)[0].upper()
            counts.by_verb[verb] = counts.by_verb.get(verb, 0) + 1
            if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
                counts.control += 1
            else:
                counts.statements += 1
    return counts


def xact_commit(dbname: str) -> int:
    """``pg_stat_database.xact_commit`` of ``dbname``, read from database ``test``."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else 0


def settled_xact_commit(dbname: str, at_least: int, timeout: float = 30.0) -> int:
    """``xact_commit`` once the backends' flushed statistics have arrived (polled)."""
    deadline = time.monotonic() + timeout
    last = xact_commit(dbname)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = xact_commit(dbname)
        if now >= at_least and now == last:
            return now
        last = now
    return last
