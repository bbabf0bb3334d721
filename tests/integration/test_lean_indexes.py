"""The hookflow tables carry only the indexes their queries use (migration 0011).

Every index is one more entry to write per inserted row (and per updated
row, when the update is not HOT), so the tables keep none that a unique
constraint already covers, and the sparse columns are indexed only where
they are set. The queries that filter on those columns are run for real
(through ``DjangoStore`` and the admin), captured, and their plans read
back: the partial indexes must still serve them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from hookflow_gen.django import DjangoStore
from hookflow_gen.django.models import Run, Step, Update

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.test import Client

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RUNS = 300
PARENT = "lean-parent"
CHILDREN = [f"{PARENT}-{i}" for i in range(3)]


def _tables() -> list[str]:
    return sorted(model._meta.db_table for model in apps.get_app_config("hookflow").get_models())


@dataclass(frozen=True, slots=True)
class _Constraint:
    """What ``get_constraints`` says of one constraint or index, as the tests need it."""

    columns: list[str]
    unique: bool  # the primary key, a unique constraint or a unique index
    index: bool  # a plain index: not unique
    foreign_key: tuple[str, str] | None


def _constraints(table: str) -> dict[str, _Constraint]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    result: dict[str, _Constraint] = {}
    for name, info in found.items():
        unique = info["unique"] or info["primary_key"]
        result[name] = _Constraint(
            columns=list(info["columns"]),
            unique=unique,
            index=info["index"] and not unique,
            foreign_key=info["foreign_key"],
        )
    return result


def _indexes(table: str) -> dict[str, _Constraint]:
    """The plain (not unique) indexes of the table, by name."""
    return {name: info for name, info in _constraints(table).items() if info.index}


def _index_sql(table: str) -> dict[str, str]:
    """The table's ``CREATE INDEX`` statements as the database keeps them, by index name."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table]
            )
        else:
            cursor.execute(
                "SELECT name, COALESCE(sql, '') FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = %s",
                [table],
            )
        return {str(name): str(sql) for name, sql in cursor.fetchall()}


def _captured(run: Callable[[], object], table: str, where: str) -> str:
    """The SQL of the one query on ``table`` with ``where`` in it that ``run`` sends."""
    with CaptureQueriesContext(connection) as queries:
        run()
    found = [
        str(query["sql"])
        for query in queries.captured_queries
        if f'FROM "{table}"' in str(query["sql"]) and where in str(query["sql"])
    ]
    assert len(found) == 1, (where, [query["sql"] for query in queries.captured_queries])
    return found[0]


def _plan(sql: str) -> str:
    """The plan of ``sql``. On PostgreSQL, sequential scans are priced out of reach.

    The tables hold a few hundred rows, which PostgreSQL may read whole
    rather than through an index. With ``enable_seqscan`` off it takes
    any index that fits the query, and still scans when none does, so the
    plan shows whether the index can serve the query, not whether it pays
    at this size. ``SET LOCAL`` ends with the test's transaction.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def _uses(plan: str, index: str) -> bool:
    """Whether the plan reads ``index`` (by its whole name: not ``index_1a2b3c4d``)."""
    return re.search(rf"\b{re.escape(index)}\b", plan) is not None


def _seed() -> None:
    """300 runs of 3 steps, a tenth of them waiting on an event key; a parent of 3 children.

    As in real journals, most steps (run, call and sleep steps) have no
    key and most runs no parent.
    """
    runs = [
        Run(run_id=f"lean-{i}", workflow="lean", payload="{}", created_at=T0, wake_at=T0)
        for i in range(RUNS)
    ]
    runs.append(Run(run_id=PARENT, workflow="lean", payload="{}", created_at=T0, wake_at=T0))
    runs += [
        Run(
            run_id=child,
            workflow="lean",
            payload="{}",
            created_at=T0 + timedelta(seconds=i),
            wake_at=T0,
            parent_run_id=PARENT,
            parent_position=i,
        )
        for i, child in enumerate(CHILDREN)
    ]
    Run.objects.bulk_create(runs)
    steps: list[Step] = []
    for i in range(RUNS):
        run_id = f"lean-{i}"
        steps += [
            Step(run_id=run_id, position=0, kind="run", name="a", status="completed"),
            Step(run_id=run_id, position=1, kind="call", name="b", status="completed"),
        ]
        if i % 10 == 0:
            steps.append(
                Step(run_id=run_id, position=2, kind="event", name="c", key=f"lean-key-{i}")
            )
        else:
            steps.append(Step(run_id=run_id, position=2, kind="sleep", name="c"))
    Step.objects.bulk_create(steps)
    Update.objects.bulk_create(
        Update(run_id=f"lean-{i}", update_id=f"u{i}", name="bump", request="{}")
        for i in range(RUNS)
    )
    assert Step.objects.filter(key__isnull=True).count() == RUNS * 3 - RUNS // 10


# -- what the schema holds -------------------------------------------------------------


def test_no_index_repeats_the_start_of_a_unique_one() -> None:
    """No plain index's columns are the leading columns of a unique constraint or primary key.

    Such an index serves no lookup the unique one does not (PostgreSQL's
    ``varchar_pattern_ops`` copies included: only ``LIKE 'x%'`` needs them,
    and no query runs it), so it would only cost writes.
    """
    covered: list[str] = []
    for table in _tables():
        constraints = _constraints(table)
        uniques = [info.columns for info in constraints.values() if info.unique]
        for name, info in _indexes(table).items():
            columns = info.columns
            covered += [
                f"{table}.{name} {columns} is covered by {unique}"
                for unique in uniques
                if unique[: len(columns)] == columns
            ]
    assert covered == []


@pytest.mark.parametrize(
    ("table", "unique"),
    [("hookflow_step", ["run_id", "position"]), ("hookflow_update", ["run_id", "update_id"])],
)
def test_run_foreign_keys_have_no_index_but_the_unique_one(table: str, unique: list[str]) -> None:
    """Steps and updates are found by run through their unique constraint alone."""
    constraints = _constraints(table)
    on_run = {
        name: info.columns
        for name, info in constraints.items()
        if (info.index or info.unique) and info.columns[:1] == ["run_id"]
    }
    assert list(on_run.values()) == [unique], on_run
    # The foreign key itself is still enforced.
    assert any(info.foreign_key == ("hookflow_run", "run_id") for info in constraints.values())


@pytest.mark.parametrize(
    ("table", "column", "index"),
    [
        ("hookflow_step", "key", "hookflow_step_key"),
        ("hookflow_run", "parent_run_id", "hookflow_run_parent"),
    ],
)
def test_sparse_columns_have_partial_indexes(table: str, column: str, index: str) -> None:
    """``Step.key`` and ``Run.parent_run_id`` are indexed only where they are set."""
    on_column = {name: info for name, info in _indexes(table).items() if column in info.columns}
    assert list(on_column) == [index]
    assert on_column[index].columns == [column]
    definition = _index_sql(table)[index]
    assert " WHERE " in definition, definition
    condition = definition.split(" WHERE ", 1)[1]
    assert column in condition and "IS NOT NULL" in condition, definition


@pytest.mark.postgres
def test_no_pattern_ops_indexes_on_postgresql() -> None:
    """No hookflow table keeps a ``varchar_pattern_ops`` index (what ``db_index`` adds)."""
    found = {
        name: sql
        for table in _tables()
        for name, sql in _index_sql(table).items()
        if "pattern_ops" in sql
    }
    assert found == {}


def test_the_indexes_are_the_audited_ones() -> None:
    """The plain indexes are the ones the audit kept, so a new one is a choice, not an accident.

    Each serves a query; the comments in ``models.py`` say which.
    """
    plain = {f"{table}.{name}" for table in _tables() for name in _indexes(table)}
    assert plain == {
        "hookflow_event.hookflow_event_key",
        "hookflow_flowstart.hookflow_flowstart_key",
        "hookflow_outbox.hookflow_outbox_run",
        "hookflow_run.hookflow_run_created_at_433afdfd",
        "hookflow_run.hookflow_run_due",
        "hookflow_run.hookflow_run_parent",
        "hookflow_run.hookflow_run_workflow",
        "hookflow_seensignature.hookflow_seen_message",
        "hookflow_seensignature.hookflow_seensignature_expires_at_6649c59d",
        "hookflow_step.hookflow_step_key",
    }


# -- what the queries use --------------------------------------------------------------


def test_waiters_use_the_partial_key_index() -> None:
    """``DjangoStore.waiters`` (``key = %s``) is served by the partial ``hookflow_step_key``."""
    _seed()
    store = DjangoStore()
    assert store.waiters("event", "lean-key-120") == [("lean-120", 2)]
    sql = _captured(lambda: store.waiters("event", "lean-key-120"), "hookflow_step", '"key" =')
    plan = _plan(sql)
    assert _uses(plan, "hookflow_step_key"), plan


@pytest.mark.parametrize("query", ["claim", "next wake-up", "stranded"])
def test_the_workers_queries_use_the_partial_due_index(query: str) -> None:
    """The claim, the next wake-up and the sweep read running runs alone (``hookflow_run_due``).

    Their status is a literal in the SQL: SQLite serves a query from a
    partial index only when the query names the index's condition, and a
    bound parameter does not. With a parameter, each claim read every run
    ever started, finished ones included.
    """
    from hookflow_gen.django._recovery import stranded

    _seed()
    Run.objects.filter(run_id__in=[f"lean-{i}" for i in range(0, RUNS, 2)]).update(
        status="completed", wake_at=None
    )
    store = DjangoStore()
    run: Callable[[], object]
    if query == "claim":
        run, where = (lambda: store.claim_due(T0, timedelta(minutes=5))), '"claimed_until" ='
    elif query == "next wake-up":
        run, where = store.next_wake, "MIN("
    else:
        run, where = (lambda: stranded(store, T0)), '"wake_at" IS NULL'
    plan = _plan(_captured(run, "hookflow_run", where))
    assert _uses(plan, "hookflow_run_due"), plan


def test_admin_children_use_the_partial_parent_index(admin_client: Client) -> None:
    """The run page's list of children (``parent_run_id = %s``) uses ``hookflow_run_parent``."""
    _seed()
    page = reverse("admin:hookflow_run_change", args=[PARENT])
    response = admin_client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    for child in CHILDREN:
        assert reverse("admin:hookflow_run_change", args=[child]) in html
    sql = _captured(lambda: admin_client.get(page), "hookflow_run", '"parent_run_id" =')
    plan = _plan(sql)
    assert _uses(plan, "hookflow_run_parent"), plan


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("table", "column", "index"),
    [
        ("hookflow_step", "key", "hookflow_step_key"),
        ("hookflow_run", "parent_run_id", "hookflow_run_parent"),
    ],
)
def test_partial_indexes_serve_bound_parameters(table: str, column: str, index: str) -> None:
    """A generic plan (``column = $1``, as with server-side binding) still uses the partial index.

    ``=`` is strict, so PostgreSQL proves ``IS NOT NULL`` from it whatever
    the value: the index does not need the value in the query text.
    """
    _seed()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"PREPARE lean_lookup(text) AS SELECT * FROM {table} WHERE {column} = $1")
        try:
            cursor.execute("EXPLAIN EXECUTE lean_lookup('lean-parent')")
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE lean_lookup")
    assert "$1" in plan and _uses(plan, index), plan


def _unique_index(table: str, columns: list[str]) -> str:
    """The name the database's plans give the index of the unique constraint on ``columns``."""
    if connection.vendor == "postgresql":
        (name,) = [
            name
            for name, info in _constraints(table).items()
            if info.unique and info.columns == columns
        ]
        return name
    # SQLite backs a unique constraint of its CREATE TABLE with an automatic index.
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA index_list({connection.ops.quote_name(table)})")
        for row in cursor.fetchall():
            name, origin = str(row[1]), str(row[3])
            if origin == "u":
                cursor.execute(f"PRAGMA index_info({connection.ops.quote_name(name)})")
                if [str(info[2]) for info in cursor.fetchall()] == columns:
                    return name
    raise AssertionError(f"no unique index on {table} {columns}")


def test_lookups_by_run_use_the_unique_constraints() -> None:
    """Without foreign-key indexes, the journal and the updates are read by their unique keys."""
    _seed()
    store = DjangoStore()
    assert [record.position for record in store.steps("lean-7", 1)] == [1, 2]
    sql = _captured(lambda: store.steps("lean-7", 1), "hookflow_step", '"run_id" =')
    plan = _plan(sql)
    assert _uses(plan, _unique_index("hookflow_step", ["run_id", "position"])), plan

    found = store.get_update("lean-7", "u7")
    assert found is not None and found.name == "bump"
    sql = _captured(lambda: store.get_update("lean-7", "u7"), "hookflow_update", '"update_id" =')
    plan = _plan(sql)
    assert _uses(plan, _unique_index("hookflow_update", ["run_id", "update_id"])), plan
