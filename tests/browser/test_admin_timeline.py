"""The admin in headless Chromium: the runs list and a run page of each kind.

Each page is loaded by Debian's ``chromium`` from the live test server; the
test reads what it shows from ``--dump-dom`` and takes a ``--screenshot``
(into a temporary folder, or into ``HOOKFLOW_SCREENSHOTS`` when that names a
folder: ``HOOKFLOW_SCREENSHOTS=docs/admin`` refreshes the README's pictures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from hookflow_gen import notify
from hookflow_gen.django.models import Run
from tests.browser import flows
from tests.browser.urls import USERNAME
from tests.conftest import run_worker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_django.live_server_helper import LiveServer

    from hookflow_gen._runtime import Runtime
    from hookflow_gen.testing import FakeClock

# Debian's package; HOOKFLOW_CHROMIUM names another Chromium or Chrome binary.
CHROMIUM = Path(os.environ.get("HOOKFLOW_CHROMIUM", "/usr/bin/chromium"))
WIDTH = 1400

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)",
    ),
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.browser.urls"),
]


class _Page(HTMLParser):
    """A dumped DOM: its text, the text under each ``id``, and every ``<meta>``."""

    VOID = frozenset(
        {
            "area",
            "base",
            "br",
            "col",
            "embed",
            "hr",
            "img",
            "input",
            "link",
            "meta",
            "source",
            "wbr",
        }
    )

    def __init__(self, html: str) -> None:
        super().__init__()
        self.html = html
        self.by_id: dict[str, str] = {}
        self.metas: list[dict[str, str]] = []
        self._open: list[str | None] = []
        self._text: list[str] = []
        self._raw = False  # inside <script> or <style>
        self.feed(html)
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self._raw = tag in ("script", "style")
        if tag == "meta":
            self.metas.append(found)
        if tag in self.VOID:
            if "id" in found:
                self.by_id[found["id"]] = ""
            return
        element_id = found.get("id")
        self._open.append(element_id)
        if element_id is not None:
            self.by_id[element_id] = ""

    def handle_endtag(self, tag: str) -> None:
        self._raw = False
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._raw:
            return
        self._text.append(data)
        for element_id in self._open:
            if element_id is not None:
                self.by_id[element_id] += data

    def get(self, element_id: str) -> str:
        """The text under the element with ``element_id``, whitespace collapsed."""
        return " ".join(self.by_id[element_id].split())


def _chromium(*args: str, height: int = 900) -> str:
    profile = tempfile.mkdtemp(prefix="hookflow-chromium-")
    try:
        done = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{height}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``HOOKFLOW_SCREENSHOTS`` if set, else a temporary folder."""
    target = os.environ.get("HOOKFLOW_SCREENSHOTS")
    folder = Path(target) if target else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """Loads admin pages as the logged-in superuser."""

    def __init__(self, base: str, shots: Path) -> None:
        self.base = base
        self.shots = shots

    def _url(self, page: str) -> str:
        return f"{self.base}/test-login/?next={quote(page, safe='/')}"

    def dom(self, page: str) -> _Page:
        """The page's DOM after load."""
        return _Page(_chromium("--dump-dom", self._url(page)))

    def screenshot(self, page: str, name: str, height: int) -> Path:
        """A ``WIDTH`` x ``height`` screenshot of the page."""
        path = self.shots / f"{name}.png"
        path.unlink(missing_ok=True)
        _chromium(f"--screenshot={path}", self._url(page), height=height)
        assert _png_size(path) == (WIDTH, height)
        return path

    def overflow(self, page: str) -> dict[str, Any]:
        """What scrolls sideways when ``page`` is shown ``WIDTH`` px wide."""
        probe = f"{self.base}/layout-probe/?width={WIDTH}&url={quote(page, safe='')}"
        dumped = _Page(_chromium("--dump-dom", probe))
        found: dict[str, Any] = json.loads(dumped.get("probe"))
        return found


@pytest.fixture
def browser(live_server: LiveServer, shots: Path, settings: Any) -> Browser:
    """Headless Chromium against the live server, static files served by ``tests.browser.urls``."""
    settings.STATIC_URL = "/assets/"
    return Browser(live_server.url, shots)


@pytest.fixture
def runs(runtime: Runtime, clock: FakeClock, django_user_model: Any) -> Iterator[dict[str, str]]:
    """Runs of every kind, made by the in-process worker on the fake clock."""
    django_user_model.objects.create_superuser(USERNAME, "admin@example.com", "unused")
    flows.CLOCK[:] = [clock]
    made: dict[str, str] = {}

    completed = flows.order.start(flows.Order(order_id=1001, amount_cents=2400))
    run_worker(runtime, until_idle=60)
    clock.advance(95)  # the manager takes a minute and a half
    assert notify("approve-1001", flows.Approval(approved_by="ann", note="ok")) == 1
    run_worker(runtime, until_idle=60)
    made["completed"] = completed.run_id

    failed = flows.ship.start(flows.Shipment(order_id=-7))
    run_worker(runtime, until_idle=60)
    made["failed"] = failed.run_id

    parent = flows.fulfil.start(flows.Order(order_id=3001, amount_cents=5000))
    run_worker(runtime, until_idle=60)
    made["children"] = parent.run_id

    cancelled = flows.order.start(flows.Order(order_id=1003, amount_cents=700))
    run_worker(runtime, until_idle=60)
    clock.advance(20)
    cancelled.cancel()
    made["cancelled"] = cancelled.run_id

    running = flows.order.start(
        flows.Order(order_id=1004, amount_cents=1250, approval_timeout_hours=0.05)
    )
    run_worker(runtime, until_idle=40)
    clock.advance(45)  # now: 45 s into the three-minute wait for approval
    made["running"] = running.run_id

    statuses = dict(Run.objects.filter(run_id__in=made.values()).values_list("run_id", "status"))
    assert [
        statuses[made[k]] for k in ("completed", "failed", "children", "cancelled", "running")
    ] == [
        "completed",
        "failed",
        "completed",
        "cancelled",
        "running",
    ]
    yield made
    flows.CLOCK.clear()


def _bars(html: str, position: int) -> list[tuple[str, str]]:
    """The (classes, title) of each bar drawn on step ``position``'s row, in order."""
    start = html.index(f'id="hf-step-{position}"')
    end = html.find('class="hf-row', start + 1)
    row = html[start : end if end != -1 else len(html)]
    return [
        (css.removeprefix("hf-bar ").strip(), unescape(title))
        for css, title in re.findall(r'<span class="(hf-bar [^"]*)"[^>]*title="([^"]*)"', row)
    ]


def _page(run_id: str) -> str:
    return f"/admin/hookflow/run/{quote(run_id, safe='')}/change/"


def test_runs_list_fits_1400px_and_shows_every_run(browser: Browser, runs: dict[str, str]) -> None:
    """The runs list shows every run with its status and steps and needs no sideways scroll."""
    browser.screenshot("/admin/hookflow/run/", "runs-list", 640)
    page = browser.dom("/admin/hookflow/run/")
    for run_id in runs.values():
        assert f'title="{run_id}"' in page.html  # shortened in the text, whole on hover
        assert f"{run_id[:8]}…{run_id[-6:]}" in page.text
    for header in ("run", "workflow", "status", "started", "took", "steps"):
        assert header.upper() in page.text.upper()
    assert f'title="{runs["children"]}-1"' in page.html  # a child run, listed
    assert page.text.count(f"child of {runs['children'][:8]}…") == 2
    overflow = browser.overflow("/admin/hookflow/run/")
    page_width, viewport = overflow["page"]
    assert page_width <= viewport, overflow
    for name, scroll_width, client_width in overflow["scrollers"]:
        assert scroll_width <= client_width, f"{name} scrolls sideways: {overflow}"


def test_completed_run_timeline(browser: Browser, runs: dict[str, str]) -> None:
    """A completed run shows each step's bar and humanized duration, retries and the gather."""
    browser.screenshot(_page(runs["completed"]), "run-completed", 1000)
    page = browser.dom(_page(runs["completed"]))
    assert page.get("hf-status") == "completed"
    assert "reserve-stock" in page.get("hf-step-0") and "42 ms" in page.get("hf-step-0")
    charge = page.get("hf-step-1")
    assert "2 attempts" in charge and "2.4 s" in charge  # 180 ms, 2 s back-off, 180 ms
    assert "last error: builtins.ConnectionError: payment gateway timed out" in charge
    # Each attempt is a bar of its own: the failed one, its back-off, the one that worked.
    assert _bars(page.html, 1) == [
        (
            "hf-active hf-failed hf-attempt",
            "attempt 1 failed after 180 ms: ConnectionError: payment gateway timed out",
        ),
        ("hf-backoff", "waited 2.0 s before attempt 2"),
        ("hf-active", "attempt 2"),
    ]
    assert "attempt 1 failed: ConnectionError: payment gateway timed out" in charge
    assert [css for css, _ in _bars(page.html, 0)] == ["hf-active"]  # one attempt, one bar
    assert "30 s" in page.get("hf-step-2") and "slept" in page.get("hf-step-2")
    assert "1 min 35 s" in page.get("hf-step-3")  # the manager's approval
    assert "parallel · 3 branches" in page.text
    # One worker ran the branches one after another: crm settled after 350 + 90 + 1,200 ms.
    assert "1.6 s" in page.get("hf-step-6") and "crm" in page.get("hf-step-6")
    assert "approved by ann" in page.get("hf-result")
    assert "hf-cancel" not in page.by_id and "hf-send-3" not in page.by_id
    assert not [m for m in page.metas if m.get("http-equiv") == "refresh"]


def test_running_run_refreshes_and_offers_cancel_and_send_event(
    browser: Browser, runs: dict[str, str]
) -> None:
    """A running run's page refreshes itself, draws the wait ahead and offers its buttons."""
    browser.screenshot(_page(runs["running"]), "run-running", 1060)
    page = browser.dom(_page(runs["running"]))
    assert page.get("hf-status") == "running"
    assert [m["content"] for m in page.metas if m.get("http-equiv") == "refresh"] == ["5"]
    waiting = page.get("hf-step-3")
    assert "waiting for event 'approve-1004', times out in 2 min 15 s" in waiting
    assert "45 s" in waiting
    assert "Cancel run" in page.get("hf-cancel")
    assert "Send event" in page.get("hf-send-3")
    assert "model Approval" in page.text
    assert json.loads(page.get("id_payload")) == {"approved_by": "", "note": ""}
    assert "approved_by: string" in page.text and "note: string (optional)" in page.text
    assert 'class="hf-now"' in page.html and 'class="hf-bar hf-planned"' in page.html


def test_failed_run_shows_its_traceback(
    browser: Browser, runs: dict[str, str], runtime: Runtime
) -> None:
    """A failed run shows its error and traceback, and the step that failed."""
    browser.screenshot(_page(runs["failed"]), "run-failed", 1000)
    page = browser.dom(_page(runs["failed"]))
    assert page.get("hf-status") == "failed"
    error = page.get("hf-run-error")
    assert "the courier refused the address" in error and "Traceback" in error
    step = page.get("hf-step-1")
    assert "book-courier" in step and "failed" in step and "NonRetryableError" in step
    # Resume appears once the runtime can resume runs.
    assert ("hf-resume" in page.by_id) == callable(getattr(runtime, "resume", None))


def test_cancelled_run(browser: Browser, runs: dict[str, str]) -> None:
    """A cancelled run shows the step it was cancelled in, and no buttons but delete."""
    browser.screenshot(_page(runs["cancelled"]), "run-cancelled", 820)
    page = browser.dom(_page(runs["cancelled"]))
    assert page.get("hf-status") == "cancelled"
    assert "cancelled here" in page.get("hf-step-3")
    assert "20 s" in page.get("hf-step-3")
    assert "hf-cancel" not in page.by_id and "hf-send-3" not in page.by_id
    assert "Delete" in page.text
    assert not [m for m in page.metas if m.get("http-equiv") == "refresh"]


def test_run_with_children_links_both_ways(browser: Browser, runs: dict[str, str]) -> None:
    """A parent lists and links its child runs side by side; a child links to its parent."""
    parent_id = runs["children"]
    browser.screenshot(_page(parent_id), "run-with-children", 900)
    page = browser.dom(_page(parent_id))
    assert "parallel · 2 branches" in page.text
    children = page.get("hf-children")
    assert f"{parent_id}-1" in children and f"{parent_id}-2" in children
    assert children.count("completed") == 2
    assert f'href="{_page(parent_id + "-1")}"' in page.html
    child = browser.dom(_page(f"{parent_id}-1"))
    assert child.get("hf-parent") == parent_id


def test_continued_runs_link_both_ways_and_show_their_status(
    browser: Browser, runtime: Runtime, clock: FakeClock, django_user_model: Any
) -> None:
    """Each run of a continue-as-new chain links to the next and back; the status is shown."""
    django_user_model.objects.create_superuser(USERNAME, "admin@example.com", "unused")
    flows.CLOCK[:] = [clock]
    try:
        handle = flows.sync.start(flows.Sync(account="acme"), run_id="sync-acme")
        run_worker(runtime, until_idle=60)
    finally:
        flows.CLOCK.clear()
    first = browser.dom(_page("sync-acme"))
    assert first.get("hf-status") == "continued"
    assert first.get("hf-continued-as") == "sync-acme-continued-1"
    assert json.loads(first.get("hf-custom-status")) == {"page": 1, "pages": 3, "imported": 10}
    assert "hf-continued-from" not in first.by_id and "hf-cancel" not in first.by_id
    browser.screenshot(_page("sync-acme-continued-1"), "run-continued", 760)
    middle = browser.dom(_page("sync-acme-continued-1"))
    assert middle.get("hf-continued-from") == "sync-acme"
    assert "generation 1" in middle.text
    assert middle.get("hf-continued-as") == "sync-acme-continued-2"
    last = browser.dom(_page("sync-acme-continued-2"))
    assert last.get("hf-status") == "running"
    assert last.get("hf-continued-from") == "sync-acme-continued-1"
    assert "hf-continued-as" not in last.by_id
    assert json.loads(last.get("hf-custom-status")) == {"page": 3, "pages": 3, "imported": 60}
    assert "Cancel run" in last.get("hf-cancel")
    assert handle.latest().run_id == "sync-acme-continued-2"


def test_a_run_waiting_for_an_update_offers_send_update_and_lists_its_updates(
    browser: Browser, runtime: Runtime, clock: FakeClock, django_user_model: Any
) -> None:
    """A receive step gets a Send update form (no Send event); the updates show their answers."""
    django_user_model.objects.create_superuser(USERNAME, "admin@example.com", "unused")
    flows.CLOCK[:] = [clock]
    try:
        handle = flows.account.start(flows.Limit(limit_cents=500), run_id="account-7")
        run_worker(runtime, until_idle=60)
        clock.advance(30)
        runtime.send_update(
            "account-7", flows.raise_limit, flows.Raise(amount_cents=250), "raise-from-crm"
        )
        run_worker(runtime, until_idle=60)
        clock.advance(12)
        runtime.send_update("account-7", flows.raise_limit, flows.Raise(amount_cents=-40), "typo")
        run_worker(runtime, until_idle=60)
        clock.advance(25)
    finally:
        flows.CLOCK.clear()
    assert handle.status.value == "running"
    browser.screenshot(_page("account-7"), "run-update", 1400)
    page = browser.dom(_page("account-7"))
    waiting = page.get("hf-step-6")
    assert "raise-2" in waiting and "waiting for update 'raise-limit'" in waiting
    assert "waited" in _bars(page.html, 1)[0][1] and "update 'raise-limit'" in page.get("hf-step-1")
    assert "Send update" in page.get("hf-send-update-6")
    assert "Send event" not in page.text and "hf-send-6" not in page.by_id
    form = page.get("hf-update-form-6")
    assert "Update raise-limit, request Raise, answered with Limit" in form
    assert "amount_cents: integer" in form and "reason: string (optional)" in form
    assert json.loads(page.get("id_request_6")) == {"amount_cents": 0, "reason": ""}
    answered = page.get("hf-update-raise-from-crm")
    assert "answered" in answered and '{"limit_cents": 750}' in answered
    assert "rejected: a raise must be positive" in page.get("hf-update-typo")
    assert "reply to update raise-from-crm" in page.get("hf-step-3")
    assert "reply to update typo" in page.get("hf-step-5")
    assert "result" not in page.get("hf-step-5")  # a reply's record holds no result
