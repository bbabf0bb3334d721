"""The QStash transport under crashes and faults: a real web server process, killed at will.

The site is ``tests/manage.py runserver`` in a subprocess (threaded, like a
production server), behind the local QStash-compatible server, which
delivers every message twice at once and once more after, and drops some
answers. Publishes go through a proxy that refuses some (QStash down) and
loses the answer of others (QStash accepted, the site never heard). A
killer SIGKILLs the web server while a step is in flight and starts it
again; the sweep is called through QStash every second, as the schedule
``manage.py hookflow qstash-schedule`` creates would. Every run must
complete once with the right result, every atomic step's row exist exactly
once, and a plain step run again only if a kill interrupted it.

The small configuration runs with the suite; a larger one::

    HOOKFLOW_CHAOS_RUNS=40 HOOKFLOW_CHAOS_KILLS=12 uv run pytest tests/e2e/test_qstash_chaos.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from django.db import connection
from django.db.models import Q
from qstash import QStash

from hookflow_gen._client import use_runtime
from hookflow_gen._store import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.django.models import Run, Step
from hookflow_gen.testing.qstash import QStashServer
from tests.djangoapp.models import Entry, Execution
from tests.e2e import chaos_flows

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.e2e.chaos_flows"),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("HOOKFLOW_CHAOS_RUNS", "6"))
KILLS = int(os.environ.get("HOOKFLOW_CHAOS_KILLS", "2"))
SEED = int(os.environ.get("HOOKFLOW_CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the publish proxy: QStash down, or an answer lost ------------------------------------


@dataclass
class ProxyCounts:
    """What the proxy did to publishes."""

    forwarded: int = 0
    refused: int = 0
    answer_lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, rng: random.Random) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.rng = rng
        self.counts = ProxyCounts()
        self.client = httpx.Client(timeout=30)


class _ProxyHandler(BaseHTTPRequestHandler):
    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proxy = cast("_Proxy", self.server)
        fault = "none"
        if self.command == "POST" and self.path.startswith("/v2/publish/"):
            with proxy.counts.lock:
                roll = proxy.rng.random()
                if roll < 0.08:
                    fault = "refuse"
                    proxy.counts.refused += 1
                elif roll < 0.14:
                    fault = "lose"
                    proxy.counts.answer_lost += 1
                else:
                    proxy.counts.forwarded += 1
        if fault == "refuse":
            self._reply(503, b'{"error": "injected: QStash is unavailable"}')
            return
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
        }
        upstream = proxy.client.request(
            self.command, proxy.upstream + self.path, headers=headers, content=body
        )
        if fault == "lose":
            self._reply(502, b'{"error": "injected: the answer was lost"}')
            return
        self._reply(upstream.status_code, upstream.content)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Echo(BaseHTTPRequestHandler):
    """The call steps' target, in this process: it stays up while the site is killed."""

    def do_POST(self) -> None:
        data = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        body = json.dumps({"echoed": str(data.get("text"))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- the site process -------------------------------------------------------------------


class Site:
    """The web server under test: started, SIGKILLed and started again on one port."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "manage.py"),
                    "runserver",
                    "--noreload",
                    "--skip-checks",
                    f"127.0.0.1:{self.port}",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the site exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/hookflow/qstash/", timeout=2).status_code == 405:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the site did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (nothing it had in flight is finished or answered)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Kill and reap the server."""
        self.kill()
        self.process = None


@dataclass
class Chaos:
    """Everything one run of the suite set up."""

    site: Site
    qstash: QStashServer
    proxy: _Proxy
    rng: random.Random
    echo_url: str


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    """The QStash server, the publish proxy, the site process and a runtime to start runs."""
    rng = random.Random(SEED)
    server = QStashServer(time_scale=1.0, workers=16, delivery_timeout=20).start()
    proxy = _Proxy(server.url, rng)
    proxy_thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    proxy_thread.start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.e2e.chaos_settings",
            "HOOKFLOW_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            "HOOKFLOW_CHAOS_TOKEN": server.token,
            "HOOKFLOW_CHAOS_QSTASH_URL": proxy_url,
            "HOOKFLOW_CHAOS_CURRENT_KEY": server.current_signing_key,
            "HOOKFLOW_CHAOS_NEXT_KEY": server.next_signing_key,
            "HOOKFLOW_CHAOS_BASE_URL": f"http://127.0.0.1:{port}",
        }
    )
    site = Site(env, port, tmp_path / "site.log")
    scheduler = QStashScheduler(
        {
            "TOKEN": server.token,
            "URL": proxy_url,
            "CURRENT_SIGNING_KEY": server.current_signing_key,
            "NEXT_SIGNING_KEY": server.next_signing_key,
            "BASE_URL": site.url,
            "PUBLISH_RETRIES": 0,
        }
    )
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    try:
        site.start()
        with use_runtime(runtime):
            yield Chaos(site, server, proxy, rng, f"http://127.0.0.1:{echo.server_address[1]}/")
    finally:
        echo.shutdown()
        echo.server_close()
        site.stop()
        server.stop()
        proxy.shutdown()
        proxy.server_close()
        proxy.client.close()
        scheduler.close()
        runtime.close()


def _in_flight() -> list[tuple[str, int]]:
    return list(Execution.objects.filter(finished=0).values_list("run_id", "position"))


def test_runs_complete_once_through_kills_duplicates_and_lost_publishes(chaos: Chaos) -> None:
    """Every run completes once, right; atomic rows exactly once; re-runs only if killed."""
    qs, site, rng = chaos.qstash, chaos.site, chaos.rng
    hooks = f"{site.url}/hookflow/"
    qs.faults.concurrent_copies(None, copies=2, url=hooks)
    qs.faults.duplicate_next(None, copies=1, url=hooks)
    qs.faults.drop_answer(max(2, RUNS // 2), url=hooks)
    started = time.monotonic()
    handles = [
        chaos_flows.mix.start(
            chaos_flows.Chaos(index=i, delay=rng.uniform(0.05, 0.3), echo_url=chaos.echo_url)
        )
        for i in range(RUNS)
    ]
    ids = [handle.run_id for handle in handles]
    # The sweep, as the QStash schedule would call it (a schedule is a message a minute;
    # here one a second, so the suite does not wait minutes for a repair).
    sweeper = QStash(qs.token, base_url=qs.url)
    stop = threading.Event()

    def sweeps() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):
                sweeper.message.publish_json(url=f"{hooks}qstash/sweep/", body={}, retries=0)

    sweep_thread = threading.Thread(target=sweeps, daemon=True)
    sweep_thread.start()
    kills = 0
    interrupted: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 120 + 8 * RUNS
    try:
        while kills < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.5))
            while not _in_flight() and time.monotonic() < deadline:
                if Run.objects.filter(pk__in=ids, status="running").count() == 0:
                    break
                time.sleep(0.01)
            flight = _in_flight()
            if not flight:
                break  # everything finished before the next kill
            site.kill()  # mid-step: a step of this site is in flight
            # With the process dead, every unfinished row was cut short; a step that
            # returned just before the kill may have lost its checkpoint too.
            killed_at = time.time()
            interrupted.update(
                Execution.objects.filter(
                    Q(finished=0) | Q(finished__gt=killed_at - 2.0)
                ).values_list("run_id", "position")
            )
            kills += 1
            site.start()
        while Run.objects.filter(pk__in=ids, status="running").exists():
            if time.monotonic() > deadline:
                stuck = list(Run.objects.filter(pk__in=ids, status="running").values_list(
                    "run_id", "wake_at", "wake_seq"))  # fmt: skip
                raise AssertionError(f"runs still running: {stuck}\n{site.log.read_text()[-4000:]}")
            time.sleep(0.1)
    finally:
        stop.set()
        sweep_thread.join(timeout=10)
    elapsed = time.monotonic() - started

    for index, handle in enumerate(handles):
        failed = Run.objects.filter(pk=handle.run_id, status="failed").values_list(
            "error", flat=True
        )
        assert handle.status is RunStatus.COMPLETED, (
            handle.run_id,
            list(failed),
            list(Step.objects.filter(run_id=handle.run_id).values_list("name", "status", "error")),
        )
        assert handle.result() == chaos_flows.expected(index)
    labels = list(Entry.objects.values_list("label", flat=True))
    wanted = sorted(f"{run_id}:{name}" for run_id in ids for name in chaos_flows.ATOMIC_STEPS)
    assert sorted(label for label in labels if label.split(":")[0] in ids) == wanted
    # A step whose lease lapsed before its checkpoint (a slow tick on a loaded
    # machine) is claimed again by design; the runtime logs each such case.
    lapsed = _lapsed_steps(site.log.read_text(errors="replace"))
    extra = 0
    for (run_id, position), count in _execution_counts(ids).items():
        if count > 1:
            why = (run_id, position) in interrupted or (run_id, position) in lapsed
            assert why, (run_id, position, count)
            extra += count - 1
    stats = qs.stats
    dead: dict[str, int] = {}
    for entry in qs.dlq():
        kind = entry.message.url.removeprefix(hooks).partition("?")[0] or "qstash/"
        key = f"{kind}:{entry.response_status}"
        dead[key] = dead.get(key, 0) + 1
    counts = chaos.proxy.counts
    print(
        f"\nQStash chaos (seed {SEED}): {RUNS} runs completed in {elapsed:.1f}s through "
        f"{kills} SIGKILLs mid-step; {stats.attempts} delivery attempts "
        f"({stats.delivered} delivered, {stats.failed} dead-lettered, left in the DLQ {dead}); "
        f"{counts.refused} publishes refused and {counts.answer_lost} answers lost of "
        f"{counts.forwarded + counts.refused + counts.answer_lost}; "
        f"{extra} plain-step re-runs (each after a kill or a logged lease lapse: "
        f"{len(lapsed)} lapses); atomic rows exactly once"
    )


_LAPSE = re.compile(r"run (\w+): the lease on step '(.+?)' lapsed before it finished")


def _lapsed_steps(log: str) -> set[tuple[str, int]]:
    """(run, position) of the steps whose lease lapsed before their checkpoint, from the log."""
    found: set[tuple[str, int]] = set()
    for run_id, name in _LAPSE.findall(log):
        for position in Step.objects.filter(run_id=run_id, name=name).values_list(
            "position", flat=True
        ):
            found.add((run_id, position))
    return found


def _execution_counts(ids: list[str]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for run_id, position in Execution.objects.filter(run_id__in=ids).values_list(
        "run_id", "position"
    ):
        counts[(run_id, position)] = counts.get((run_id, position), 0) + 1
    return counts
