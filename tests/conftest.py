"""Shared fixtures: runtimes on the Django store with a fake clock, an in-process worker."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from hookflow_gen._client import use_runtime
from hookflow_gen._scheduler import DatabaseScheduler, InlineScheduler
from hookflow_gen.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hookflow_gen._runtime import Runtime

POSTGRES = os.environ.get("HOOKFLOW_TEST_DB", "sqlite") == "postgres"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that turns the durability invariant's checks off for a test."""
    config.addinivalue_line(
        "markers",
        "no_invariant: the test builds a state that breaks the durability invariant on purpose",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.postgres`` tests unless ``HOOKFLOW_TEST_DB=postgres``."""
    if POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs HOOKFLOW_TEST_DB=postgres")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _durability_invariant(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Check the durability invariant after every commit of the test (see ``_invariant.py``).

    ``@pytest.mark.no_invariant`` opts a test out. A violation fails the test
    in its call phase (``pytest_runtest_call`` below), so an ``xfail`` covers it.
    """
    from tests import _invariant

    _invariant.VIOLATIONS.clear()
    _invariant.set_enabled(request.node.get_closest_marker("no_invariant") is None)
    _invariant.wrap_memory_store(monkeypatch.setattr)
    yield
    _invariant.VIOLATIONS.clear()
    _invariant.set_enabled(True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test after which some commit left a RUNNING run with no way to be ticked.

    ``HOOKFLOW_TEST_INVARIANT=report`` only logs violations.
    """
    from tests import _invariant

    yield
    found = list(_invariant.VIOLATIONS)
    _invariant.VIOLATIONS.clear()
    if found and os.environ.get("HOOKFLOW_TEST_INVARIANT", "strict") != "report":
        raise AssertionError("durability invariant violated after a commit:\n" + "\n".join(found))


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when told to (or when a worker sleeps on it)."""
    return FakeClock()


def _runtime(clock: FakeClock, *, inline: bool) -> Runtime:
    from hookflow_gen.django import build_runtime, get_settings
    from tests._invariant import InvariantStore

    scheduler = InlineScheduler() if inline else DatabaseScheduler()
    runtime = build_runtime(get_settings(), clock=clock, scheduler=scheduler)
    if isinstance(runtime.store, InvariantStore):
        runtime.store.clock = clock  # leases are checked against the runtime's clock
    return runtime


@pytest.fixture
def runtime(clock: FakeClock) -> Iterator[Runtime]:
    """The current runtime: DjangoStore, the database scheduler, the fake clock."""
    runtime = _runtime(clock, inline=False)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


@pytest.fixture
def inline_runtime(clock: FakeClock) -> Iterator[Runtime]:
    """The current runtime: DjangoStore, the inline scheduler, the fake clock."""
    runtime = _runtime(clock, inline=True)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


def run_worker(
    runtime: Runtime, *, until_idle: float = 30 * 86400, max_ticks: int = 500, once: bool = False
) -> int:
    """Run the database worker loop in this process until no run is due; ticks run.

    With a fake clock, the worker's idle waits move the clock to the next
    wake-up, so timers within ``until_idle`` seconds fire at once.
    """
    from hookflow_gen.django._worker import Worker

    worker = Worker(runtime, poll_interval=until_idle)
    return worker.run(once=once, until_idle=until_idle, max_ticks=max_ticks)
