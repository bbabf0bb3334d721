"""Upstash Workflow for Python beside hookflow_gen, end to end through the same QStash server.

Both engines run the same linear workflow of ``n`` steps (each adds one to a
running total) over real HTTP through one in-process QStash-compatible
server (``hookflow_gen.testing.qstash.QStashServer``), started the way each
documents:

- hookflow_gen: ``linear.start(Count(n=...))`` with the ``qstash`` scheduler,
  a threaded Django server answering the webhook (temporary SQLite file);
- Upstash Workflow 2.0: a Flask app served by ``upstash_workflow.flask``, its
  ``qstash.Receiver`` verifying every request, triggered by a message
  published to the endpoint through QStash.

Rounds are interleaved (for each round, each ``n``, each engine once), so
drift on a shared machine hits both alike. Per run it reports what the
server counted: messages published (what QStash bills), bytes delivered to
the endpoints (every attempt's body), the largest delivery, and the wall
time from start to the run's end. Run it in its own process (it configures
Django)::

    uv run python benchmarks/upstash_workflow_peer.py [--rounds 3] [--big-rounds 1]

The suite can call :func:`measure` and format the rows itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

__all__ = ["RunFigures", "measure", "table"]

ENGINES = ("hookflow_gen", "upstash-workflow")


@dataclass(frozen=True)
class RunFigures:
    """What one run of one engine cost, as the QStash server counted it."""

    engine: str
    n: int
    messages: int
    delivered_bytes: int
    largest_delivery: int
    wall_s: float


def _setup_django(database: Path) -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
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
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _serve_django() -> tuple[Any, threading.Thread, str]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        # Headers and body leave in two writes: without this, Nagle's algorithm
        # holds the body for the client's delayed ACK (~40 ms) on every answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}"


def _serve_upstash(qstash: Any) -> tuple[Any, threading.Thread, str]:
    """A Flask app with the same linear workflow, written with the Upstash Workflow SDK."""
    import logging

    from flask import Flask
    from qstash import QStash, Receiver
    from upstash_workflow.flask import Serve
    from werkzeug.serving import WSGIRequestHandler, make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = Flask("upstash_peer")
    serve = Serve(app)

    @serve.route(
        "/linear",
        qstash_client=QStash(qstash.token, base_url=qstash.url),
        receiver=Receiver(
            current_signing_key=qstash.current_signing_key,
            next_signing_key=qstash.next_signing_key,
        ),
        env={},
    )
    def linear(context: Any) -> None:
        total = 0
        for i in range(context.request_payload["n"]):
            current = total
            total = context.run(f"step-{i}", lambda current=current: current + 1)

    class Quiet(WSGIRequestHandler):
        # As for the Django server: no Nagle delay between headers and body.
        disable_nagle_algorithm = True

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_port}/linear"


def _wait_for_run_end(qstash: Any, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in qstash.workflow_runs() if r.url == url]
        if runs and runs[-1].state != "RUN_STARTED":
            if runs[-1].state != "RUN_SUCCESS":
                raise RuntimeError(f"the Upstash Workflow run ended as {runs[-1].state}")
            return
        time.sleep(0.002)
    raise TimeoutError(f"the Upstash Workflow run did not end in {timeout}s")


def measure(
    ns: tuple[int, ...] = (10, 100, 1000), rounds: int = 3, big_rounds: int = 1
) -> list[RunFigures]:
    """Run both engines ``rounds`` times for each ``n``, interleaved; one row per run.

    An ``n`` of 1,000 or more runs only in the first ``big_rounds`` rounds: a
    1,000-step Upstash Workflow run takes minutes (each of its ~1,000
    deliveries carries and re-parses the whole step list). Configures Django
    in this process (once) on a temporary SQLite file.
    """
    from qstash import QStash

    from hookflow_gen.testing.qstash import QStashServer

    figures: list[RunFigures] = []
    with tempfile.TemporaryDirectory() as tmp:
        _setup_django(Path(tmp) / "bench.sqlite3")
        from tests.e2e import flows

        from hookflow_gen._client import use_runtime
        from hookflow_gen.django import build_runtime, get_settings
        from hookflow_gen.django._qstash import QStashScheduler

        qstash = QStashServer(time_scale=1.0).start()
        django_server, django_thread, site = _serve_django()
        flask_server, flask_thread, workflow_url = _serve_upstash(qstash)
        publisher = QStash(qstash.token, base_url=qstash.url)
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
        try:
            with use_runtime(runtime):
                for round_number in range(rounds):
                    for n in ns:
                        if n >= 1000 and round_number >= big_rounds:
                            continue
                        for engine in ENGINES:
                            qstash.wait_idle(timeout=120)
                            qstash.reset()
                            started = time.perf_counter()
                            if engine == "hookflow_gen":
                                handle = flows.linear.start(flows.Count(n=n))
                                result = handle.result(wait=1200, poll=0.002)
                                if result != n:
                                    raise RuntimeError(f"hookflow_gen returned {result}, not {n}")
                            else:
                                publisher.message.publish_json(url=workflow_url, body={"n": n})
                                _wait_for_run_end(qstash, workflow_url, timeout=1200)
                            wall = time.perf_counter() - started
                            qstash.wait_idle(timeout=120)
                            stats = qstash.stats
                            figures.append(
                                RunFigures(
                                    engine=engine,
                                    n=n,
                                    messages=stats.published,
                                    delivered_bytes=stats.delivered_bytes,
                                    largest_delivery=stats.largest_delivery,
                                    wall_s=wall,
                                )
                            )
                            print(
                                f"  {engine} n={n}: {stats.published} messages, "
                                f"{stats.delivered_bytes} B delivered, {wall:.3f} s",
                                file=sys.stderr,
                                flush=True,
                            )
        finally:
            qstash.stop()
            scheduler.close()
            runtime.close()
            for server, thread in ((django_server, django_thread), (flask_server, flask_thread)):
                server.shutdown()
                server.server_close()
                thread.join()
    return figures


def table(figures: list[RunFigures]) -> str:
    """A Markdown table: medians per engine and ``n``, and the wall-time ratio."""
    lines = [
        "| n | engine | runs | messages/run | bytes delivered/run | largest message (B) "
        "| wall ms/run (median) | vs hookflow_gen |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({f.n for f in figures}):
        medians: dict[str, float] = {}
        for engine in ENGINES:
            runs = [f for f in figures if f.n == n and f.engine == engine]
            if not runs:
                continue
            wall = statistics.median(f.wall_s for f in runs)
            medians[engine] = wall
            base = medians.get("hookflow_gen")
            ratio = f"{wall / base:.1f}x" if base else "-"
            lines.append(
                f"| {n} | {engine} | {len(runs)} "
                f"| {statistics.median(f.messages for f in runs):g} "
                f"| {statistics.median(f.delivered_bytes for f in runs):,.0f} "
                f"| {max(f.largest_delivery for f in runs):,} "
                f"| {wall * 1000:,.1f} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--big-rounds", type=int, default=1, help="rounds that include n >= 1000 (default 1)"
    )
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="steps per run (default 10 100 1000)",
    )
    arguments = parser.parse_args()
    figures = measure(tuple(arguments.n), arguments.rounds, arguments.big_rounds)
    print(table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
