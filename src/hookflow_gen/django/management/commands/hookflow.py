"""``python manage.py hookflow <subcommand>``: the worker and run administration.

Subcommands:

- ``worker``: the database scheduler's worker; ticks runs as they fall due.
- ``runs``: recent runs and their status.
- ``schedules``: the cron schedules, their last tick and next fire time.
- ``show RUN_ID``: a run and its step timeline.
- ``cancel RUN_ID``: cancel a run (and its children).
- ``notify KEY JSON``: send an event.
- ``replay``: replay stored journals against the current code; exit code 1
  if any run no longer replays (run it before deploying a workflow change).
- ``recover``: wake runs that nothing would wake (and, on QStash, send the
  outbox and repair dead letters), once.
- ``qstash-schedule``: create (or update) the QStash schedule that calls the
  sweep endpoint, so a QStash site repairs itself without a worker.
- ``qstash-schedules``: create, update and delete the QStash schedules of the
  workflows' cron schedules (``@workflow(schedule=...)``).

Each subcommand is one entry of ``SUBCOMMANDS``: add one with the
``subcommand`` decorator.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hookflow_gen._client import current_runtime
from hookflow_gen.django._store import DjangoStore
from hookflow_gen.django._worker import Worker
from hookflow_gen.exceptions import (
    ConfigurationError,
    HookflowError,
    InvalidIdError,
    PayloadValidationError,
    UnknownRunError,
)

if TYPE_CHECKING:
    from datetime import datetime
    from types import FrameType

    from hookflow_gen._runtime import Runtime

__all__ = ["SUBCOMMANDS", "Command", "Subcommand", "Worker", "subcommand"]

log: logging.Logger = logging.getLogger("hookflow_gen.worker")

Handler = Callable[["Command", dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One ``manage.py hookflow`` subcommand.

    Attributes:
        help: the one-line help shown by ``manage.py hookflow --help``.
        add_arguments: adds the subcommand's own arguments to its parser.
        handle: does the work; raises ``CommandError`` for user mistakes.
    """

    help: str
    add_arguments: Callable[[CommandParser], None]
    handle: Handler


#: Subcommand name to subcommand, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, add_arguments: Callable[[CommandParser], None] = lambda parser: None
) -> Callable[[Handler], Handler]:
    """Register the decorated ``handle(command, options)`` as ``manage.py hookflow NAME``."""

    def register(handle: Handler) -> Handler:
        SUBCOMMANDS[name] = Subcommand(help, add_arguments, handle)
        return handle

    return register


class Command(BaseCommand):
    """``manage.py hookflow``."""

    help = "Run the hookflow worker, and inspect, cancel, notify and replay workflow runs."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        for name, sub in SUBCOMMANDS.items():
            sub.add_arguments(commands.add_parser(name, help=sub.help, description=sub.help))

    def handle(self, *args: Any, **options: Any) -> None:
        from django.db import DatabaseError

        name: str = options["subcommand"]
        try:
            SUBCOMMANDS[name].handle(self, options)
        except DatabaseError as exc:
            if options.get("traceback"):
                raise
            raise CommandError(
                f"database error: {exc}\n(is the database reachable, and did `manage.py migrate` "
                "run?  --traceback shows where it happened)"
            ) from exc


def _runtime() -> Runtime:
    """The current runtime, or a ``CommandError`` saying why there is none."""
    try:
        return current_runtime()
    except ConfigurationError as exc:
        from django.apps import apps

        reason: BaseException = exc
        if apps.is_installed("hookflow_gen.django"):
            reason = getattr(apps.get_app_config("hookflow"), "setup_error", None) or exc
        raise CommandError(str(reason)) from None


def _store(runtime: Runtime) -> DjangoStore:
    store = runtime.store
    if not isinstance(store, DjangoStore):
        raise CommandError(f"this command needs the Django store, and the runtime uses {store!r}")
    return store


def _when(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value is not None else "-"


# -- worker -------------------------------------------------------------------------


def _worker_arguments(parser: CommandParser) -> None:
    parser.add_argument("--once", action="store_true", help="Tick what is due now, then exit.")
    parser.add_argument(
        "--until-idle",
        type=float,
        nargs="?",
        const=0.0,
        default=None,
        metavar="SECONDS",
        help="Exit when no run is due and none falls due within SECONDS (default 0).",
    )
    parser.add_argument(
        "--max-ticks", type=int, default=None, metavar="N", help="Exit after N ticks."
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="Run up to N ticks at once, on threads with a database connection each "
        "(default 1): steps waiting on I/O overlap.",
    )


class _StopOnSignals:
    """SIGTERM and SIGINT stop the worker between ticks; a second SIGINT interrupts."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.worker.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("%s received: stopping after the ticks in progress", signal.Signals(signum).name)
        self.worker.stop()


def _configure_logging(verbosity: int) -> None:
    # Show the worker's per-tick lines unless the project configured logging itself.
    logger = logging.getLogger("hookflow_gen")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


@subcommand("worker", "Tick workflow runs as they fall due (the database scheduler).",
            _worker_arguments)  # fmt: skip
def _worker(command: Command, options: dict[str, Any]) -> None:
    from hookflow_gen.django._settings import get_settings

    runtime = _runtime()
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    _configure_logging(options["verbosity"])
    if settings.scheduler != "database":
        log.warning(
            "HOOKFLOW['SCHEDULER'] is %r: the runs' own scheduler delivers their wake-ups, "
            "and this worker only picks up ones that are overdue",
            settings.scheduler,
        )
    max_ticks: int | None = options["max_ticks"]
    if max_ticks is not None and max_ticks < 1:
        raise CommandError("--max-ticks must be at least 1")
    concurrency: int = options["concurrency"]
    if concurrency < 1:
        raise CommandError("--concurrency must be at least 1")
    worker = Worker(
        runtime,
        poll_interval=settings.poll_interval.total_seconds(),
        close_connections=True,
        concurrency=concurrency,
        schedules=settings.scheduler == "database",
    )
    log.info(
        "worker started (lease %s, poll every %s, %d tick(s) at once)",
        runtime.lease,
        settings.poll_interval,
        concurrency,
    )
    with _StopOnSignals(worker):
        ticks = worker.run(
            once=options["once"], until_idle=options["until_idle"], max_ticks=max_ticks
        )
    log.info("worker stopped after %d tick(s)", ticks)


# -- schedules -----------------------------------------------------------------------


@subcommand("schedules", "List the cron schedules with their last tick and next fire time.")
def _schedules(command: Command, options: dict[str, Any]) -> None:
    from hookflow_gen.django._schedules import schedule_statuses

    runtime = _runtime()
    store = _store(runtime)
    statuses = schedule_statuses(runtime.clock.now(), store.db)
    if not statuses:
        command.stdout.write("no schedules (pass @workflow(schedule=...) to add one)")
        return
    table = [("SCHEDULE", "WORKFLOW", "CRON (UTC)", "LAST TICK", "NEXT TICK", "LAST RUN")]
    table += [
        (s.name, s.workflow, s.cron, _when(s.last_tick), _when(s.next_tick), s.last_run_id or "-")
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        command.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- runs, show ----------------------------------------------------------------------


def _runs_arguments(parser: CommandParser) -> None:
    parser.add_argument("--workflow", help="Only runs of this workflow.")
    parser.add_argument(
        "--status",
        choices=["running", "completed", "failed", "cancelled", "continued"],
        help="Only runs in this status.",
    )
    parser.add_argument("--limit", type=int, default=20, help="How many runs (default 20).")


@subcommand("runs", "List recent runs with their status.", _runs_arguments)
def _runs(command: Command, options: dict[str, Any]) -> None:
    from django.db.models import Count

    from hookflow_gen.django.models import Run

    store = _store(_runtime())
    runs = Run.objects.using(store.db).annotate(step_count=Count("steps")).order_by("-created_at")
    if options["workflow"]:
        runs = runs.filter(workflow=options["workflow"])
    if options["status"]:
        runs = runs.filter(status=options["status"])
    rows = list(
        runs.values_list("run_id", "workflow", "status", "created_at", "finished_at", "step_count")[
            : max(options["limit"], 0)
        ]
    )
    if not rows:
        command.stdout.write("no runs")
        return
    table = [("RUN", "WORKFLOW", "STATUS", "STARTED", "FINISHED", "STEPS")]
    table += [
        (run_id, workflow, status, _when(created), _when(finished), str(steps))
        for run_id, workflow, status, created, finished, steps in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        command.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _show_arguments(parser: CommandParser) -> None:
    parser.add_argument("run_id", help="The run to show.")


@subcommand("show", "Show a run and its step timeline.", _show_arguments)
def _show(command: Command, options: dict[str, Any]) -> None:
    runtime = _runtime()
    run = runtime.store.get_run(options["run_id"])
    if run is None:
        raise CommandError(f"no run has id {options['run_id']!r}")
    write = command.stdout.write
    write(f"run       {run.run_id}")
    write(f"workflow  {run.workflow}")
    write(f"status    {run.status.value}")
    write(f"started   {_when(run.created_at)}")
    write(f"finished  {_when(run.finished_at)}")
    if run.parent_run_id:
        write(f"parent    {run.parent_run_id} (step #{run.parent_position})")
    if run.continued_from:
        write(f"continues {run.continued_from} (generation {run.generation})")
    if run.continued_as:
        write(f"continued {run.continued_as}")
    if run.custom_status is not None:
        write(f"custom    {run.custom_status}  (ctx.set_status)")
    if not run.status.finished:
        write(f"wake-up   {_when(run.wake_at)}")
    write(f"payload   {run.payload}")
    if run.result is not None:
        write(f"result    {run.result}")
    if run.error is not None:
        label = "error" if run.status.finished else "problem"
        write(f"{label:<9} {run.error.type}: {run.error.message}")
    if run.tick_failures:
        write(f"ticks     {run.tick_failures} failed in a row")
    if run.cancel_requested:
        write("cancel    requested")
    for number, past in enumerate(run.past_errors, start=1):
        write(f"failed #{number} {past.type}: {past.message} (then resumed)")
    with runtime.store.atomic():
        records = runtime.store.steps(run.run_id)
    write("")
    write(f"{len(records)} step(s):")
    for record in records:
        took = "-"
        if record.started_at is not None and record.completed_at is not None:
            took = f"{(record.completed_at - record.started_at).total_seconds():.3f}s"
        outcome = record.result if record.result is not None else ""
        if record.error is not None:
            outcome = f"{record.error.type}: {record.error.message}"
        write(
            f"  #{record.position:<3} {record.kind:<6} {record.name:<24} {record.status.value:<9} "
            f"attempts={record.attempts} took={took} {outcome}".rstrip()
        )


# -- cancel, notify ------------------------------------------------------------------


def _cancel_arguments(parser: CommandParser) -> None:
    parser.add_argument("run_id", help="The run to cancel.")


@subcommand("cancel", "Cancel a run and its child runs.", _cancel_arguments)
def _cancel(command: Command, options: dict[str, Any]) -> None:
    runtime = _runtime()
    run_id: str = options["run_id"]
    before = runtime.store.get_run(run_id)
    try:
        run = runtime.cancel(run_id)
    except UnknownRunError as exc:
        raise CommandError(str(exc)) from None
    if run.run_id != run_id:
        # A continue-as-new chain is cancelled at its live run.
        command.stdout.write(f"run {run_id} continued as {run.run_id}: {run.status.value}")
    elif before is not None and before.status.finished:
        command.stdout.write(f"run {run_id} had already finished: {run.status.value}")
    else:
        command.stdout.write(f"run {run_id} cancelled")


def _resume_arguments(parser: CommandParser) -> None:
    parser.add_argument("run_id", help="The failed run to run again.")


@subcommand(
    "resume",
    "Run a failed run again from where it failed, with the current code.",
    _resume_arguments,
)
def _resume(command: Command, options: dict[str, Any]) -> None:
    runtime = _runtime()
    try:
        run = runtime.resume(options["run_id"])
    except HookflowError as exc:
        raise CommandError(str(exc)) from None
    command.stdout.write(f"run {run.run_id} resumed: {run.status.value}")


def _notify_arguments(parser: CommandParser) -> None:
    parser.add_argument("key", help="The event key runs wait on.")
    parser.add_argument("payload", help='The event, as JSON (e.g. \'{"approved_by": "ann"}\').')


@subcommand("notify", "Send an event to the runs waiting on a key.", _notify_arguments)
def _notify(command: Command, options: dict[str, Any]) -> None:
    runtime = _runtime()
    try:
        payload = json.loads(options["payload"])
    except ValueError as exc:
        raise CommandError(f"the payload is not valid JSON: {exc}") from None
    try:
        delivered = runtime.notify(options["key"], payload)
    except (PayloadValidationError, InvalidIdError) as exc:
        raise CommandError(f"the event was not sent: {exc}") from None
    if delivered:
        command.stdout.write(f"delivered to {delivered} run(s)")
    else:
        command.stdout.write(
            f"no run waits on {options['key']!r} yet: the event is kept for the first"
        )


# -- replay --------------------------------------------------------------------------


def _replay_arguments(parser: CommandParser) -> None:
    parser.add_argument("--workflow", help="Only runs of this workflow.")
    parser.add_argument(
        "--limit", type=int, default=100, help="How many recent runs to replay (default 100)."
    )


def _replay_runs(
    runtime: Runtime, workflow: str | None, limit: int
) -> Iterator[tuple[str, str | None]]:
    """(run id, what is wrong or None) for each recent run, replayed against the code."""
    from hookflow_gen._workflow import get_workflow
    from hookflow_gen.django.models import Run
    from hookflow_gen.testing import replay

    store = _store(runtime)
    runs = Run.objects.using(store.db).order_by("-created_at")
    if workflow:
        runs = runs.filter(workflow=workflow)
    for run_id in runs.values_list("run_id", flat=True)[: max(limit, 0)]:
        run = store.get_run(run_id)
        if run is None:
            continue  # deleted meanwhile
        try:
            definition = get_workflow(run.workflow)
            replay(
                definition,
                payload_json=run.payload,
                journal=store.steps(run.run_id),
                run_id=run.run_id,
                started_at=run.created_at or runtime.clock.now(),
            )
        except HookflowError as exc:
            # NonDeterminismError above all; also a payload that no longer fits
            # its model, or a workflow that is no longer registered.
            yield run.run_id, f"{type(exc).__name__}: {exc}"
        else:
            yield run.run_id, None


@subcommand(
    "replay",
    "Replay stored runs against the current code; exit code 1 if any no longer replays.",
    _replay_arguments,
)
def _replay(command: Command, options: dict[str, Any]) -> None:
    checked = failed = 0
    for run_id, problem in _replay_runs(_runtime(), options["workflow"], options["limit"]):
        checked += 1
        if problem is not None:
            failed += 1
            command.stderr.write(f"run {run_id}: {problem}")
    if failed:
        raise CommandError(f"{failed} of {checked} run(s) no longer replay", returncode=1)
    command.stdout.write(f"{checked} run(s) replay deterministically")


# -- qstash-dev ----------------------------------------------------------------------


def _qstash_dev_arguments(parser: CommandParser) -> None:
    from hookflow_gen.django._qstash import qstash_dev_arguments

    qstash_dev_arguments(parser)


@subcommand(
    "qstash-dev",
    "Run a local QStash-compatible server in the foreground; print the exports to use it.",
    _qstash_dev_arguments,
)
def _qstash_dev(command: Command, options: dict[str, Any]) -> None:
    from hookflow_gen.django._qstash import qstash_dev

    qstash_dev(command, options)


# -- recover --------------------------------------------------------------------------


def _recover_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--no-dlq", action="store_true", help="do not read QStash's dead-letter queue"
    )


@subcommand(
    "recover",
    "Wake runs that nothing would wake; on QStash also send the outbox and repair dead letters.",
    _recover_arguments,
)
def _recover(command: Command, options: dict[str, Any]) -> None:
    from hookflow_gen.django._sweep import sweep

    runtime = _runtime()
    _store(runtime)
    report = sweep(runtime, dlq=not options["no_dlq"])
    for run_id in report.woken:
        command.stdout.write(f"woke run {run_id}")
    for run_id in report.dlq_woken:
        command.stdout.write(f"woke run {run_id} (its wake-up was dead-lettered)")
    command.stdout.write(
        f"{len(report.woken) + len(report.dlq_woken)} run(s) woken, "
        f"{report.outbox_sent} owed wake-up(s) sent, "
        f"{report.dlq_replayed} dead-lettered callback(s) replayed"
    )
    for error in report.errors:
        command.stderr.write(error)
    if report.outbox_failed or report.errors:
        raise CommandError("the sweep could not finish; see above", returncode=1)


# -- qstash-schedule ------------------------------------------------------------------

_SWEEP_SCHEDULE_ID = "hookflow-sweep"


def _qstash_schedule_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--cron",
        default="* * * * *",
        help="how often QStash calls the sweep (default: every minute)",
    )
    parser.add_argument(
        "--schedule-id",
        default=_SWEEP_SCHEDULE_ID,
        help=f"the schedule's id (default {_SWEEP_SCHEDULE_ID!r}; one per site)",
    )


@subcommand(
    "qstash-schedule",
    "Create or update the QStash schedule that calls this site's sweep endpoint.",
    _qstash_schedule_arguments,
)
def _qstash_schedule(command: Command, options: dict[str, Any]) -> None:
    import httpx
    from qstash.errors import QStashError

    from hookflow_gen.django._qstash import QStashScheduler

    scheduler = _runtime().scheduler
    if not isinstance(scheduler, QStashScheduler):
        raise CommandError("qstash-schedule needs HOOKFLOW['SCHEDULER'] = 'qstash'")
    schedule_id: str = options["schedule_id"]
    cron: str = options["cron"]
    try:
        url = scheduler.sweep_url()
        client = scheduler.client
        existing = next((s for s in client.schedule.list() if s.schedule_id == schedule_id), None)
        if existing is not None and existing.destination == url and existing.cron == cron:
            command.stdout.write(f"schedule {schedule_id!r} already calls {url} at {cron!r}")
            return
        # Creating with the same id replaces the schedule: running this again is safe.
        client.schedule.create(
            destination=url, cron=cron, schedule_id=schedule_id, body="{}",
            content_type="application/json",
        )  # fmt: skip
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except (QStashError, httpx.HTTPError) as exc:
        raise CommandError(f"QStash refused the schedule: {exc}") from None
    verb = "updated" if existing is not None else "created"
    command.stdout.write(f"schedule {schedule_id!r} {verb}: QStash calls {url} at {cron!r}")


# -- qstash-schedules -----------------------------------------------------------------

#: The prefix of the QStash schedule ids ``qstash-schedules`` manages (and may delete).
SCHEDULE_ID_PREFIX = "hookflow-schedule-"


def _schedule_id(name: str) -> str:
    """The QStash schedule id of a workflow schedule: the prefix and its name, made safe."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    if safe != name:  # keep two names that only differ in unsafe characters apart
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return SCHEDULE_ID_PREFIX + safe


def _qstash_schedules_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="Say what would change; change nothing."
    )


@subcommand(
    "qstash-schedules",
    "Create, update and delete the QStash schedules of the workflows' cron schedules.",
    _qstash_schedules_arguments,
)
def _qstash_schedules(command: Command, options: dict[str, Any]) -> None:
    import httpx
    from qstash.errors import QStashError

    from hookflow_gen._workflow import registered_schedules
    from hookflow_gen.django._qstash import QStashScheduler

    scheduler = _runtime().scheduler
    if not isinstance(scheduler, QStashScheduler):
        raise CommandError("qstash-schedules needs HOOKFLOW['SCHEDULER'] = 'qstash'")
    dry_run: bool = options["dry_run"]
    wanted: dict[str, tuple[str, str, str]] = {}
    for _, schedule in registered_schedules():
        name = str(schedule.name)
        if len(schedule.cron.split()) != 5:
            raise CommandError(
                f"schedule {name!r}: QStash takes five-field cron expressions, not "
                f"{schedule.cron!r} (seconds run on the database scheduler only)"
            )
        try:
            url = scheduler.schedule_url(name)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        wanted[_schedule_id(name)] = (name, url, schedule.cron)
    write = command.stdout.write
    prefix = "would be " if dry_run else ""
    try:
        client = scheduler.client
        existing = {
            s.schedule_id: s
            for s in client.schedule.list()
            if s.schedule_id.startswith(SCHEDULE_ID_PREFIX)
        }
        for schedule_id, (name, url, cron) in wanted.items():
            found = existing.get(schedule_id)
            if found is not None and found.destination == url and found.cron == cron:
                write(f"schedule {name!r}: unchanged ({schedule_id}, {cron!r})")
                continue
            if not dry_run:
                # Creating with the same id replaces the schedule: running this again is safe.
                client.schedule.create(
                    destination=url, cron=cron, schedule_id=schedule_id, body="{}",
                    content_type="application/json",
                )  # fmt: skip
            verb = "updated" if found is not None else "created"
            write(f"schedule {name!r}: {prefix}{verb} ({schedule_id}, {cron!r} -> {url})")
        for schedule_id in sorted(set(existing) - set(wanted)):
            if not dry_run:
                client.schedule.delete(schedule_id)
            write(f"schedule {schedule_id}: {prefix}deleted (no workflow has it any more)")
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except (QStashError, httpx.HTTPError) as exc:
        raise CommandError(f"QStash refused: {exc}") from None
    if not wanted and not existing:
        write("no schedules (pass @workflow(schedule=...) to add one)")
