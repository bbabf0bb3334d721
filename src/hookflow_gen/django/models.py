"""The database tables: runs, their step journals and buffered events.

``DjangoStore`` reads and writes these; user code should go through the
runtime (``Workflow.start``, ``notify``, ``cancel``) rather than edit rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

__all__ = [
    "Event",
    "FlowStart",
    "FlowWaiter",
    "Outbox",
    "Run",
    "ScheduleCursor",
    "SeenSignature",
    "Step",
    "Update",
]


class Run(models.Model):
    """One run of a workflow: its payload, status and next wake-up."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"
        CONTINUED = "continued", "continued"

    run_id: models.CharField[str, str] = models.CharField(
        "run id", max_length=255, primary_key=True
    )
    workflow: models.CharField[str, str] = models.CharField(max_length=200)
    status: models.CharField[str, str] = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RUNNING
    )
    payload: models.TextField[str, str] = models.TextField(help_text="The payload, as JSON text.")
    result: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="The result, as JSON text."
    )
    error: models.JSONField[Any, Any] = models.JSONField(null=True, blank=True)
    # Indexed for the run lists' order (the admin, `hookflow list`) and recovery's oldest first.
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now, db_index=True
    )
    finished_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    parent_run_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=255, null=True, blank=True
    )
    parent_position: models.PositiveIntegerField[int | None, int | None] = (
        models.PositiveIntegerField(null=True, blank=True)
    )
    wake_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True, help_text="When the run is next due for a tick."
    )
    wake_seq: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    cancel_requested: models.BooleanField[bool, bool] = models.BooleanField(
        default=False, help_text="Cancel was asked for; the next tick throws Cancelled in."
    )
    tick_failures: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(
        default=0, help_text="Ticks in a row that raised; the run fails at the runtime's bound."
    )
    past_errors: models.JSONField[Any, Any] = models.JSONField(
        default=list, blank=True, help_text="The errors the run failed with before each resume."
    )
    traceparent: models.CharField[str | None, str | None] = models.CharField(
        max_length=128,
        null=True,
        blank=True,
        help_text="The W3C trace context the run was started in: the parent of its spans.",
    )
    claimed_until: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A worker claimed the due wake-up until then (cleared when the run is saved).",
    )
    custom_status: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="The latest ctx.set_status, as JSON text."
    )
    continued_from: models.CharField[str | None, str | None] = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text="The run this one continues (ctx.continue_as_new).",
    )
    continued_as: models.CharField[str | None, str | None] = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text="The run that continues this one.",
    )
    generation: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(
        default=0, help_text="How many runs of its continue-as-new chain came before it."
    )

    class Meta:
        verbose_name = "workflow run"
        verbose_name_plural = "workflow runs"
        ordering: ClassVar[Sequence[str]] = ("-created_at",)
        # Every index of the table is written on each insert and on each
        # update that moves ``wake_at`` (most ticks), so each one serves a
        # query (tests/integration/test_lean_indexes.py). Text columns are
        # indexed here rather than with ``db_index``, which on PostgreSQL adds
        # a second, ``varchar_pattern_ops`` index (for ``LIKE 'x%'``) that no
        # query runs.
        indexes: ClassVar[tuple[models.Index, ...]] = (
            # What workers poll: `status = 'running' AND wake_at <= now ORDER BY wake_at`.
            # Finished runs never wake, so leaving them out keeps the index small.
            models.Index(
                fields=["wake_at"],
                condition=models.Q(status="running"),
                name="hookflow_run_due",
            ),
            # The admin's workflow filter (and its list of workflows), `hookflow list`.
            models.Index(fields=["workflow"], name="hookflow_run_workflow"),
            # A run's children (the admin's run page): `parent_run_id = %s`.
            # NULL on every top-level run, which the index leaves out.
            models.Index(
                fields=["parent_run_id"],
                condition=models.Q(parent_run_id__isnull=False),
                name="hookflow_run_parent",
            ),
        )

    def __str__(self) -> str:
        return f"{self.workflow} {self.run_id} ({self.status})"


class Step(models.Model):
    """One record of a run's journal, at its position."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"

    run_id: str
    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (run, position) leads with run_id and
    # serves every lookup by run (the journal, the cascade, the admin's count).
    run: models.ForeignKey[Run, Run] = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    position: models.PositiveIntegerField[int, int] = models.PositiveIntegerField()
    kind: models.CharField[str, str] = models.CharField(max_length=16)
    name: models.CharField[str, str] = models.CharField(max_length=200)
    status: models.CharField[str, str] = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    result: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="The result, as JSON text."
    )
    error: models.JSONField[Any, Any] = models.JSONField(null=True, blank=True)
    attempts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    started_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    completed_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    wake_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    key: models.CharField[str | None, str | None] = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text="The event key of an event step, the child run id of an invoke step.",
    )
    lease_until: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    lease_owner: models.CharField[str | None, str | None] = models.CharField(
        max_length=64, null=True, blank=True
    )
    past_attempts: models.JSONField[Any, Any] = models.JSONField(
        null=True,
        blank=True,
        help_text="The earlier attempts that failed and were retried: times and errors.",
    )

    class Meta:
        verbose_name = "workflow step"
        verbose_name_plural = "workflow steps"
        ordering: ClassVar[Sequence[str]] = ("run", "position")
        constraints: ClassVar[tuple[models.BaseConstraint, ...]] = (
            models.UniqueConstraint(fields=["run", "position"], name="hookflow_step_position"),
        )
        indexes: ClassVar[tuple[models.Index, ...]] = (
            # The steps waiting on an event key or a child run (`DjangoStore.waiters`:
            # `key = %s AND kind = %s AND status = 'pending'`). Only event, invoke
            # and reply steps have a key: run, call and sleep steps, most of
            # the journal, are NULL and stay out of the index.
            models.Index(
                fields=["key"], condition=models.Q(key__isnull=False), name="hookflow_step_key"
            ),
        )

    def __str__(self) -> str:
        return f"{self.run_id} #{self.position} {self.kind} {self.name!r} ({self.status})"


class Event(models.Model):
    """An event sent before any run waited for it, kept for the first that does."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    key: models.CharField[str, str] = models.CharField(max_length=255)
    payload: models.TextField[str, str] = models.TextField(help_text="The event, as JSON text.")
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )

    class Meta:
        verbose_name = "buffered event"
        verbose_name_plural = "buffered events"
        ordering: ClassVar[Sequence[str]] = ("id",)
        indexes: ClassVar[tuple[models.Index, ...]] = (
            # `DjangoStore.take_event`: the oldest event of a key.
            models.Index(fields=["key"], name="hookflow_event_key"),
        )

    def __str__(self) -> str:
        return f"event {self.key!r} #{self.id}"


class Update(models.Model):
    """An update sent to a run (``RunHandle.update``): its request, then its answer.

    Written when the update is accepted, in the transaction that delivers or
    buffers its request; answered in the transaction that records the
    workflow's ``reply`` step. Its id is unique within the run. An update
    still waiting to be received when its run continues as new is handed on
    in that transaction: this row becomes ``continued`` and the next run of
    the chain gets a row of its own, with the same id and request.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        ANSWERED = "answered", "answered"
        REJECTED = "rejected", "rejected"
        # Handed on, unreceived, to the run its run continued as (a row of its own there).
        CONTINUED = "continued", "continued"

    run_id: str
    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (run, update_id) leads with run_id.
    run: models.ForeignKey[Run, Run] = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="updates", db_index=False
    )
    update_id: models.CharField[str, str] = models.CharField("update id", max_length=255)
    name: models.CharField[str, str] = models.CharField(max_length=200)
    request: models.TextField[str, str] = models.TextField(help_text="The request, as JSON text.")
    status: models.CharField[str, str] = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    answer: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="The answer, as JSON text."
    )
    reason: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="Why the workflow rejected the update."
    )
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )
    answered_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )

    class Meta:
        verbose_name = "workflow update"
        verbose_name_plural = "workflow updates"
        ordering: ClassVar[Sequence[str]] = ("run", "id")
        constraints: ClassVar[tuple[models.BaseConstraint, ...]] = (
            models.UniqueConstraint(fields=["run", "update_id"], name="hookflow_update_id"),
        )

    def __str__(self) -> str:
        return f"{self.run_id} update {self.name!r} {self.update_id} ({self.status})"


class SeenSignature(models.Model):
    """A QStash signature the webhook accepted, kept until it expires to refuse a replay."""

    jti: models.CharField[str, str] = models.CharField("token id", max_length=255, primary_key=True)
    # Indexed for the prune of expired tokens (`expires_at < now`).
    expires_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(db_index=True)
    message_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=128,
        null=True,
        blank=True,
        help_text="The delivered message, to tell a copy of a delivery from another message.",
    )

    class Meta:
        verbose_name = "seen QStash signature"
        verbose_name_plural = "seen QStash signatures"
        indexes: ClassVar[tuple[models.Index, ...]] = (
            # The other deliveries of a message (the webhook's `_copy_elsewhere`).
            models.Index(fields=["message_id"], name="hookflow_seen_message"),
        )

    def __str__(self) -> str:
        return self.jti


class Outbox(models.Model):
    """A QStash wake-up the site owes: written with the change that made it owed.

    The row commits in the same transaction as the run's new ``wake_at``; it
    is sent once that transaction commits and deleted when QStash accepts
    it. A row still here means the publish failed (or the process died
    first): the next delivery of the run, a worker and the sweep send it
    again. Its ``dedup_id`` is the message's deduplication id, so sending
    one twice costs nothing.
    """

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    dedup_id: models.CharField[str, str] = models.CharField(max_length=400)
    run_id: models.CharField[str, str] = models.CharField(max_length=255)
    seq: models.PositiveIntegerField[int, int] = models.PositiveIntegerField()
    wake_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    after: models.CharField[str | None, str | None] = models.CharField(
        max_length=128, null=True, blank=True
    )
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )
    attempts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    last_error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    flow: models.JSONField[Any, Any] = models.JSONField(
        null=True,
        blank=True,
        help_text="QStash flow control of the wake-up (the run's next step is limited).",
    )

    class Meta:
        verbose_name = "QStash outbox message"
        verbose_name_plural = "QStash outbox messages"
        ordering: ClassVar[Sequence[str]] = ("id",)
        # A constraint rather than ``unique=True``, and an index rather than
        # ``db_index``: on PostgreSQL those add ``varchar_pattern_ops`` indexes
        # that no query of the outbox uses.
        constraints: ClassVar[tuple[models.BaseConstraint, ...]] = (
            # `owe` inserts with ON CONFLICT DO NOTHING; the sends find their row by it.
            models.UniqueConstraint(fields=["dedup_id"], name="hookflow_outbox_dedup"),
        )
        indexes: ClassVar[tuple[models.Index, ...]] = (
            # `flush(run_id=...)`: the webhook's hand-off sends the run's owed rows.
            models.Index(fields=["run_id"], name="hookflow_outbox_run"),
        )

    def __str__(self) -> str:
        return f"wake-up {self.dedup_id}"


class FlowStart(models.Model):
    """An attempt of a flow-controlled step that started, on one of its keys.

    The attempt holds a slot of the key's concurrency while its step row
    still holds the lease of ``owner``: a settled step, or a lapsed lease
    (a killed worker), holds none, with no row to update. Rows count
    toward the key's rate for its period, and are deleted after that.
    """

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    key: models.CharField[str, str] = models.CharField(max_length=400)
    run_id: models.CharField[str, str] = models.CharField(max_length=255)
    position: models.IntegerField[int, int] = models.IntegerField()
    owner: models.CharField[str, str] = models.CharField(max_length=64)
    started_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()

    class Meta:
        verbose_name = "flow-control start"
        verbose_name_plural = "flow-control starts"
        indexes: ClassVar[tuple[models.Index, ...]] = (
            models.Index(fields=("key", "started_at"), name="hookflow_flowstart_key"),
        )

    def __str__(self) -> str:
        return f"{self.key}: {self.run_id} #{self.position}"


class FlowWaiter(models.Model):
    """A run waiting for a slot of a flow-control key; the oldest is woken first."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    key: models.CharField[str, str] = models.CharField(max_length=400)
    run_id: models.CharField[str, str] = models.CharField(max_length=255)
    since: models.DateTimeField[datetime, datetime] = models.DateTimeField()

    class Meta:
        verbose_name = "flow-control waiter"
        verbose_name_plural = "flow-control waiters"
        constraints: ClassVar[tuple[models.BaseConstraint, ...]] = (
            models.UniqueConstraint(fields=("key", "run_id"), name="hookflow_flowwaiter_unique"),
        )

    def __str__(self) -> str:
        return f"{self.key}: {self.run_id}"


class ScheduleCursor(models.Model):
    """How far a cron schedule has started runs: the database scheduler's cursor.

    The worker that finds a schedule's tick due locks this row, starts the
    tick's run and moves ``last_tick`` in one transaction, so a tick is
    neither started twice nor skipped across workers and restarts.
    """

    name: models.CharField[str, str] = models.CharField(max_length=255, primary_key=True)
    workflow: models.CharField[str, str] = models.CharField(max_length=255)
    cron: models.CharField[str, str] = models.CharField(max_length=255)
    last_tick: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        help_text="The latest tick handled: its run was started, or it was skipped."
    )
    last_run_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=255, null=True, blank=True
    )
    updated_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )

    class Meta:
        verbose_name = "schedule cursor"
        verbose_name_plural = "schedule cursors"

    def __str__(self) -> str:
        return f"schedule {self.name!r} at {self.last_tick.isoformat()}"
