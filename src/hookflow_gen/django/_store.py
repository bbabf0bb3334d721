"""``DjangoStore``: the ``Store`` protocol on the Django ORM (PostgreSQL, SQLite).

Every method is one or two queries. Rows are read with ``values_list`` and
turned straight into ``RunState``/``StepRecord`` values, without building
model instances, since these methods sit on the per-step hot path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.db.models import Field, Min, Model
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL

from .._journal import Attempt, ErrorInfo, StepRecord, StepStatus
from .._store import RunState, RunStatus
from .._updates import UpdateState, UpdateStatus

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Collection, Sequence

    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import QuerySet
    from django.db.models.sql.compiler import SQLCompiler

    from .._flow import FlowGate

__all__ = ["DjangoStore"]

_RUN_FIELDS = (
    "run_id",
    "workflow",
    "payload",
    "status",
    "created_at",
    "result",
    "error",
    "finished_at",
    "parent_run_id",
    "parent_position",
    "wake_at",
    "wake_seq",
    "cancel_requested",
    "tick_failures",
    "past_errors",
    "custom_status",
    "continued_from",
    "continued_as",
    "generation",
    "traceparent",
)
_STEP_FIELDS = (
    "position",
    "kind",
    "name",
    "status",
    "result",
    "error",
    "attempts",
    "completed_at",
    "wake_at",
    "key",
    "started_at",
    "lease_until",
    "lease_owner",
    "past_attempts",
)
# What an upsert of a step rewrites: everything but its identity (run, position).
_STEP_UPDATE_FIELDS = [name for name in _STEP_FIELDS if name != "position"]

_UPDATE_FIELDS = (
    "run_id",
    "update_id",
    "name",
    "request",
    "status",
    "answer",
    "reason",
    "created_at",
    "answered_at",
)
_UPDATE_STATUS = {status.value: status for status in UpdateStatus}
_RUN_STATUS = {status.value: status for status in RunStatus}
_STEP_STATUS = {status.value: status for status in StepStatus}


def _error(data: Any) -> ErrorInfo | None:
    return ErrorInfo.from_json(data) if data is not None else None


def _run(row: Sequence[Any]) -> RunState:
    (run_id, workflow, payload, status, created_at, result, error, finished_at,
     parent_run_id, parent_position, wake_at, wake_seq, cancel_requested, tick_failures,
     past_errors, custom_status, continued_from, continued_as, generation,
     traceparent) = row  # fmt: skip
    return RunState(
        run_id=run_id,
        workflow=workflow,
        payload=payload,
        status=_RUN_STATUS[status],
        created_at=created_at,
        result=result,
        error=_error(error),
        finished_at=finished_at,
        parent_run_id=parent_run_id,
        parent_position=parent_position,
        wake_at=wake_at,
        wake_seq=wake_seq,
        cancel_requested=bool(cancel_requested),
        tick_failures=tick_failures,
        past_errors=tuple(ErrorInfo.from_json(e) for e in past_errors or ()),
        custom_status=custom_status,
        continued_from=continued_from,
        continued_as=continued_as,
        generation=generation,
        traceparent=traceparent,
    )


def _step(row: Sequence[Any]) -> StepRecord:
    (position, kind, name, status, result, error, attempts, completed_at, wake_at, key,
     started_at, lease_until, lease_owner, past_attempts) = row  # fmt: skip
    return StepRecord(
        position=position,
        kind=kind,
        name=name,
        status=_STEP_STATUS[status],
        result=result,
        error=_error(error),
        attempts=attempts,
        completed_at=completed_at,
        wake_at=wake_at,
        key=key,
        started_at=started_at,
        lease_until=lease_until,
        lease_owner=lease_owner,
        past_attempts=tuple(Attempt.from_json(a) for a in past_attempts) if past_attempts else (),
    )


def _update(row: Sequence[Any]) -> UpdateState:
    run_id, update_id, name, request, status, answer, reason, created_at, answered_at = row
    return UpdateState(
        run_id=run_id,
        update_id=update_id,
        name=name,
        request=request,
        status=_UPDATE_STATUS[status],
        answer=answer,
        reason=reason,
        created_at=created_at,
        answered_at=answered_at,
    )


class _Prepared:
    """A ``values_list`` query the ORM compiles once per database, then run with new values.

    Building and compiling a queryset costs a few hundred microseconds of
    Python, more than the query itself on the per-step hot path. The SQL
    and the ORM's value converters are kept per database alias; parameters
    are matched to their places through sentinel values given to ``build``.
    """

    def __init__(self, build: Callable[..., QuerySet[Any, Any]], *sentinels: object) -> None:
        self._build = build
        self._sentinels = sentinels
        self._cache: dict[str, tuple[str, list[int], SQLCompiler, dict[int, Any]]] = {}

    def compiled(self, connection: BaseDatabaseWrapper) -> tuple[str, list[int]]:
        """The query's SQL, and for each of its placeholders which sentinel it stands for."""
        sql, order, _, _ = self._entry(connection)
        return sql, order

    def rows(self, connection: BaseDatabaseWrapper, *values: Any) -> list[Sequence[Any]]:
        """Run the query with ``values`` in place of the sentinels; converted rows."""
        sql, order, compiler, converters = self._entry(connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, [_adapt(connection, values[i]) for i in order])
            rows: list[Sequence[Any]] = cursor.fetchall()
        if converters:
            return list(compiler.apply_converters(rows, converters))
        return rows

    def convert(self, connection: BaseDatabaseWrapper, row: Sequence[Any]) -> Sequence[Any]:
        """A row of this query's columns, read by another statement, as ``rows`` converts it."""
        _, _, compiler, converters = self._entry(connection)
        if converters:
            return next(iter(compiler.apply_converters([list(row)], converters)))
        return row

    def _entry(
        self, connection: BaseDatabaseWrapper
    ) -> tuple[str, list[int], SQLCompiler, dict[int, Any]]:
        entry = self._cache.get(connection.alias)
        if entry is None:
            queryset = self._build(connection.alias, *self._sentinels)
            compiler = queryset.query.get_compiler(using=connection.alias)
            sql, params = compiler.as_sql()
            adapted = [_adapt(connection, sentinel) for sentinel in self._sentinels]
            order = [adapted.index(param) for param in params]
            if set(order) != set(range(len(self._sentinels))):
                raise AssertionError(f"the ORM dropped a parameter of {sql!r}")
            converters = compiler.get_converters([column for column, _, _ in compiler.select])
            entry = self._cache[connection.alias] = (sql, order, compiler, converters)
        return entry


def _adapt(connection: BaseDatabaseWrapper, value: object) -> Any:
    # What the ORM turns a datetime parameter into (a string on SQLite).
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value


#: ``status = 'running'`` as a literal, not a parameter: SQLite uses the
#: partial index ``hookflow_run_due`` (``WHERE status = 'running'``) only for
#: a query that names its condition, and scans every run ever started
#: otherwise. For the queries that look at running runs alone.
RUNNING_SQL = RawSQL("'running'", ())


def _due_query(
    using: str, now: object, exclude: Collection[str] = (), *, lock: bool = True
) -> QuerySet[Any, Any]:
    from django.db import connections
    from django.db.models import Q

    from .models import Run

    due = (
        Run.objects.using(using)
        .filter(status=RUNNING_SQL, wake_at__lte=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .order_by("wake_at")
    )
    if exclude:
        due = due.exclude(run_id__in=list(exclude))
    if lock and connections[using].features.has_select_for_update_skip_locked:
        due = due.select_for_update(skip_locked=True)
    return due.values_list("run_id", "workflow")[:1]


def _lock_run_query(using: str, run_id: object) -> QuerySet[Any, Any]:
    from .models import Run

    return Run.objects.using(using).select_for_update().filter(pk=run_id).values_list(*_RUN_FIELDS)


def _get_run_query(using: str, run_id: object) -> QuerySet[Any, Any]:
    from .models import Run

    return Run.objects.using(using).filter(pk=run_id).values_list(*_RUN_FIELDS)


def _steps_query(using: str, run_id: object, position: object) -> QuerySet[Any, Any]:
    from .models import Step

    return (
        Step.objects.using(using)
        .filter(run_id=run_id, position__gte=position)
        .order_by("position")
        .values_list(*_STEP_FIELDS)
    )


def _waiters_query(
    using: str, key: object, kind: object, status: object, run_status: object
) -> QuerySet[Any, Any]:
    from .models import Step

    return (
        Step.objects.using(using)
        .filter(key=key, kind=kind, status=status, run__status=run_status)
        .order_by("run__created_at", "run_id", "position")
        .values_list("run_id", "position")
    )


_DUE = _Prepared(_due_query, datetime(2000, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
# Compiled outside a transaction (the ORM refuses to compile a locking query
# there); ``_Statements.claim_due`` adds the lock clause.
_DUE_UNLOCKED = _Prepared(
    functools.partial(_due_query, lock=False), datetime(2000, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
)
_LOCK_RUN = _Prepared(_lock_run_query, "\x00run")
_GET_RUN = _Prepared(_get_run_query, "\x00run")
# An in-range sentinel: the ORM drops a bound no integer can fail.
_STEPS = _Prepared(_steps_query, "\x00run", 1234567)
_WAITERS = _Prepared(_waiters_query, "\x00key", "\x00kind", "\x00status", "\x00run status")


class _Statements:
    """The write statements of the hot path, built once per database alias."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        from .models import Run, Step

        ops = connection.ops
        step_fields = [_concrete(Step, name) for name in ("run", *_STEP_FIELDS)]
        columns = [str(field.column) for field in step_fields]
        update = [str(_concrete(Step, name).column) for name in _STEP_UPDATE_FIELDS]
        unique = [str(_concrete(Step, name).column) for name in ("run", "position")]
        suffix = ops.on_conflict_suffix_sql(step_fields, OnConflict.UPDATE, update, unique)
        self.step_preps = [_prep_for(field, connection) for field in step_fields]
        self.upsert_step_head = (
            f"INSERT INTO {ops.quote_name(Step._meta.db_table)} "
            f"({', '.join(ops.quote_name(c) for c in columns)}) VALUES "
        )
        self.upsert_step_row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        self.upsert_step_tail = f" {suffix}"
        run_fields = [_concrete(Run, name) for name in _RUN_UPDATE_FIELDS]
        assignments = ", ".join(f"{ops.quote_name(str(f.column))} = %s" for f in run_fields)
        claimed = ops.quote_name(str(_concrete(Run, "claimed_until").column))
        self.run_preps = [_prep_for(field, connection) for field in run_fields]
        self.finish_preps = [_prep_for(_concrete(Run, name), connection) for name in _FINISH_FIELDS]
        self.wake_preps = [_prep_for(_concrete(Run, "wake_at"), connection)]
        run_id = ops.quote_name(str(_concrete(Run, "run_id").column))
        self.claim_run = (
            f"UPDATE {ops.quote_name(Run._meta.db_table)} SET {claimed} = %s WHERE {run_id} = %s"
        )
        # The due query (which skips rows other workers hold, where it can)
        # and the claim as one statement, where the database can return rows.
        self.claim_due: tuple[str, list[int]] | None = None
        if connection.features.can_return_columns_from_insert:
            due, order = _DUE_UNLOCKED.compiled(connection)
            if connection.features.has_select_for_update_skip_locked:
                due += " FOR UPDATE SKIP LOCKED"
            # The run as it is (the columns ``_GET_RUN`` reads, in its order),
            # and whether it has no journal yet: a new run's first tick then
            # reads nothing (``Runtime.tick(fresh=...)``).
            table = ops.quote_name(Run._meta.db_table)
            returned = ", ".join(
                f"{table}.{ops.quote_name(str(_concrete(Run, name).column))}"
                for name in _RUN_FIELDS
            )
            step_run = ops.quote_name(str(_concrete(Step, "run").column))
            fresh = (
                f"NOT EXISTS (SELECT 1 FROM {ops.quote_name(Step._meta.db_table)} s "
                f"WHERE s.{step_run} = {table}.{run_id})"
            )
            self.claim_due = (
                f"UPDATE {table} SET {claimed} = %s "
                f"WHERE {run_id} = (SELECT due.run_id FROM ({due}) due) "
                f"RETURNING {returned}, {fresh}",
                order,
            )
        self.update_run = (
            f"UPDATE {ops.quote_name(Run._meta.db_table)} SET {assignments}, {claimed} = NULL "
            f"WHERE {ops.quote_name(str(_concrete(Run, 'run_id').column))} = %s"
        )
        self.vendor = connection.vendor
        self._step_table = ops.quote_name(Step._meta.db_table)
        self._run_table = ops.quote_name(Run._meta.db_table)
        self._columns = [ops.quote_name(c) for c in columns]
        self._update_columns = [ops.quote_name(c) for c in update]
        self._guarded: dict[int, str] = {}

    def guarded(self, rows: int) -> str:
        """SQLite's guarded write of ``rows`` records besides the guarded one."""
        sql = self._guarded.get(rows)
        if sql is None:
            sql = self._guarded[rows] = self._guarded_sqlite(rows)
        return sql

    @functools.cached_property
    def finish_sqlite(self) -> str:
        """SQLite's guarded end of a run: its ``UPDATE``, if the guard holds."""
        run, step = self._run_table, self._step_table
        return (
            f"UPDATE {run} SET status = ?, result = ?, error = NULL, finished_at = ?, "
            "wake_at = NULL, cancel_requested = 0, tick_failures = 0, custom_status = ?, "
            "claimed_until = NULL "
            "WHERE run_id = ? AND status = 'running' AND NOT cancel_requested "
            f"AND wake_seq = ? AND EXISTS (SELECT 1 FROM {step} s WHERE s.run_id = ? "
            "AND s.position = ? AND s.status = 'pending' AND s.lease_owner = ?) "
            f"AND NOT EXISTS (SELECT 1 FROM {step} s JOIN {run} r ON r.run_id = s.run_id "
            "WHERE s.key = ? AND s.kind = 'invoke' AND s.status = 'pending' "
            "AND r.status = 'running')"
        )

    @functools.cached_property
    def begin_sqlite(self) -> str:
        """SQLite's guarded first tick of a run: its ``UPDATE``, if the guard holds."""
        return (
            f"UPDATE {self._run_table} SET wake_at = ?, wake_seq = ?, claimed_until = NULL "
            "WHERE run_id = ? AND status = 'running' AND NOT cancel_requested "
            f"AND wake_seq = ? AND NOT EXISTS (SELECT 1 FROM {self._step_table} s "
            "WHERE s.run_id = ?)"
        )

    @functools.cached_property
    def upsert_sqlite(self) -> str:
        """One step row's upsert, with SQLite's own placeholders."""
        row = "(" + ", ".join(["?"] * len(self._columns)) + ")"
        excluded = ", ".join(f"{c} = excluded.{c}" for c in self._update_columns)
        return (
            f"INSERT INTO {self._step_table} ({', '.join(self._columns)}) VALUES {row} "
            f"ON CONFLICT ({self._columns[0]}, {self._columns[1]}) DO UPDATE SET {excluded}"
        )

    def _guarded_sqlite(self, rows: int) -> str:
        # One statement holds SQLite's write lock from its start, so the
        # guard and the writes are atomic. The guarded record comes last: the
        # guard still holds when SQLite evaluates it for that row.
        row = "(" + ", ".join(["?"] * len(self._columns)) + ")"
        excluded = ", ".join(f"{c} = excluded.{c}" for c in self._update_columns)
        step_guard = (
            "s.run_id = ? AND s.position = ? AND s.status = 'pending' AND s.lease_owner = ?"
        )
        run_guard = "r.run_id = ? AND r.status = 'running' AND NOT r.cancel_requested"
        return (
            f"INSERT INTO {self._step_table} ({', '.join(self._columns)}) "
            f"SELECT * FROM (VALUES {', '.join([row] * (rows + 1))}) "
            f"WHERE EXISTS (SELECT 1 FROM {self._step_table} s JOIN {self._run_table} r "
            f"ON r.run_id = s.run_id WHERE {step_guard} AND {run_guard}) "
            f"ON CONFLICT ({self._columns[0]}, {self._columns[1]}) DO UPDATE SET {excluded}"
        )


#: The run's fields that a guarded end of the run takes as parameters, in order.
_FINISH_FIELDS = ("status", "result", "finished_at", "custom_status")

_RUN_UPDATE_FIELDS = (
    "status",
    "result",
    "error",
    "finished_at",
    "wake_at",
    "wake_seq",
    "cancel_requested",
    "tick_failures",
    "past_errors",
    "custom_status",
    "continued_as",
)


def _concrete(model: type[Model], name: str) -> Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, Field):  # a reverse relation: never one of ours
        raise TypeError(f"{model.__name__}.{name} is not a concrete field")
    return field


def _prep_for(
    field: Field[Any, Any], connection: BaseDatabaseWrapper
) -> Callable[[Any], Any] | None:
    """How a value is prepared for ``field`` in raw SQL; None when it is passed as is.

    Strings, integers and None go to the driver unchanged, so only datetimes
    and JSON pay for the field's conversion on the per-step hot path.
    """
    from django.db import models

    if isinstance(field, models.DateTimeField) and connection.vendor == "sqlite":
        zone = connection.timezone

        def sqlite_datetime(value: datetime) -> str:
            # What the SQLite backend stores: naive text in the connection's
            # time zone (UTC by default), without its per-call checks.
            if value.tzinfo is not zone:
                value = value.astimezone(zone)
            return str(value.replace(tzinfo=None))

        return sqlite_datetime
    if isinstance(field, models.DateTimeField):

        def aware_datetime(value: datetime) -> Any:
            # An aware datetime goes to the driver as it is (what the ORM's
            # preparation comes to); a naive one takes the ORM's path.
            if value.tzinfo is not None:
                return value
            return field.get_db_prep_save(value, connection)

        return aware_datetime
    if isinstance(field, models.JSONField):

        def prep(value: Any) -> Any:
            return field.get_db_prep_save(value, connection)

        return prep
    return None


_WRITE_GUARDED_CALL = "SELECT hookflow_write_guarded(%s, %s, %s, %s)"
_BEGIN_GUARDED_CALL = "SELECT hookflow_begin_guarded(%s, %s, %s, %s, %s)"
_FINISH_GUARDED_CALL = "SELECT hookflow_write_guarded(%s, %s, %s, %s, %s, %s, %s, %s, %s)"


def _step_values(run_id: str, record: StepRecord) -> tuple[Any, ...]:
    """A step row's values, in the order of ``_STEP_COLUMNS``, before the fields' preparation."""
    return (
        run_id,
        record.position,
        record.kind,
        record.name,
        record.status.value,
        record.result,
        record.error.to_json() if record.error is not None else None,
        record.attempts,
        record.completed_at,
        record.wake_at,
        record.key,
        record.started_at,
        record.lease_until,
        record.lease_owner,
        [a.to_json() for a in record.past_attempts] if record.past_attempts else None,
    )


#: The step table's columns, as ``_step_values`` orders them.
_STEP_COLUMNS = ("run_id", *_STEP_FIELDS)


def _step_params(statements: _Statements, run_id: str, record: StepRecord) -> list[Any]:
    """A step row's parameters for raw SQL, in the order of ``_STEP_COLUMNS``."""
    return _params(statements.step_preps, _step_values(run_id, record))


def _step_json(run_id: str, record: StepRecord) -> dict[str, Any]:
    """A step row as ``jsonb_populate_recordset`` reads it (column names as keys)."""
    return {
        column: _iso(value) if isinstance(value, datetime) else value
        for column, value in zip(_STEP_COLUMNS, _step_values(run_id, record), strict=True)
    }


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"a naive datetime cannot be stored: {value!r}")
    return value.isoformat()


def _params(preps: list[Callable[[Any], Any] | None], values: Sequence[Any]) -> list[Any]:
    return [
        value if prep is None or value is None else prep(value)
        for prep, value in zip(preps, values, strict=True)
    ]


def _write_guarded_postgres(
    cursor: Any,
    run_id: str,
    guard: StepRecord,
    owner: str,
    *,
    others: Sequence[StepRecord],
    finish: RunState | None,
) -> bool:
    from psycopg.types.json import Jsonb

    rows = Jsonb([_step_json(run_id, record) for record in (*others, guard)])
    if finish is None:
        cursor.execute(_WRITE_GUARDED_CALL, [run_id, guard.position, owner, rows])
    else:
        finished_at = _iso(finish.finished_at) if finish.finished_at is not None else None
        cursor.execute(
            _FINISH_GUARDED_CALL,
            [
                run_id,
                guard.position,
                owner,
                rows,
                finish.wake_seq,
                finish.status.value,
                finish.result,
                finished_at,
                finish.custom_status,
            ],
        )
    row = cursor.fetchone()
    return row is not None and row[0] is True


def _finish_params(
    statements: _Statements, run_id: str, guard: StepRecord, owner: str, finish: RunState
) -> list[Any]:
    """The parameters of SQLite's guarded end of a run (``_Statements.finish_sqlite``)."""
    values = (finish.status.value, finish.result, finish.finished_at, finish.custom_status)
    return [
        *_params(statements.finish_preps, values),
        run_id,
        finish.wake_seq,
        run_id,
        guard.position,
        owner,
        run_id,
    ]


def _guarded_sqlite(
    cursor: Any,
    statements: _Statements,
    run_id: str,
    guard: tuple[str, list[Any]],
    records: Sequence[StepRecord],
) -> bool:
    """Run SQLite's guarded ``UPDATE`` of a run and, if it found the run, upsert ``records``.

    In one immediate transaction of its own; a savepoint inside one the
    caller holds open (a test's, say), which already holds the write lock.
    """
    update, params = guard
    nested = bool(cursor.connection.in_transaction)
    begin, commit, rollback = _SQLITE_NESTED if nested else _SQLITE_OWN
    cursor.execute(begin)
    try:
        cursor.execute(update, params)
        written = bool(cursor.rowcount == 1)
        if written:
            upsert = statements.upsert_sqlite
            for record in records:
                cursor.execute(upsert, _step_params(statements, run_id, record))
        # Inside the ``try``: a COMMIT that fails (SQLITE_BUSY) leaves the
        # transaction open, holding the write lock, until it is rolled back.
        for statement in (commit,) if written else rollback:
            cursor.execute(statement)
    except BaseException:
        if cursor.connection.in_transaction:
            # The error that got here is the one to see, not the rollback's.
            with contextlib.suppress(Exception):
                for statement in rollback:
                    cursor.execute(statement)
        raise
    return written


_SQLITE_OWN = ("BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",))
_SQLITE_NESTED = (
    'SAVEPOINT "hookflow_guarded"',
    'RELEASE "hookflow_guarded"',
    ('ROLLBACK TO "hookflow_guarded"', 'RELEASE "hookflow_guarded"'),
)


_statements: dict[str, _Statements] = {}


def _statements_for(connection: BaseDatabaseWrapper) -> _Statements:
    found = _statements.get(connection.alias)
    if found is None:
        found = _statements[connection.alias] = _Statements(connection)
    return found


_ZERO = timedelta(0)


def _flow_lock(key: str) -> str:
    return f"flow:{key}"


def _live_leases(using: str, now: datetime) -> QuerySet[Any, Any]:
    """The step a ``FlowStart`` row (the outer query) names, if it holds a live lease."""
    from django.db.models import OuterRef

    from .models import Step

    return Step.objects.using(using).filter(
        run_id=OuterRef("run_id"),
        position=OuterRef("position"),
        lease_owner=OuterRef("owner"),
        status=StepStatus.PENDING.value,
        lease_until__gt=now,
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run a worker claimed (``DjangoStore.claim_due``)."""

    run_id: str
    workflow: str
    #: The run as the claim read it; None where the claim could not return it.
    run: RunState | None = None
    #: The run had no journal yet when it was claimed.
    fresh: bool = False


class DjangoStore:
    """Runs, journals and buffered events in the Django database.

    ``lock_run`` is ``SELECT ... FOR UPDATE`` on PostgreSQL. SQLite has no
    row locks: there, configure ``"OPTIONS": {"transaction_mode": "IMMEDIATE"}``
    so each transaction takes the database's write lock when it begins, which
    serialises ticks (system check ``hookflow_gen.W001`` says so).

    Args:
        using: the database alias; None lets the database routers choose.
    """

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def __repr__(self) -> str:
        return f"DjangoStore(using={self.using!r})"

    @property
    def db(self) -> str:
        """The database alias in use."""
        if self.using is None:
            # Asked once: the routers' answer for the runs table does not change.
            from .models import Run

            self.using = router.db_for_write(Run)
        return self.using

    def _connection(self) -> BaseDatabaseWrapper:
        return connections[self.db]

    # -- transactions ----------------------------------------------------------

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """``transaction.atomic`` on the store's database."""
        return transaction.atomic(using=self.db)

    def on_commit(self, fn: Callable[[], None]) -> None:
        """``transaction.on_commit``; an exception in ``fn`` propagates (not robust)."""
        transaction.on_commit(fn, using=self.db, robust=False)

    # -- runs --------------------------------------------------------------------

    def create_run(self, run: RunState) -> tuple[RunState, bool]:
        """Insert the run unless its id exists: one ``INSERT ... ON CONFLICT DO NOTHING``."""
        from .models import Run

        connection = self._connection()
        row = Run(
            run_id=run.run_id,
            workflow=run.workflow,
            status=run.status.value,
            payload=run.payload,
            result=run.result,
            error=run.error.to_json() if run.error is not None else None,
            finished_at=run.finished_at,
            parent_run_id=run.parent_run_id,
            parent_position=run.parent_position,
            wake_at=run.wake_at,
            wake_seq=run.wake_seq,
            cancel_requested=run.cancel_requested,
            tick_failures=run.tick_failures,
            past_errors=[error.to_json() for error in run.past_errors],
            custom_status=run.custom_status,
            continued_from=run.continued_from,
            continued_as=run.continued_as,
            generation=run.generation,
            traceparent=run.traceparent,
        )
        if run.created_at is not None:
            row.created_at = run.created_at
        fields = Run._meta.concrete_fields
        ops = connection.ops
        columns = ", ".join(ops.quote_name(str(field.column)) for field in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        params = [
            field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields
        ]
        suffix = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None)
        sql = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} "
            f"{ops.quote_name(Run._meta.db_table)} ({columns}) VALUES ({placeholders}) {suffix}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            created = cursor.rowcount == 1
        if created:
            return run, True
        existing = self.get_run(run.run_id)
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise RuntimeError(f"run {run.run_id!r} both exists and does not")
        return existing, False

    def get_run(self, run_id: str) -> RunState | None:
        """The run, unlocked."""
        for row in _GET_RUN.rows(self._connection(), run_id):
            return _run(row)
        return None

    def lock_run(self, run_id: str) -> RunState | None:
        """The run, locked with ``SELECT ... FOR UPDATE`` until the transaction ends."""
        for row in _LOCK_RUN.rows(self._connection(), run_id):
            return _run(row)
        return None

    def save_run(self, run: RunState) -> None:
        """One ``UPDATE`` of the fields a run changes after it was created.

        The tick that saves the run has taken over the wake-up a worker
        claimed, so the claim is cleared: other workers may now claim the
        run's next wake-up.
        """
        connection = self._connection()
        statements = _statements_for(connection)
        values = (
            run.status.value,
            run.result,
            run.error.to_json() if run.error is not None else None,
            run.finished_at,
            run.wake_at,
            run.wake_seq,
            run.cancel_requested,
            run.tick_failures,
            [error.to_json() for error in run.past_errors],
            run.custom_status,
            run.continued_as,
        )
        params = _params(statements.run_preps, values)
        with connection.cursor() as cursor:
            cursor.execute(statements.update_run, [*params, run.run_id])

    # -- steps -------------------------------------------------------------------

    def steps(self, run_id: str, from_position: int = 0) -> list[StepRecord]:
        """The journal from ``from_position`` on, in one query."""
        return [_step(row) for row in _STEPS.rows(self._connection(), run_id, from_position)]

    def save_step(self, run_id: str, record: StepRecord) -> None:
        """Insert or replace the record: one ``INSERT ... ON CONFLICT DO UPDATE``."""
        self.save_steps(run_id, (record,))

    def save_steps(self, run_id: str, records: Sequence[StepRecord]) -> None:
        """Insert or replace records of distinct positions in one multi-row upsert."""
        connection = self._connection()
        statements = _statements_for(connection)
        params: list[Any] = []
        for record in records:
            params += _step_params(statements, run_id, record)
        rows = ", ".join([statements.upsert_step_row] * len(records))
        sql = statements.upsert_step_head + rows + statements.upsert_step_tail
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def write_guarded(
        self,
        run_id: str,
        guard: StepRecord,
        owner: str,
        others: Sequence[StepRecord],
        *,
        finish: RunState | None = None,
    ) -> bool:
        """Write ``guard`` and ``others`` if ``owner`` still holds the step ``guard`` replaces.

        One call in autocommit (one round trip, one commit): it writes
        nothing unless the run is running with no cancellation asked for and
        its step at ``guard.position`` is pending under ``owner``'s lease.
        With ``finish`` it also ends the run, if its ``wake_seq`` is still
        ``finish.wake_seq`` and no running run waits on it
        (``GuardedWrites``). On PostgreSQL it is the function
        ``hookflow_write_guarded`` (migrations 0012 and 0013), which locks
        the run first, as every tick does, then the step row; on SQLite one
        ``INSERT ... SELECT ... WHERE EXISTS`` statement, which holds the
        write lock throughout (with ``finish``, a guarded ``UPDATE`` of the
        run and the upsert in one immediate transaction). Either goes to the
        driver directly, past Django's per-call cursor machinery.

        Returns:
            Whether the guard held (and the records were written).
        """
        connection = self._connection()
        statements = _statements_for(connection)
        connection.ensure_connection()
        with connection.wrap_database_errors:
            cursor = connection.connection.cursor()
            try:
                if statements.vendor == "postgresql":
                    return _write_guarded_postgres(
                        cursor, run_id, guard, owner, others=others, finish=finish
                    )
                if finish is not None:
                    ends = (
                        statements.finish_sqlite,
                        _finish_params(statements, run_id, guard, owner, finish),
                    )
                    return _guarded_sqlite(cursor, statements, run_id, ends, (*others, guard))
                params: list[Any] = []
                for record in (*others, guard):
                    params += _step_params(statements, run_id, record)
                params += [run_id, guard.position, owner, run_id]
                cursor.execute(statements.guarded(len(others)), params)
                return bool(cursor.rowcount > 0)
            finally:
                cursor.close()

    def begin_guarded(self, run: RunState, seen_seq: int, claim: StepRecord) -> bool:
        """A new run's first tick in one call (``GuardedWrites``): its wake-up and first claim.

        On PostgreSQL the function ``hookflow_begin_guarded`` (migration
        0013), which locks the run and then looks for its steps; on SQLite a
        guarded ``UPDATE`` of the run and the step's insert in one immediate
        transaction.

        Returns:
            Whether the guard held (and the records were written).
        """
        connection = self._connection()
        statements = _statements_for(connection)
        run_id = run.run_id
        connection.ensure_connection()
        with connection.wrap_database_errors:
            cursor = connection.connection.cursor()
            try:
                if statements.vendor == "postgresql":
                    from psycopg.types.json import Jsonb

                    wake_at = _iso(run.wake_at) if run.wake_at is not None else None
                    rows = Jsonb([_step_json(run_id, claim)])
                    cursor.execute(
                        _BEGIN_GUARDED_CALL, [run_id, seen_seq, wake_at, run.wake_seq, rows]
                    )
                    row = cursor.fetchone()
                    return row is not None and row[0] is True
                (wake_at,) = _params(statements.wake_preps, (run.wake_at,))
                params = [wake_at, run.wake_seq, run_id, seen_seq, run_id]
                guard = (statements.begin_sqlite, params)
                return _guarded_sqlite(cursor, statements, run_id, guard, (claim,))
            finally:
                cursor.close()

    # -- events ------------------------------------------------------------------

    def add_event(self, key: str, payload: str) -> None:
        """Buffer an event."""
        from .models import Event

        Event.objects.using(self.db).create(key=key, payload=payload)

    def take_event(self, key: str) -> str | None:
        """Delete and return the oldest buffered event for ``key``."""
        from .models import Event

        events = Event.objects.using(self.db).filter(key=key).order_by("id")
        if self._connection().features.has_select_for_update_skip_locked:
            # Two runs reaching their event step at once each get their own event.
            events = events.select_for_update(skip_locked=True)
        found = events.values_list("id", "payload").first()
        if found is None:
            return None
        event_id, payload = found
        Event.objects.using(self.db).filter(pk=event_id).delete()
        return payload

    def lock_key(self, key: str) -> None:
        """A transaction-scoped advisory lock on PostgreSQL; SQLite's write lock elsewhere.

        On SQLite (with ``transaction_mode: IMMEDIATE``) every transaction
        already holds the database's write lock, which serialises them all.
        """
        connection = self._connection()
        if connection.vendor != "postgresql":
            return
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)]
            )

    # -- updates -----------------------------------------------------------------

    def in_transaction(self) -> bool:
        """True inside ``transaction.atomic()`` on the store's database."""
        return self._connection().in_atomic_block

    def add_update(self, update: UpdateState) -> None:
        """Insert a new update's row."""
        from .models import Update

        row = Update(
            run_id=update.run_id,
            update_id=update.update_id,
            name=update.name,
            request=update.request,
            status=update.status.value,
            answer=update.answer,
            reason=update.reason,
            answered_at=update.answered_at,
        )
        if update.created_at is not None:
            row.created_at = update.created_at
        row.save(using=self.db, force_insert=True)

    def get_update(self, run_id: str, update_id: str) -> UpdateState | None:
        """The run's update with that id: one query."""
        from .models import Update

        found = (
            Update.objects.using(self.db)
            .filter(run_id=run_id, update_id=update_id)
            .values_list(*_UPDATE_FIELDS)
            .order_by("id")  # not the model's ordering, which joins the run for its date
            .first()
        )
        return _update(found) if found is not None else None

    def save_update(self, update: UpdateState) -> None:
        """Record an update's answer or rejection: one ``UPDATE``."""
        from .models import Update

        Update.objects.using(self.db).filter(
            run_id=update.run_id, update_id=update.update_id
        ).update(
            status=update.status.value,
            answer=update.answer,
            reason=update.reason,
            answered_at=update.answered_at,
        )

    def pending_updates(self, run_id: str) -> list[UpdateState]:
        """The run's pending updates, in the order they were accepted: one query."""
        from .models import Update

        rows = (
            Update.objects.using(self.db)
            .filter(run_id=run_id, status=UpdateStatus.PENDING.value)
            .order_by("id")
            .values_list(*_UPDATE_FIELDS)
        )
        return [_update(row) for row in rows]

    # -- flow control ------------------------------------------------------------

    def take_flow_slot(
        self, gates: Sequence[FlowGate], run_id: str, position: int, owner: str, now: datetime
    ) -> datetime | None:
        """Take a slot of every gate, or join the waiting lists; see ``Store``.

        Each key is locked with ``lock_key`` (an advisory lock on
        PostgreSQL), so two claimers never both count the last slot free. A
        slot is a ``FlowStart`` row whose step still holds that owner's live
        lease, counted with one query per key; the rate counts the rows
        started in its window.
        """
        from django.db.models import Exists, Subquery

        from .models import FlowStart, FlowWaiter

        for gate in gates:
            self.lock_key(_flow_lock(gate.key))
        db = self.db
        live = _live_leases(db, now)
        retry_at: datetime | None = None
        full: list[str] = []
        for gate in gates:
            starts = FlowStart.objects.using(db).filter(key=gate.key)
            if gate.max_active is not None:
                held: list[datetime] = list(
                    starts.annotate(until=Subquery(live.values("lease_until")[:1]))
                    .filter(until__isnull=False)
                    .order_by("until")
                    .values_list("until", flat=True)[: gate.max_active]
                )
                if len(held) >= gate.max_active:
                    full.append(gate.key)
                    retry_at = max(retry_at or held[0], held[0])
            if gate.rate is not None and gate.period is not None:
                # The rate-th newest start in the window, if there is one: the
                # window is full until it leaves. One row, whatever the rate.
                nth: datetime | None = (
                    starts.filter(started_at__gt=now - gate.period)
                    .order_by("-started_at")
                    .values_list("started_at", flat=True)[gate.rate - 1 : gate.rate]
                    .first()
                )
                if nth is not None:
                    opens = nth + gate.period
                    retry_at = max(retry_at or opens, opens)
        if retry_at is not None:
            FlowWaiter.objects.using(db).bulk_create(
                [FlowWaiter(key=key, run_id=run_id, since=now) for key in full],
                ignore_conflicts=True,
            )
            return retry_at
        for gate in gates:
            # Rows that neither hold a slot nor count toward the rate any more.
            (
                FlowStart.objects.using(db)
                .filter(key=gate.key, started_at__lte=now - (gate.period or _ZERO))
                .filter(~Exists(live))
                .delete()
            )
        FlowStart.objects.using(db).bulk_create(
            [
                FlowStart(key=g.key, run_id=run_id, position=position, owner=owner, started_at=now)
                for g in gates
            ]
        )
        FlowWaiter.objects.using(db).filter(
            run_id=run_id, key__in=[gate.key for gate in gates]
        ).delete()
        return None

    def release_flow_slot(self, keys: Sequence[str], now: datetime) -> list[str]:
        """Take the oldest waiting run off each key's list, under the key's lock."""
        from .models import FlowWaiter

        woken: list[str] = []
        for key in keys:
            self.lock_key(_flow_lock(key))
            waiters = FlowWaiter.objects.using(self.db).filter(key=key)
            first = waiters.order_by("since", "id").values_list("id", "run_id").first()
            if first is not None:
                FlowWaiter.objects.using(self.db).filter(pk=first[0]).delete()
                woken.append(first[1])
        return woken

    def is_transient(self, exc: BaseException) -> bool:
        """True for errors a retry can fix: a lost connection, a locked database."""
        return isinstance(exc, (OperationalError, InterfaceError))

    def waiters(self, kind: str, key: str) -> list[tuple[str, int]]:
        """Pending ``kind`` steps on ``key`` of running runs, oldest run first; one query."""
        rows = _WAITERS.rows(
            self._connection(), key, kind, StepStatus.PENDING.value, RunStatus.RUNNING.value
        )
        return [(run_id, position) for run_id, position in rows]

    # -- the database scheduler's queue ----------------------------------------

    def claim_due(
        self, now: datetime, lease: timedelta, exclude: Collection[str] = ()
    ) -> Claimed | None:
        """Claim the run that is due first, or None if none is due.

        ``exclude`` names runs not to claim: those a worker's other threads are
        ticking, which stay due while a gather has more ready branches.

        In one statement (``UPDATE ... RETURNING``; a short transaction where
        the database cannot return rows, or with ``exclude``): lock the oldest
        due, unclaimed run (skipping rows other workers hold, where the
        database can) and set its ``claimed_until`` to ``now + lease`` so no
        other worker takes the same wake-up. The tick's first ``save_run``
        clears the claim, so a run with more ready steps (a gather) can be
        claimed by another worker at once; if the worker dies first, the claim
        lapses after the lease.

        ``wake_at`` itself is left alone: the tick reads it to decide the next
        wake-up, and moving it forward would make every long sleep wake early.

        The one statement also returns the run and whether it has a journal
        yet (``Claimed.run``, ``Claimed.fresh``), so a new run's first tick
        reads nothing (``Runtime.tick(fresh=...)``). The first tick's guarded
        write (``begin_guarded``) or its ``save_run`` clears the claim.
        """
        connection = self._connection()
        statements = _statements_for(connection)
        if statements.claim_due is not None and not exclude:
            sql, order = statements.claim_due
            due = (now,)
            params = [_adapt(connection, now + lease), *(_adapt(connection, due[i]) for i in order)]
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            if row is None:
                return None
            run = _run(_GET_RUN.convert(connection, row[:-1]))
            return Claimed(run.run_id, run.workflow, run, fresh=bool(row[-1]))
        with transaction.atomic(using=self.db):
            if exclude:
                found = list(_due_query(self.db, now, exclude))
            else:
                found = _DUE.rows(connection, now)
            if not found:
                return None
            run_id, workflow = found[0]
            with connection.cursor() as cursor:
                cursor.execute(
                    _statements_for(connection).claim_run,
                    [_adapt(connection, now + lease), run_id],
                )
        return Claimed(run_id, workflow)

    def next_wake(self) -> datetime | None:
        """When the earliest running run is next due, or None if none is timed."""
        from .models import Run

        earliest: datetime | None = (
            Run.objects.using(self.db)
            .filter(status=RUNNING_SQL, wake_at__isnull=False)
            .aggregate(earliest=Min("wake_at"))["earliest"]
        )
        return earliest
