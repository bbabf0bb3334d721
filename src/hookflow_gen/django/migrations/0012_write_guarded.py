"""The guarded checkpoint as a PostgreSQL function (``DjangoStore.write_guarded``).

A step on the hot path writes its outcome and the next step's claim in one
call of this function, autocommitted: one round trip and one commit. As a
plain statement it costs PostgreSQL a parse and a plan on every call,
since Django's connections send their parameters inline (and prepared
statements stay off, as they must behind a transaction-pooling PgBouncer);
a PL/pgSQL function keeps the plans of its statements for the session,
with nothing held on the client's side.

The function locks the run first, as every tick does before it writes a
step, then the guarded step row; it writes nothing unless the run is
running with no cancellation asked for and the step is pending under the
caller's lease. The records come as a JSON array of step rows.

The function names every column of ``hookflow_step`` but ``id``: a later
migration that adds or renames one must replace it
(``tests/integration/test_hot_path.py`` round-trips every field).
"""

from collections.abc import Sequence
from typing import ClassVar

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import StateApps

_COLUMNS = (
    "run_id",
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

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION hookflow_write_guarded(
    p_run_id text, p_position integer, p_owner text, p_rows jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM hookflow_run
        WHERE run_id = p_run_id AND status = 'running' AND NOT cancel_requested
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM hookflow_step
        WHERE run_id = p_run_id AND position = p_position
          AND status = 'pending' AND lease_owner = p_owner
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO hookflow_step ({", ".join(_COLUMNS)})
        SELECT {", ".join(f"r.{c}" for c in _COLUMNS)}
        FROM jsonb_populate_recordset(NULL::hookflow_step, p_rows) AS r
        ON CONFLICT (run_id, position) DO UPDATE SET
            {", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[2:])};
    RETURN true;
END
$$
"""


def _create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_FUNCTION)


def _drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "DROP FUNCTION IF EXISTS hookflow_write_guarded(text, integer, text, jsonb)"
        )


class Migration(migrations.Migration):
    dependencies: ClassVar[Sequence[tuple[str, str]]] = [
        ("hookflow", "0011_lean_indexes"),
    ]

    operations: ClassVar[Sequence[Operation]] = [
        migrations.RunPython(_create, _drop),
    ]
