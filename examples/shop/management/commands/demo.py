"""``python examples/manage.py demo``: the example shop, end to end, in under a minute.

It creates a fresh SQLite database, starts two ``hookflow worker`` processes
(the embedded database scheduler), starts a few runs, shows their progress
as the workers move them on, sends the event one of them waits for, and
prints each typed result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.urls import reverse

from hookflow_gen import RunHandle, RunStatus, StepStatus, notify
from shop.models import EmailMessage, Payment, StockReservation
from shop.workflows import (
    EmailVerified,
    OrderRequest,
    ReportRequest,
    Signup,
    onboarding,
    order_saga,
    sales_report,
    verification_key,
)

MARK = {StepStatus.COMPLETED: "ok", StepStatus.FAILED: "FAILED", StepStatus.PENDING: "..."}


class Command(BaseCommand):
    help = "Run the example shop's workflows end to end on SQLite with two workers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=2, help="Worker processes (default 2).")
        parser.add_argument(
            "--timeout", type=float, default=90, help="Give up after this many seconds."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._fresh_database()
        workers = [self._spawn_worker() for _ in range(options["workers"])]
        try:
            self._run(options["timeout"], workers)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()

    def _fresh_database(self) -> None:
        name = Path(str(settings.DATABASES["default"]["NAME"]))
        connections.close_all()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
        call_command("migrate", verbosity=0)
        self.stdout.write(f"database: {name} (SQLite), scheduler: database")

    def _spawn_worker(self) -> subprocess.Popen[bytes]:
        manage = Path(__file__).resolve().parents[3] / "manage.py"
        return subprocess.Popen(
            [sys.executable, str(manage), "hookflow", "--verbosity", "0", "worker"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _run(self, timeout: float, workers: list[subprocess.Popen[bytes]]) -> None:
        started = time.monotonic()
        handles: dict[str, RunHandle[Any]] = {
            "order 1001": order_saga.start(
                OrderRequest(
                    order_id=1001,
                    email="ada@example.com",
                    sku="TEA-1KG",
                    quantity=2,
                    amount_cents=2400,
                    address="1 Main Street, Springfield",
                )
            ),
            "order 1002": order_saga.start(
                OrderRequest(
                    order_id=1002,
                    email="bob@example.com",
                    sku="MUG",
                    quantity=1,
                    amount_cents=900,
                    address="Nowhere Island",
                )
            ),
            "onboard ada": onboarding.start(
                Signup(email="ada@example.com", nudge_after_seconds=2, verify_within_seconds=30)
            ),
            "onboard bob": onboarding.start(
                Signup(email="bob@example.com", nudge_after_seconds=1, verify_within_seconds=3)
            ),
            "sales report": sales_report.start(
                ReportRequest(
                    day=date(2026, 11, 25),
                    regions=["north", "south", "east", "west", "central", "online"],
                )
            ),
        }
        self.stdout.write(f"started {len(handles)} runs; {len(handles)} workflows in flight\n")
        shown: dict[str, str] = {}
        verified = False
        while True:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise CommandError(f"the demo did not finish within {timeout:.0f}s")
            if any(worker.poll() is not None for worker in workers):
                raise CommandError("a worker process exited; see its output above")
            for label, handle in handles.items():
                line = self._progress(handle)
                if shown.get(label) != line:
                    shown[label] = line
                    self.stdout.write(f"[{elapsed:5.1f}s] {label:<13} {line}")
            if not verified and self._waiting_for_event(handles["onboard ada"]):
                delivered = notify(
                    verification_key("ada@example.com"), EmailVerified(email="ada@example.com")
                )
                self.stdout.write(
                    f"[{elapsed:5.1f}s] ada clicked the verification link "
                    f"(event delivered to {delivered} run)"
                )
                verified = True
            if all(h.status.finished for h in handles.values()):
                break
            time.sleep(0.2)
        self._report(handles, time.monotonic() - started)

    @staticmethod
    def _progress(handle: RunHandle[Any]) -> str:
        steps = " ".join(f"{r.name}:{MARK[r.status]}" for r in handle.steps())
        return f"{handle.status.value:<9} {steps}"

    @staticmethod
    def _waiting_for_event(handle: RunHandle[Any]) -> bool:
        return any(r.kind == "event" and r.status is StepStatus.PENDING for r in handle.steps())

    def _report(self, handles: dict[str, RunHandle[Any]], elapsed: float) -> None:
        self.stdout.write(f"\nall runs finished in {elapsed:.1f}s; results:")
        for label, handle in handles.items():
            if handle.status is RunStatus.COMPLETED:
                self.stdout.write(f"- {label}: {handle.result()!r}")
            else:
                self.stdout.write(f"- {label}: {handle.status.value}")
        report = handles["sales report"].result()
        self.stdout.write(f"\nsales report for {report.day}:\n{report.table}")
        self.stdout.write(
            f"\nside effects: {Payment.objects.count()} payments "
            f"({Payment.objects.filter(refunded=True).count()} refunded), "
            f"{StockReservation.objects.filter(released=False).count()} stock reservations held, "
            f"{EmailMessage.objects.count()} e-mails sent"
        )
        self.stdout.write("inspect the runs: python examples/manage.py hookflow runs")
        first = handles["order 1001"].run_id
        self.stdout.write(
            "or see each run's timeline in the admin: python examples/manage.py createsuperuser, "
            "python examples/manage.py runserver, then open\n"
            f"  http://127.0.0.1:8000{reverse('admin:hookflow_run_change', args=[first])}"
        )
