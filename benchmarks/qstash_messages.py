"""QStash messages, bytes and wall time per workflow run, end to end over real HTTP.

Runs 10-, 100- and 1,000-step linear workflows and a 100-step one with three
one-second sleeps through a threaded Django server and the in-process
QStash-compatible server, published with the real ``qstash`` client, on a
temporary SQLite database. Prints a Markdown table::

    uv run python benchmarks/qstash_messages.py [--runs 3]

Expected: one message per linear run (its start), one more per sleep, event
or call; bytes per message constant whatever the number of steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup_django(database: Path) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        USE_TZ=True,
        TIME_ZONE="UTC",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.contenttypes", "hookflow_gen.django"],
        ROOT_URLCONF="tests.e2e.flows",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(database),
                "OPTIONS": {
                    "transaction_mode": "IMMEDIATE",
                    "timeout": 20,
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                },
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        HOOKFLOW={"SCHEDULER": "database", "AUTODISCOVER": None},
    )
    django.setup()


def _serve() -> tuple[Any, threading.Thread, str]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    port = server.server_address[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="QStash messages, bytes and wall time per workflow run, end to end."
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per workflow (default 3)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _setup_django(Path(tmp) / "bench.sqlite3")
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        return _measure(arguments.runs)


def _measure(runs: int) -> int:
    from tests.e2e import flows

    from hookflow_gen._client import use_runtime
    from hookflow_gen.django import build_runtime, get_settings
    from hookflow_gen.django._qstash import QStashScheduler
    from hookflow_gen.testing.qstash import QStashServer

    server, thread, site = _serve()
    # time_scale=1: sleeps are real, so QStash must deliver them on time.
    qstash = QStashServer(time_scale=1.0).start()
    scheduler = QStashScheduler(
        {
            "TOKEN": qstash.token,
            "URL": qstash.url,
            "CURRENT_SIGNING_KEY": qstash.current_signing_key,
            "NEXT_SIGNING_KEY": qstash.next_signing_key,
            "BASE_URL": site,
        }
    )
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    cases: list[tuple[str, Any, int, int]] = [
        ("linear", flows.linear, 10, 0),
        ("linear", flows.linear, 100, 0),
        ("linear", flows.linear, 1000, 0),
        ("mixed (3 sleeps of 1 s)", flows.mixed, 100, 3),
    ]
    rows: list[str] = []
    try:
        with use_runtime(runtime):
            for label, definition, steps, _sleeps in cases:
                messages: list[int] = []
                sizes: list[int] = []
                walls: list[float] = []
                for _ in range(runs):
                    qstash.wait_idle(timeout=60)
                    qstash.reset()
                    started = time.perf_counter()
                    handle = definition.start(flows.Count(n=steps))
                    result = handle.result(wait=600, poll=0.005)
                    walls.append(time.perf_counter() - started)
                    assert result == steps, (result, steps)
                    qstash.wait_idle(timeout=60)
                    stats = qstash.stats
                    messages.append(stats.published)
                    sizes.append(stats.published_bytes)
                per_run = statistics.mean(messages)
                bytes_run = statistics.mean(sizes)
                rows.append(
                    f"| {label} | {steps} | {runs} | {per_run:g} | "
                    f"{bytes_run / per_run:.0f} | {bytes_run:.0f} | "
                    f"{statistics.median(walls) * 1000:.0f} | "
                    f"{statistics.median(walls) * 1000 / steps:.2f} |"
                )
    finally:
        qstash.stop()
        scheduler.close()
        runtime.close()
        server.shutdown()
        server.server_close()
        thread.join()
    print("| workflow | steps | runs | messages/run | bytes/message | bytes/run "
          "| wall ms/run (median) | wall ms/step |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
