"""A run's first and last transactions as guarded calls, like a step's on the hot path.

``hookflow_write_guarded`` can also end the run
(``DjangoStore.write_guarded(finish=...)``): a run whose workflow returns
right after a step the worker held alone writes that step's outcome and
the run's end in one call, one round trip and one commit, where the
locked path's last transaction took six.

``hookflow_begin_guarded`` (``DjangoStore.begin_guarded``) is a new run's
first tick: the worker's claim read the run and found no journal, so the
tick replays nothing, and writes the run's new wake-up and its first
step's claim in one call, if the run is still as the claim read it (its
``wake_seq``, running, no cancellation) and still has no step. The run is
locked first, then its steps are looked for: every writer of a run's
steps holds the run's lock.

Ending the run adds to the guard: the run's ``wake_seq`` is still the one
the caller saw (no other writer changed the run since: every writer of a
run bumps it), and no running parent waits on the run (an ``invoke`` step
keyed by its id; the locked path settles such waiters under the run's
lock). The run's columns come as typed arguments; the step rows still as
JSON, as in 0012.

The function names every column of ``hookflow_step`` but ``id``, and the
columns of ``hookflow_run`` a run's end sets: a later migration that adds
or renames one must replace it (``tests/integration/test_hot_path.py``
round-trips every field).
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
    p_run_id text, p_position integer, p_owner text, p_rows jsonb,
    p_seq integer DEFAULT NULL, p_status text DEFAULT NULL, p_result text DEFAULT NULL,
    p_finished_at timestamptz DEFAULT NULL, p_custom_status text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM hookflow_run
        WHERE run_id = p_run_id AND status = 'running' AND NOT cancel_requested
          AND (p_status IS NULL OR wake_seq = p_seq)
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
    IF p_status IS NOT NULL THEN
        PERFORM 1 FROM hookflow_step s JOIN hookflow_run r ON r.run_id = s.run_id
            WHERE s.key = p_run_id AND s.kind = 'invoke' AND s.status = 'pending'
              AND r.status = 'running'
            LIMIT 1;
        IF FOUND THEN
            RETURN false;
        END IF;
        UPDATE hookflow_run SET
            status = p_status, result = p_result, error = NULL, finished_at = p_finished_at,
            wake_at = NULL, cancel_requested = false, tick_failures = 0,
            custom_status = p_custom_status, claimed_until = NULL
            WHERE run_id = p_run_id;
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

_BEGIN = f"""
CREATE OR REPLACE FUNCTION hookflow_begin_guarded(
    p_run_id text, p_seq integer, p_wake_at timestamptz, p_new_seq integer, p_rows jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM hookflow_run
        WHERE run_id = p_run_id AND status = 'running' AND NOT cancel_requested
          AND wake_seq = p_seq
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM hookflow_step WHERE run_id = p_run_id LIMIT 1;
    IF FOUND THEN
        RETURN false;
    END IF;
    UPDATE hookflow_run SET wake_at = p_wake_at, wake_seq = p_new_seq, claimed_until = NULL
        WHERE run_id = p_run_id;
    INSERT INTO hookflow_step ({", ".join(_COLUMNS)})
        SELECT {", ".join(f"r.{c}" for c in _COLUMNS)}
        FROM jsonb_populate_recordset(NULL::hookflow_step, p_rows) AS r;
    RETURN true;
END
$$
"""

_OLD = "hookflow_write_guarded(text, integer, text, jsonb)"
_NEW = "hookflow_write_guarded(text, integer, text, jsonb, integer, text, text, timestamptz, text)"


def _create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        # A new argument list is a new function: the old one goes, so a call
        # with four arguments is not ambiguous between the two.
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {_OLD}")
        schema_editor.execute(_FUNCTION)
        schema_editor.execute(_BEGIN)


def _drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        # Back to 0012's function: migrating back runs its own code again.
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {_NEW}")
        schema_editor.execute(
            "DROP FUNCTION IF EXISTS "
            "hookflow_begin_guarded(text, integer, timestamptz, integer, jsonb)"
        )
        from importlib import import_module

        previous = import_module("hookflow_gen.django.migrations.0012_write_guarded")
        schema_editor.execute(previous._FUNCTION)


class Migration(migrations.Migration):
    dependencies: ClassVar[Sequence[tuple[str, str]]] = [
        ("hookflow", "0012_write_guarded"),
    ]

    operations: ClassVar[Sequence[Operation]] = [
        migrations.RunPython(_create, _drop),
    ]
