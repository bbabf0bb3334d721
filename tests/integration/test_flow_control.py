"""Flow control across worker processes on PostgreSQL: limits hold under races and crashes.

Each step writes its own start and end time (``Execution``); the assertions
read those rows. Set ``HOOKFLOW_FLOW_ROUNDS`` to repeat the races more often.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from django.db import connection

from hookflow_gen import RunStatus
from hookflow_gen.django.models import FlowStart, FlowWaiter, Run, Step
from tests.djangoapp.models import Execution
from tests.djangoapp.workflows import Crowd, Held, flow_crowd, flow_held, flow_rated

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("HOOKFLOW_FLOW_ROUNDS", "3"))

_started: list[subprocess.Popen[str]] = []


@pytest.fixture
def worker_env() -> dict[str, str]:
    """A worker subprocess's environment: the test database, a short lease and poll."""
    env = dict(os.environ)
    env["HOOKFLOW_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["HOOKFLOW_TEST_POLL"] = "0.05"
    env["HOOKFLOW_TEST_LEASE"] = "10"
    return env


@pytest.fixture(autouse=True)
def _reap_workers() -> Iterator[None]:
    """Kill and reap every worker a test started, even when the test failed."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "manage.py"), "hookflow", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _started.append(process)
    return process


def _stop(workers: list[subprocess.Popen[str]]) -> list[str]:
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=60)[0] for process in workers]
    for output in outputs:
        assert "Traceback" not in output, output
    return outputs


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _all_finished(run_ids: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        return not Run.objects.filter(run_id__in=run_ids, status="running").exists()

    return check


def _spans(name: str) -> list[tuple[float, float]]:
    rows = Execution.objects.filter(name=name).values_list("started", "finished")
    return sorted((float(a), float(b)) for a, b in rows)


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that overlap at one instant (an end before a start)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrency_limit_holds_across_four_workers(
    worker_env: dict[str, str], round_: int
) -> None:
    """24 runs on one key (max 2) through four workers never run more than two steps at once."""
    del round_
    handles = [flow_crowd.start(Crowd(group="g", seconds=0.15)) for _ in range(24)]
    run_ids = [h.run_id for h in handles]
    workers = [_worker(worker_env) for _ in range(4)]
    _wait_for(_all_finished(run_ids), 180, "every run to finish")
    _stop(workers)
    assert set(Run.objects.filter(run_id__in=run_ids).values_list("status", flat=True)) == {
        RunStatus.COMPLETED.value
    }
    spans = _spans("crowded")
    assert len(spans) == 24  # each step ran once
    assert _most_at_once(spans) == 2  # the limit held, and was used
    # A denied step spent no attempt.
    assert set(Step.objects.filter(run_id__in=run_ids).values_list("attempts", flat=True)) == {1}
    assert not FlowWaiter.objects.exists()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_rate_limit_holds_across_three_workers(worker_env: dict[str, str], round_: int) -> None:
    """12 runs at 3 starts per second through three workers: no second holds more than three.

    A step records its start a little after its claim; the windows checked
    are 0.2 s shorter than the period to allow for that.
    """
    del round_
    handles = [flow_rated.start(Crowd(group="r")) for _ in range(12)]
    run_ids = [h.run_id for h in handles]
    workers = [_worker(worker_env) for _ in range(3)]
    _wait_for(_all_finished(run_ids), 180, "every run to finish")
    _stop(workers)
    starts = [start for start, _ in _spans("rated")]
    assert len(starts) == 12
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 0.8, starts
    assert starts[-1] - starts[0] >= 2.8  # four windows of three: at least three periods
    assert set(Step.objects.filter(run_id__in=run_ids).values_list("attempts", flat=True)) == {1}


def test_killed_holder_frees_its_slot_after_the_lease(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker SIGKILLed in a limited step: the run waiting on the key runs once the lease ends."""
    marker = tmp_path / "marker"
    env = {**worker_env, "HOOKFLOW_TEST_LEASE": "6"}
    workers = {process.pid: process for process in (_worker(env), _worker(env))}
    holder = flow_held.start(Held(marker=str(marker), seconds=60))
    _wait_for(marker.exists, 60, "the holder's step to start")
    waiter = flow_held.start(Held(marker=str(marker), seconds=0))
    # The waiter is denied while the holder's lease is live.
    _wait_for(lambda: FlowWaiter.objects.filter(run_id=waiter.run_id).exists(), 60, "a denial")
    lease_until = Step.objects.get(run_id=holder.run_id, position=0).lease_until
    assert lease_until is not None
    run_id, pid = marker.read_text().split()
    assert run_id == holder.run_id
    killed = workers.pop(int(pid))
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=10)
    _wait_for(_all_finished([holder.run_id, waiter.run_id]), 120, "both runs to finish")
    _stop(list(workers.values()))
    assert holder.result() == waiter.result() == "done"
    (started,) = Execution.objects.filter(run_id=waiter.run_id).values_list("started", flat=True)
    assert datetime.fromtimestamp(started, lease_until.tzinfo) >= lease_until
    waited = Step.objects.get(run_id=waiter.run_id, position=0)
    assert waited.attempts == 1  # waiting for the slot spent no attempt
    assert Step.objects.get(run_id=holder.run_id, position=0).attempts == 2  # the lapsed one
    runs = [line.split()[0] for line in marker.read_text().splitlines()]
    assert runs.count(holder.run_id) == 2 and runs.count(waiter.run_id) == 1
    assert FlowStart.objects.filter(run_id=waiter.run_id).exists()
