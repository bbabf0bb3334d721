"""Drive hookflow_gen end to end in one process, with no network: the product's side.

This is the mirror of ``peers/django_hookflow_harness.py``, so the two engines
are timed through the same kind of harness in the same way.

Method
------
hookflow_gen is configured with the ``qstash`` scheduler. The scheduler
publishes through a ``qstash.QStash``-shaped client; the harness passes it a
capturing client instead (the scheduler's own ``client=`` argument), so the
product's own publish code runs unchanged: wake-up bodies, deduplication ids,
``not_before`` stamps and retries are decided by the product. The capturer
serializes the body exactly as the real client does (``json.dumps``), keeps the
bytes and the ``Upstash-*`` headers the real client would send, and honours
``deduplication_id`` (a duplicate publish is answered with the first message's
id and not delivered again).

Each captured message is POSTed in-process, in publish order, through
Django's test ``Client`` (full middleware stack and URL routing) to the URL
the product published to, with the headers QStash adds (``Upstash-Message-Id``,
``Upstash-Retried``, ``User-Agent``) and a *genuine* QStash signature made
by :func:`hookflow_gen.testing.qstash.sign` with the dev-server signing key:
the product's signature verification (``qstash.Receiver`` plus its replay
check, one ``SeenSignature`` row per delivery) stays ON and is timed.

Time is virtual, as in the peer harness: sleeps are not waited out. The
runtime gets a clock running ``offset`` seconds ahead of the wall clock;
before a message with ``Upstash-Not-Before`` is delivered, the offset is
moved so that the runtime sees the message as due. The sum of the delays
is reported separately (``virtual_delay_s``).

Persistence: hookflow_gen always keeps its journal in the database; here a
temporary SQLite file with WAL, ``synchronous=NORMAL`` and
``transaction_mode=IMMEDIATE``. django-hookflow's persistence is off by
default; with it on, its harness uses in-memory SQLite. The like-for-like
comparison is hookflow_gen against django-hookflow *with* persistence (both
keep a durable record; the peer's on a faster, non-durable database).

Workflows: ``steps`` runs n ``ctx.run`` steps, each returning the pydantic
model ``Item(i=i, value="x" * 16)``; ``mixed`` adds a 1 s ``ctx.sleep`` after
every ``sleep_every``-th step. The workflow returns the sum of the ``i`` it
got back, which the harness checks.

Run (in its own process: it configures Django)::

    uv run python benchmarks/hookflow_gen_harness.py --n 10 100 1000 --json [--mixed]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _extra in (str(_HERE / "peers"),):
    if _extra not in sys.path:
        sys.path.insert(0, _extra)

from _stats import PeerRunStats, fit_growth, to_json_dict  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from hookflow_gen import Context, Flow, workflow  # noqa: E402

ENGINE_NAME = "hookflow_gen"

# Upstash's dev-server defaults, as the peer harness uses.
QSTASH_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
QSTASH_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
QSTASH_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"

_DOMAIN = "http://testserver"
_SLEEP_SECONDS = 1

VERIFICATION_NOTE = (
    "hookflow_gen verifies every delivery: genuine QStash tokens (base64url body digest, "
    "HS256, dev-server signing key) minted by hookflow_gen.testing.qstash.sign, checked by "
    "qstash.Receiver, and each token's jti recorded against replays"
)

# Django resolves ROOT_URLCONF by module name; this module provides it.
urlpatterns: list[Any] = []


# --------------------------------------------------------------------------- workflows


class Item(BaseModel):
    """A small step result."""

    i: int
    value: str


class Steps(BaseModel):
    """The run's input: n steps, and a sleep after every ``sleep_every``-th (0: none)."""

    n: int
    sleep_every: int = 0


def make_item(i: int) -> Item:
    """The work of one step: a small pydantic model."""
    return Item(i=i, value="x" * 16)


@workflow(name="bench-e2e-steps")
def steps_workflow(ctx: Context, request: Steps) -> Flow[int]:
    """n run steps, with an optional 1 s sleep after every ``sleep_every``-th one."""
    total = 0
    for i in range(request.n):
        item = yield from ctx.run(f"step-{i}", make_item, i)
        total += item.i
        if request.sleep_every and (i + 1) % request.sleep_every == 0:
            yield from ctx.sleep(f"sleep-{i}", timedelta(seconds=_SLEEP_SECONDS))
    return total


# --------------------------------------------------------------------------- virtual time


class VirtualClock:
    """The wall clock plus an offset the harness moves forward to make delays pass."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.offset += seconds

    def reach(self, unix_seconds: float) -> None:
        """Move the offset so that ``now()`` is at least ``unix_seconds``."""
        ahead = unix_seconds - time.time()
        self.offset = max(self.offset, ahead)


# --------------------------------------------------------------------------- QStash stand-in


@dataclass
class CapturedMessage:
    """One message the product asked QStash to deliver."""

    message_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    not_before: int | None
    deduplication_id: str | None


@dataclass(frozen=True)
class _PublishResponse:
    message_id: str
    deduplicated: bool = False


@dataclass
class _Messages:
    owner: CapturingQStash

    def publish_json(self, *, url: str, body: Any = None, **options: Any) -> _PublishResponse:
        # The real client sends ``json.dumps(body)``: the same bytes as here.
        raw = json.dumps(body).encode("utf-8")
        return self.owner.capture(url, raw, options)

    def publish(self, *, url: str, body: str | bytes | None = None, **options: Any) -> Any:
        raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        return self.owner.capture(url, raw, options)


@dataclass
class CapturingQStash:
    """Stands in for ``qstash.QStash`` (``client.message.publish_json``); never sends."""

    queue: deque[CapturedMessage] = field(default_factory=deque)
    published: list[CapturedMessage] = field(default_factory=list)
    dedup_ids: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    message: _Messages = field(init=False)

    def __post_init__(self) -> None:
        self.message = _Messages(self)

    def capture(self, url: str, raw: bytes, options: dict[str, Any]) -> _PublishResponse:
        dedup: str | None = options.get("deduplication_id")
        if dedup is not None and dedup in self.dedup_ids:
            self.duplicates += 1
            return _PublishResponse(self.dedup_ids[dedup], deduplicated=True)
        not_before: int | None = options.get("not_before")
        # The headers the real client would add to the publish request.
        headers = {"Content-Type": "application/json"}
        if dedup is not None:
            headers["Upstash-Deduplication-Id"] = dedup
        if not_before is not None:
            headers["Upstash-Not-Before"] = str(not_before)
        if options.get("retries") is not None:
            headers["Upstash-Retries"] = str(options["retries"])
        if options.get("retry_delay") is not None:
            headers["Upstash-Retry-Delay"] = str(options["retry_delay"])
        message = CapturedMessage(
            message_id=f"msg_{uuid.uuid4().hex}",
            url=url,
            body=raw,
            headers=headers,
            not_before=not_before,
            deduplication_id=dedup,
        )
        if dedup is not None:
            self.dedup_ids[dedup] = message.message_id
        self.published.append(message)
        self.queue.append(message)
        return _PublishResponse(message.message_id)

    def reset(self) -> None:
        self.queue.clear()
        self.published.clear()
        self.dedup_ids.clear()
        self.duplicates = 0


# --------------------------------------------------------------------------- Django setup


@dataclass
class _Harness:
    runtime: Any
    capturer: CapturingQStash
    clock: VirtualClock
    database: Path


_harness: _Harness | None = None


def _configure(database: Path | None = None) -> _Harness:
    """Configure Django once per process on a temporary SQLite file, migrated."""
    global _harness
    if _harness is not None:
        return _harness
    import django
    from django.conf import settings

    if database is None:
        database = Path(tempfile.mkdtemp(prefix="hookflow_e2e_")) / "e2e.sqlite3"
    qstash = {
        "TOKEN": QSTASH_TOKEN,
        "URL": "http://127.0.0.1:9",  # never used: the client is the capturer
        "CURRENT_SIGNING_KEY": QSTASH_CURRENT_SIGNING_KEY,
        "NEXT_SIGNING_KEY": QSTASH_NEXT_SIGNING_KEY,
        "BASE_URL": _DOMAIN,
    }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="e2e-harness-not-secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "hookflow_gen.django"],
        # The same middleware stack as the peer harness.
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(database),
                "OPTIONS": {
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                    "timeout": 30,
                },
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        TIME_ZONE="UTC",
        LOGGING_CONFIG=None,
        HOOKFLOW={"SCHEDULER": "qstash", "AUTODISCOVER": None, "QSTASH": qstash},
    )
    django.setup()
    from django.core.management import call_command
    from django.urls import include, path

    from hookflow_gen._client import set_runtime
    from hookflow_gen.django import build_runtime, get_settings
    from hookflow_gen.django._qstash import QStashScheduler

    urlpatterns.append(path("hookflow/", include("hookflow_gen.django.urls")))
    call_command("migrate", verbosity=0, interactive=False)
    capturer = CapturingQStash()
    clock = VirtualClock()
    scheduler = QStashScheduler(get_settings(), client=capturer)  # type: ignore[arg-type]
    runtime = build_runtime(get_settings(), scheduler=scheduler, clock=clock)
    set_runtime(runtime)
    _harness = _Harness(runtime, capturer, clock, database)
    return _harness


# --------------------------------------------------------------------------- runner


def run_hookflow_gen(n: int, *, mixed: bool = False, sleep_every: int = 10) -> PeerRunStats:
    """Run one n-step workflow to completion and report messages, bytes and time.

    Raises ``RuntimeError`` if any delivery is not answered with 2xx or the run
    does not complete with the expected result.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    harness = _configure()
    from django.test import Client

    from hookflow_gen.testing.qstash import sign

    capturer, clock = harness.capturer, harness.clock
    capturer.reset()
    http = Client()
    deliveries = 0
    handler_s = 0.0
    virtual_delay_s = 0.0

    started = time.perf_counter()
    handle = steps_workflow.start(Steps(n=n, sleep_every=sleep_every if mixed else 0))
    while capturer.queue:
        message = capturer.queue.popleft()
        if message.not_before is not None:
            due = float(message.not_before)
            virtual_delay_s += max(0.0, due - clock.now().timestamp())
            clock.reach(due)
        headers = {
            "Upstash-Signature": sign(
                key=QSTASH_CURRENT_SIGNING_KEY, url=message.url, body=message.body
            ),
            "Upstash-Message-Id": message.message_id,
            "Upstash-Retried": "0",
            "User-Agent": "Upstash-QStash",
        }
        t0 = time.perf_counter()
        response = http.post(
            message.url.removeprefix(_DOMAIN),
            data=message.body,
            content_type="application/json",
            headers=headers,
        )
        handler_s += time.perf_counter() - t0
        deliveries += 1
        if not 200 <= response.status_code < 300:
            msg = f"delivery {deliveries} answered {response.status_code}: {response.content!r}"
            raise RuntimeError(msg)
    wall_s = time.perf_counter() - started

    expected = n * (n - 1) // 2
    result = handle.result()
    if result != expected:
        raise RuntimeError(f"run finished with {result!r}, expected {expected}")
    sizes = tuple(len(m.body) for m in capturer.published)
    sleeps = sum(1 for m in capturer.published if m.not_before is not None)
    notes = [VERIFICATION_NOTE, "persistence: always on (SQLite file, WAL, synchronous=NORMAL)"]
    if capturer.duplicates:
        notes.append(f"{capturer.duplicates} publishes deduplicated")
    return PeerRunStats(
        peer=ENGINE_NAME,
        n=n,
        mixed=mixed,
        messages=len(capturer.published),
        message_bytes=sizes,
        total_bytes=sum(sizes),
        last_message_bytes=sizes[-1],
        max_message_bytes=max(sizes),
        deliveries=deliveries,
        sleeps=sleeps,
        virtual_delay_s=math.floor(virtual_delay_s * 1000) / 1000,
        wall_s=wall_s,
        handler_s=handler_s,
        result_ok=True,
        notes=tuple(notes),
    )


def run_series(
    ns: list[int], *, repeats: int = 1, mixed: bool = False, warmup: bool = True
) -> list[PeerRunStats]:
    """Run each n ``repeats`` times (after an optional 2-step warm-up run)."""
    if warmup:
        run_hookflow_gen(2, mixed=mixed)
    return [run_hookflow_gen(n, mixed=mixed) for n in ns for _ in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per n")
    parser.add_argument("--mixed", action="store_true", help="add a sleep every 10th step")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--omit-message-bytes", action="store_true", help="leave the per-message size list out"
    )
    args = parser.parse_args(argv)
    runs = run_series(
        list(args.n), repeats=args.repeats, mixed=args.mixed, warmup=not args.no_warmup
    )
    growth = None
    if len({r.n for r in runs}) >= 2:
        growth = to_json_dict(fit_growth([(r.n, r.wall_s) for r in runs]))
    if args.json:
        out_runs = []
        for r in runs:
            d = to_json_dict(r)
            if args.omit_message_bytes:
                d.pop("message_bytes")
            out_runs.append(d)
        doc = {
            "peer": ENGINE_NAME,
            "verification": VERIFICATION_NOTE,
            "runs": out_runs,
            "wall_growth": growth,
        }
        print(json.dumps(doc, indent=2))
    else:
        for r in runs:
            print(
                f"n={r.n:>6} mixed={r.mixed!s:<5} messages={r.messages:>6} "
                f"bytes/msg={r.total_bytes / r.messages:6.0f} total={r.total_bytes:>8} B "
                f"wall={r.wall_s:8.3f} s handler={r.handler_s:8.3f} s"
            )
        if growth is not None:
            print(
                f"wall-time growth: slope={growth['slope']:.2f}, "
                f"tail slope={growth['tail_slope']:.2f} ({growth['classification']})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
