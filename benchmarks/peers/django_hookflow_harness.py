"""Drive django-hookflow 0.0.4 end to end in one process, with no network.

Method
------
django-hookflow runs a workflow as one QStash message per step. Its webhook
view re-runs the whole workflow function from the top on every delivery;
``ctx.step.run`` returns the recorded result of a finished step and, at the
first unfinished step, runs it and raises ``StepCompleted``; the view then
publishes the next message, whose JSON body carries *every* step result so
far (``completed_steps``). A run of n steps therefore costs n + 1 messages
(the trigger plus one per step) and the bodies grow linearly, so the bytes
and the work per run grow quadratically.

This harness keeps all of that and replaces only the network:

* Publishing: django-hookflow fetches its client through
  ``django_hookflow.qstash.client.get_qstash_client()``, a lazily built
  module singleton. The harness installs a capturing object with the same
  ``publish_json`` signature in that slot, so the library's own
  ``trigger()`` and ``publish_next_step()`` code runs unchanged. The capturer
  serializes the body exactly as the real client does (``json.dumps``), keeps
  the bytes, honours ``deduplication_id`` (QStash answers a duplicate with the
  first message's id and does not deliver it again) and records any
  ``delay``.
* Delivery: each captured message is POSTed in-process, in publish order,
  through Django's test ``Client`` (full middleware stack and URL routing) to
  the URL django-hookflow published to, with the headers QStash adds
  (``Upstash-Signature``, ``Upstash-Message-Id``, ``Upstash-Retried``,
  ``User-Agent``). Delays are not waited out: time is virtual, and the sum of
  the delays is reported separately.
* Signatures: see :data:`VERIFICATION_NOTE`. By default the harness mints the
  token django-hookflow accepts, so its verification code runs and is timed;
  ``verify="bypass"`` replaces its verification function instead.
* Persistence: off by default, as in django-hookflow's own defaults
  (``DJANGO_HOOKFLOW_PERSISTENCE_ENABLED`` is False unless set). With
  ``persistence=True`` every delivery also reads all recorded steps from the
  database and writes one row, against in-memory SQLite here.

Workflows
---------
``steps``: n ``ctx.step.run`` steps, each returning a small dict
``{"i": i, "value": "x" * 16}``; the workflow returns the count and the sum of
the ``i`` it got back, which the harness checks.

``mixed``: the same n run steps plus a durable ``ctx.step.sleep(id, 1)``
after every ``sleep_every``-th one. django-hookflow supports ``run``,
``sleep`` (a QStash ``Upstash-Delay`` on the next message, which also adds a
``{"slept_for", "timestamp"}`` entry to the carried results) and ``call`` (a
blocking ``requests`` call made inside the webhook, not used here because it
needs a network). It has no events, no parallel steps and no child workflows.

Caveats
-------
* The Django settings are this module's own (``settings.configure``), so run
  it in its own process, never beside another Django configuration.
* Wall time includes the harness's delivery loop (token minting, the test
  client's request building); ``handler_s`` is the time inside the webhook
  requests alone.
* The first run in a process pays import and URL-resolver warm-up; the CLI
  runs a 2-step warm-up first unless told not to.

Run: ``uv run python benchmarks/peers/django_hookflow_harness.py --n 10 100 1000 --json``
(``python -m benchmarks.peers.django_hookflow_harness`` works as well).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

# The peers directory is a flat set of scripts: make its siblings importable
# whether this file is run by path, with ``-m``, or imported from elsewhere.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _stats import PeerRunStats, fit_growth, to_json_dict  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PEER_NAME = "django-hookflow"
PEER_VERSION = "0.0.4"

VERIFICATION_NOTE = (
    "django-hookflow 0.0.4 compares the JWT 'body' claim with the hex SHA-256 digest of the "
    "body, while QStash signs the base64url digest, so it rejects genuine QStash deliveries. "
    "The harness therefore does not send genuine QStash tokens: in 'hex-token' mode (default) "
    "it mints HS256 tokens with the hex digest that django-hookflow expects, signed with the "
    "QStash dev-server signing key, so the library's own verification runs and is timed; in "
    "'bypass' mode it replaces django-hookflow's verify_qstash_signature with one that "
    "accepts every request."
)

VerifyMode: TypeAlias = Literal["hex-token", "bypass"]

# Upstash's dev-server defaults, so the values match the project's local QStash.
QSTASH_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
QSTASH_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
QSTASH_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"

_DOMAIN = "http://testserver"
_WEBHOOK_PATH = "/hookflow/"
_WORKFLOW_ID = "peers.steps"
_SLEEP_SECONDS = 1

# Django resolves ROOT_URLCONF by module name; this module provides it.
urlpatterns: list[Any] = []


# --------------------------------------------------------------------------- Django setup


_configured = False


def _configure_django() -> None:
    """Configure a minimal Django project once per process."""
    global _configured
    if _configured:
        return
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="peers-harness-not-secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django_hookflow"],
        # A typical stateless API stack; the webhook view is csrf_exempt.
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        LOGGING_CONFIG=None,
        QSTASH_TOKEN=QSTASH_TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=QSTASH_CURRENT_SIGNING_KEY,
        QSTASH_NEXT_SIGNING_KEY=QSTASH_NEXT_SIGNING_KEY,
        DJANGO_HOOKFLOW_DOMAIN=_DOMAIN,
        DJANGO_HOOKFLOW_WEBHOOK_PATH=_WEBHOOK_PATH,
        DJANGO_HOOKFLOW_PERSISTENCE_ENABLED=False,
    )
    django.setup()

    from django.core.management import call_command
    from django.urls import include, path

    urlpatterns.append(path("hookflow/", include("django_hookflow.urls")))
    # The tables are needed only with persistence on, or if a run fails into
    # the dead-letter queue; creating them up front keeps both paths honest.
    call_command("migrate", verbosity=0, interactive=False)
    _register_workflow()
    _configured = True


# --------------------------------------------------------------------------- workflows


def _step(i: int) -> dict[str, Any]:
    """The work of one step: a small JSON payload, like a small model dump."""
    return {"i": i, "value": "x" * 16}


def _steps_workflow(ctx: Any) -> dict[str, int]:
    """n run steps, with an optional sleep after every ``sleep_every``-th one."""
    n = int(ctx.data["n"])
    sleep_every = int(ctx.data.get("sleep_every", 0))
    total = 0
    for i in range(n):
        got = ctx.step.run(f"step-{i}", _step, i)
        total += int(got["i"])
        if sleep_every and (i + 1) % sleep_every == 0:
            ctx.step.sleep(f"sleep-{i}", _SLEEP_SECONDS)
    return {"count": n, "sum": total}


_wrapper: Any = None


def _register_workflow() -> None:
    global _wrapper
    from django_hookflow import workflow

    _wrapper = workflow(workflow_id=_WORKFLOW_ID)(_steps_workflow)


# --------------------------------------------------------------------------- QStash stand-in


@dataclass
class CapturedMessage:
    """One message django-hookflow asked QStash to deliver."""

    message_id: str
    url: str
    body: bytes
    delay: str | None
    deduplication_id: str | None
    headers: dict[str, str]


@dataclass
class CapturingQStashClient:
    """Stands in for ``django_hookflow.qstash.client.QStashClient``; never sends.

    Same ``publish_json`` signature and return shape as the real client.
    """

    queue: deque[CapturedMessage] = field(default_factory=deque)
    published: list[CapturedMessage] = field(default_factory=list)
    dedup_ids: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0

    def publish_json(
        self,
        url: str,
        body: dict[str, Any],
        delay: str | None = None,
        deduplication_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if deduplication_id is not None and deduplication_id in self.dedup_ids:
            self.duplicates += 1
            return {"messageId": self.dedup_ids[deduplication_id], "deduplicated": True}
        # The real client sends ``data=json.dumps(body)``: same bytes as here.
        raw = json.dumps(body).encode("utf-8")
        message = CapturedMessage(
            message_id=f"msg_{uuid.uuid4().hex}",
            url=url,
            body=raw,
            delay=delay,
            deduplication_id=deduplication_id,
            headers=dict(headers or {}),
        )
        if deduplication_id is not None:
            self.dedup_ids[deduplication_id] = message.message_id
        self.published.append(message)
        self.queue.append(message)
        return {"messageId": message.message_id, "deduplicated": False}


def _parse_delay(delay: str | None) -> float:
    """Seconds in a QStash delay string such as ``"1s"``, ``"5m"``, ``"2h"``."""
    if not delay:
        return 0.0
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return float(delay[:-1]) * units[delay[-1]] if delay[-1] in units else float(delay)


def _mint_hex_token(url: str, body: bytes) -> str:
    """The token django-hookflow 0.0.4 accepts (hex body digest, not QStash's base64url)."""
    import jwt

    now = int(time.time())
    claims = {
        "iss": "Upstash",
        "sub": url,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"jwt_{uuid.uuid4().hex}",
        "body": hashlib.sha256(body).hexdigest(),
    }
    return jwt.encode(claims, QSTASH_CURRENT_SIGNING_KEY, algorithm="HS256")


def genuine_qstash_body_claim(body: bytes) -> str:
    """What genuine QStash puts in the ``body`` claim: base64url SHA-256, unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode().rstrip("=")


@contextmanager
def _patched(
    client: CapturingQStashClient, verify: VerifyMode, persistence: bool
) -> Iterator[None]:
    """Install the capturing client (and the verification bypass) for one run."""
    import django_hookflow.qstash.client as client_module
    import django_hookflow.workflows.views as views_module
    from django.test import override_settings

    saved_client = client_module._client_instance
    saved_verify: Callable[..., bool] = views_module.verify_qstash_signature
    client_module._client_instance = client
    if verify == "bypass":
        views_module.verify_qstash_signature = lambda _request: True
    try:
        with override_settings(DJANGO_HOOKFLOW_PERSISTENCE_ENABLED=persistence):
            yield
    finally:
        client_module._client_instance = saved_client
        views_module.verify_qstash_signature = saved_verify


# --------------------------------------------------------------------------- runner


def run_django_hookflow(
    n: int,
    *,
    mixed: bool = False,
    sleep_every: int = 10,
    verify: VerifyMode = "hex-token",
    persistence: bool = False,
) -> PeerRunStats:
    """Run one n-step workflow to completion and report messages, bytes and time.

    ``mixed`` adds a 1 s durable sleep after every ``sleep_every``-th run step
    (the sleep is not waited out). Raises ``RuntimeError`` if any delivery is
    not answered with 2xx or the run does not finish with the expected result.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    _configure_django()
    from django.test import Client

    capturer = CapturingQStashClient()
    http = Client()
    data: dict[str, Any] = {"n": n, "sleep_every": sleep_every if mixed else 0}
    final: dict[str, Any] | None = None
    deliveries = 0
    handler_s = 0.0

    with _patched(capturer, verify, persistence):
        started = time.perf_counter()
        _wrapper.trigger(data=data, run_id=str(uuid.uuid4()))
        while capturer.queue:
            message = capturer.queue.popleft()
            path = message.url.removeprefix(_DOMAIN)
            headers = {
                "Upstash-Message-Id": message.message_id,
                "Upstash-Retried": "0",
                "User-Agent": "Upstash-QStash",
            }
            if verify == "hex-token":
                headers["Upstash-Signature"] = _mint_hex_token(message.url, message.body)
            t0 = time.perf_counter()
            response = http.post(
                path, data=message.body, content_type="application/json", headers=headers
            )
            handler_s += time.perf_counter() - t0
            deliveries += 1
            if not 200 <= response.status_code < 300:
                msg = f"delivery {deliveries} answered {response.status_code}: {response.content!r}"
                raise RuntimeError(msg)
            answer = json.loads(response.content)
            if answer.get("status") == "completed":
                final = answer
        wall_s = time.perf_counter() - started

    expected = {"count": n, "sum": n * (n - 1) // 2}
    result_ok = final is not None and final.get("result") == expected
    if not result_ok:
        msg = f"run did not complete as expected: final={final!r}"
        raise RuntimeError(msg)
    sizes = tuple(len(m.body) for m in capturer.published)
    sleeps = sum(1 for m in capturer.published if m.delay)
    notes = [VERIFICATION_NOTE if verify == "hex-token" else "verification bypassed"]
    notes.append(f"persistence={'on (in-memory SQLite)' if persistence else 'off'}")
    if capturer.duplicates:
        notes.append(f"{capturer.duplicates} publishes deduplicated")
    return PeerRunStats(
        peer=PEER_NAME,
        n=n,
        mixed=mixed,
        messages=len(capturer.published),
        message_bytes=sizes,
        total_bytes=sum(sizes),
        last_message_bytes=sizes[-1],
        max_message_bytes=max(sizes),
        deliveries=deliveries,
        sleeps=sleeps,
        virtual_delay_s=sum(_parse_delay(m.delay) for m in capturer.published),
        wall_s=wall_s,
        handler_s=handler_s,
        result_ok=result_ok,
        notes=tuple(notes),
    )


def run_series(
    ns: list[int],
    *,
    repeats: int = 1,
    mixed: bool = False,
    verify: VerifyMode = "hex-token",
    persistence: bool = False,
    warmup: bool = True,
) -> list[PeerRunStats]:
    """Run each n ``repeats`` times (after an optional 2-step warm-up run)."""
    if warmup:
        run_django_hookflow(2, mixed=mixed, verify=verify, persistence=persistence)
    return [
        run_django_hookflow(n, mixed=mixed, verify=verify, persistence=persistence)
        for n in ns
        for _ in range(repeats)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100], help="steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per n")
    parser.add_argument("--mixed", action="store_true", help="add a sleep every 10th step")
    parser.add_argument("--verify", choices=["hex-token", "bypass"], default="hex-token")
    parser.add_argument("--persistence", action="store_true", help="enable DB persistence")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--omit-message-bytes", action="store_true", help="leave the per-message size list out"
    )
    args = parser.parse_args(argv)
    verify: VerifyMode = "bypass" if args.verify == "bypass" else "hex-token"
    runs = run_series(
        list(args.n),
        repeats=args.repeats,
        mixed=args.mixed,
        verify=verify,
        persistence=args.persistence,
        warmup=not args.no_warmup,
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
            "peer": PEER_NAME,
            "version": PEER_VERSION,
            "verification": VERIFICATION_NOTE if verify == "hex-token" else "bypassed",
            "runs": out_runs,
            "wall_growth": growth,
        }
        print(json.dumps(doc, indent=2))
    else:
        for r in runs:
            print(
                f"n={r.n:>6} mixed={r.mixed!s:<5} messages={r.messages:>6} "
                f"total={r.total_bytes / 1e6:8.3f} MB last={r.last_message_bytes / 1e3:8.1f} KB "
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
