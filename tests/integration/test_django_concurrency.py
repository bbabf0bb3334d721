"""Workers racing on PostgreSQL: row locks, skipped locks, leases and crashed workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from django.db import connection

from hookflow_gen import RunStatus
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django.models import Run
from tests.djangoapp.models import Execution
from tests.djangoapp.workflows import Fan, Numbers, Slow, crashy, fan_out, linear

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_env() -> dict[str, str]:
    """The environment of a worker subprocess, pointed at the test database."""
    env = dict(os.environ)
    env["HOOKFLOW_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["HOOKFLOW_TEST_POLL"] = "0.05"
    env.pop("HOOKFLOW_TEST_LEASE", None)
    return env


_started: list[subprocess.Popen[str]] = []


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "manage.py"), "hookflow", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _started.append(process)
    return process


@pytest.fixture(autouse=True)
def _reap_workers() -> Iterator[None]:
    """Kill and reap every worker a test started, even when the test failed."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def _finish(process: subprocess.Popen[str], timeout: float = 60) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def test_two_worker_processes_share_runs(worker_env: dict[str, str]) -> None:
    """Two worker processes complete 50 runs, every step exactly once, without errors."""
    handles = [linear.start(Numbers(a=i, b=1)) for i in range(50)]
    workers = [_worker(worker_env, "--until-idle", "1") for _ in range(2)]
    outputs = [_finish(process) for process in workers]
    assert all("Traceback" not in output and "ERROR" not in output for output in outputs)
    statuses = Run.objects.filter(run_id__in=[h.run_id for h in handles])
    assert set(statuses.values_list("status", flat=True)) == {"completed"}
    counts = Execution.objects.values_list("run_id", "position")
    assert len(counts) == len(set(counts)) == 100
    assert [h.result().total for h in handles] == [2 * (i + 1) for i in range(50)]
    ticked = [output.count("step(s) in") for output in outputs]
    assert sum(ticked) >= 50


def test_same_wakeup_twice_at_once_runs_steps_once() -> None:
    """Two ticks of one run at the same time (a duplicated delivery) run each step once."""
    handle = linear.start(Numbers(a=1, b=2))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def tick() -> None:
        runtime = build_runtime(get_settings())
        try:
            barrier.wait()
            runtime.tick(handle.run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            runtime.close()
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert handle.status is RunStatus.COMPLETED
    assert Execution.objects.filter(run_id=handle.run_id).count() == 2


def test_killed_worker_step_is_reclaimed_after_lease(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker killed mid-step: another completes the run after the lease, the step re-run once."""
    marker = tmp_path / "marker"
    handle = crashy.start(Slow(marker=str(marker), seconds=2))
    env = {**worker_env, "HOOKFLOW_TEST_LEASE": "3"}
    first = _worker(env)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    second = _worker(env, "--until-idle", "5")
    _finish(second)
    assert handle.result() == "done"
    assert marker.read_text().splitlines() == ["started", "started"]
    assert Execution.objects.filter(run_id=handle.run_id).count() == 1


class _Lines:
    """A worker's output, read line by line on a thread so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Return once a line containing ``text`` was printed; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    break
                self._changed.wait(left)
            found = any(text in line for line in self.lines)
        assert found, f"no line with {text!r} within {timeout}s:\n{''.join(self.lines)}"

    def finish(self, timeout: float = 60) -> str:
        """Wait for the process to exit with code 0; all it printed."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        output = "".join(self.lines)
        assert self.process.returncode == 0, output
        return output


def test_sigterm_stops_worker_gracefully(worker_env: dict[str, str]) -> None:
    """SIGTERM stops a worker that has ticked a run and gone idle cleanly (exit code 0)."""
    handle = linear.start(Numbers(a=1, b=2))
    process = _worker(worker_env)
    lines = _Lines(process)
    # A tick's log line is written from inside the worker loop, after the
    # signal handlers were installed: the worker is ready for SIGTERM.
    lines.wait_for(f"run {handle.run_id} (linear):", timeout=120)
    process.send_signal(signal.SIGTERM)
    output = lines.finish(timeout=60)
    assert "stopping" in output
    assert handle.result().total == 6


def test_gather_branches_run_on_two_workers(worker_env: dict[str, str]) -> None:
    """A 4-branch gather of 1 s steps on two workers takes about 2 s, each branch once."""
    handle = fan_out.start(Fan(width=4, delay=1.0))
    workers = [_worker(worker_env, "--until-idle", "1") for _ in range(2)]
    for process in workers:
        _finish(process)
    assert handle.result() == [0, 1, 2, 3]
    rows = list(Execution.objects.filter(run_id=handle.run_id).values_list("started", "finished"))
    assert len(rows) == 4
    span = max(end for _, end in rows) - min(start for start, _ in rows)
    assert span < 3.2, f"the branches took {span:.2f}s: they did not run in parallel"


def test_sigterm_lets_the_ticks_in_flight_finish(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM while three slow steps run on three threads: each finishes, the worker exits 0."""
    marker = tmp_path / "marker"
    handles = [crashy.start(Slow(marker=str(marker), seconds=2.0)) for _ in range(3)]
    process = _worker(worker_env, "--concurrency", "3")
    lines = _Lines(process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().count("started") == 3:
            break
        time.sleep(0.02)
    assert marker.read_text().count("started") == 3, "the three steps did not start together"
    process.send_signal(signal.SIGTERM)
    output = lines.finish(timeout=60)
    assert "stopping" in output
    assert all(handle.result() == "done" for handle in handles), output
    assert Execution.objects.filter(name="slow").count() == 3


def _scheduled_ticks() -> list[datetime]:
    from hookflow_gen._schedule import parse_tick

    ids = Run.objects.filter(workflow="scheduled-every-second").values_list("run_id", flat=True)
    return sorted(parse_tick(run_id.split("@", 1)[1]) for run_id in ids)


def _wait_for_ticks(count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(_scheduled_ticks()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_scheduled_ticks()) >= count, f"only {len(_scheduled_ticks())} scheduled runs"


def _assert_every_second_once(ticks: list[datetime]) -> None:
    """One run per second from the first tick to the last: none skipped (all caught up)."""
    expected = [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    assert ticks == expected, "a tick was skipped"
    done = Run.objects.filter(workflow="scheduled-every-second", status="completed")
    executions = Execution.objects.filter(name="note")
    for run_id in done.values_list("run_id", flat=True):
        assert executions.filter(run_id=run_id).count() == 1, f"run {run_id}: step not once"


def test_two_workers_start_each_schedule_tick_once(worker_env: dict[str, str]) -> None:
    """Every second for a while on two workers, then a restart: each tick's run exactly once."""
    env = {**worker_env, "HOOKFLOW_TEST_SCHEDULES": "1"}
    workers = [_worker(env, "--concurrency", "2") for _ in range(2)]
    lines = [_Lines(process) for process in workers]
    _wait_for_ticks(8)
    for process in workers:
        process.send_signal(signal.SIGTERM)
    for reader in lines:
        reader.finish()
    before = _scheduled_ticks()
    _assert_every_second_once(before)
    # Both workers took part: each logged runs it started.
    assert all("started run scheduled-every-second@" in "".join(r.lines) for r in lines)
    # Down for a few ticks, then one worker again: it starts each missed tick once.
    deadline = time.monotonic() + 60
    while datetime.now(UTC) < before[-1] + timedelta(seconds=3) and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted = _worker(env)
    restarted_lines = _Lines(restarted)
    _wait_for_ticks(len(before) + 5)
    restarted.send_signal(signal.SIGTERM)
    restarted_lines.finish()
    after = _scheduled_ticks()
    assert after[: len(before)] == before
    _assert_every_second_once(after)
