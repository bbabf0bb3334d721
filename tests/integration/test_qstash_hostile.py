"""Hostile input to the QStash endpoints: never a 500, never a 503 for a permanent problem.

The named defects first (each got a 500 or a 503 once), then a fuzz run of
more than a hundred malformed, forged and hostile requests over the three
endpoints, each asserting a 4xx answer and no row changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from django.test import Client

from hookflow_gen._client import use_runtime
from hookflow_gen.django import build_runtime, get_settings
from hookflow_gen.django._qstash import QStashScheduler
from hookflow_gen.django.models import Event, Outbox, Run, Step
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    QStashServer,
    sign,
)
from tests.e2e import flows
from tests.integration.test_qstash_webhook import HOOK, HOST, SITE, deliver

# The webhook tests' fixtures (a local QStash, its scheduler, a runtime on them).
from tests.integration.test_qstash_webhook import qstash as qstash  # noqa: PLC0414
from tests.integration.test_qstash_webhook import runtime as runtime  # noqa: PLC0414
from tests.integration.test_qstash_webhook import scheduler as scheduler  # noqa: PLC0414

if TYPE_CHECKING:
    from collections.abc import Iterator

    from django.test.client import _MonkeyPatchedWSGIResponse  # pyright: ignore[reportPrivateUsage]

    from hookflow_gen._runtime import Runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.e2e.flows")]

CALL = f"{SITE}/hookflow/qstash/call/"
SWEEP = f"{SITE}/hookflow/qstash/sweep/"
KEY = DEFAULT_CURRENT_SIGNING_KEY


def token(claims: dict[str, Any], *, key: str = KEY) -> str:
    """A token with exactly these claims, HS256-signed with ``key``."""
    return jwt.encode(claims, key, algorithm="HS256")  # pyright: ignore[reportUnknownMemberType]


def claims_for(url: str, raw: bytes, /, **changes: Any) -> dict[str, Any]:
    """QStash's claims for a delivery of ``body`` to ``url``, with ``changes`` (None drops one)."""
    now = int(time.time())
    digest = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    claims: dict[str, Any] = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": f"jwt_{uuid.uuid4().hex}",
        "body": digest,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def post(
    path: str, body: bytes, signature: str | None, *, method: str = "POST", **extra: Any
) -> _MonkeyPatchedWSGIResponse:
    """Send a request to ``path`` (with ``Upstash-Signature`` when given)."""
    headers = {"Upstash-Signature": signature} if signature is not None else {}
    return Client().generic(
        method,
        path,
        data=body,
        content_type="application/json",
        headers=headers,
        HTTP_HOST=HOST,
        **extra,
    )


def snapshot() -> tuple[list[Any], ...]:
    """Every row a delivery could change (seen tokens aside: they guard against replays)."""
    return (
        sorted(Run.objects.values_list("run_id", "status", "wake_at", "wake_seq")),
        sorted(Step.objects.values_list("run_id", "position", "status", "attempts", "lease_owner")),
        sorted(Event.objects.values_list("key", "payload")),
        sorted(Outbox.objects.values_list("dedup_id", "attempts")),
    )


def assert_refused(response: _MonkeyPatchedWSGIResponse, *statuses: int) -> None:
    """A 4xx answer in JSON (one of ``statuses`` when given)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    if statuses:
        assert response.status_code in statuses, response.content[:300]
    assert "error" in json.loads(response.content)


# -- the named defects --------------------------------------------------------------------


def test_oversized_unsigned_body_is_refused_without_a_traceback(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3 MB body with any signature gets a 4xx (not Django's RequestDataTooBig 500)."""
    response = post("/hookflow/qstash/", b"x" * (3 * 1024 * 1024), "not-a-token")
    assert_refused(response)
    response = post("/hookflow/qstash/call/?run=r&position=0&owner=ab", b"x" * (3 * 1024 * 1024),
                    "not-a-token")  # fmt: skip
    assert_refused(response, 401)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_deeply_nested_signed_json_is_a_489(runtime: Runtime) -> None:
    """Signed JSON nested ten thousand deep is refused as invalid, not a RecursionError 500."""
    body = b"[" * 10000 + b"]" * 10000
    assert_refused(deliver(body), 489)
    assert_refused(deliver(body, url=CALL + "?run=r&position=0&owner=ab"), 489)


@pytest.mark.parametrize("body_claim", [None, 12345, ["x"], {"a": 1}])
def test_token_without_a_string_body_claim_is_a_401(runtime: Runtime, body_claim: object) -> None:
    """A token signed with our key but with no ``body`` claim, or a non-string one, gets 401."""
    handle = flows.linear.start(flows.Count(n=1))
    body = json.dumps({"run_id": handle.run_id, "seq": 1}).encode()
    claims = claims_for(HOOK, body, body=body_claim)  # None drops the claim
    before = snapshot()
    assert_refused(post("/hookflow/qstash/", body, token(claims)), 401)
    assert snapshot() == before


@pytest.mark.parametrize("where", ["body", "query"])
def test_nul_in_a_run_id_is_a_permanent_489(runtime: Runtime, where: str) -> None:
    """A NUL in ``run_id`` or ``?run=`` is a 489 for good, not 503 "database unavailable"."""
    if where == "body":
        response = deliver({"run_id": "abc\x00def", "seq": 1})
    else:
        url = CALL + "?run=abc%00def&position=0&owner=ab"
        response = deliver({"status": 200}, url=url)
    assert_refused(response, 489)
    assert response["Upstash-NonRetryable-Error"] == "true"


@pytest.fixture
def proxied(qstash: QStashServer) -> Iterator[Runtime]:
    """A runtime whose BASE_URL is the https address of a proxy in front of the site."""
    scheduler = QStashScheduler(
        {
            "TOKEN": qstash.token,
            "URL": qstash.url,
            "CURRENT_SIGNING_KEY": DEFAULT_CURRENT_SIGNING_KEY,
            "NEXT_SIGNING_KEY": DEFAULT_NEXT_SIGNING_KEY,
            "BASE_URL": "https://shop.example.com",
        }
    )
    runtime = build_runtime(get_settings(), scheduler=scheduler)
    flows.reset()
    with use_runtime(runtime):
        yield runtime
    runtime.close()
    scheduler.close()


def test_signature_is_checked_against_base_url_behind_a_proxy(
    proxied: Runtime, qstash: QStashServer
) -> None:
    """Behind a TLS proxy (the request arrives as plain http to another host) BASE_URL is signed."""
    handle = flows.linear.start(flows.Count(n=1))
    [message] = qstash.messages(kind="publish")
    assert message.url == "https://shop.example.com/hookflow/qstash/"
    body = message.body
    response = post("/hookflow/qstash/", body, sign(key=KEY, url=message.url, body=body))
    assert response.status_code == 200, response.content
    assert handle.result() == 1
    # Signed for the address the app server sees, it is refused: not what QStash called.
    other = flows.linear.start(flows.Count(n=1))
    body = json.dumps({"run_id": other.run_id, "seq": 1}).encode()
    assert_refused(post("/hookflow/qstash/", body, sign(key=KEY, url=HOOK, body=body)), 401)


# -- the fuzz run -------------------------------------------------------------------------


def _cases(run_id: str) -> list[tuple[str, str, str, bytes, str | None, dict[str, Any]]]:
    """(name, method, path, body, signature, extra WSGI environ) of each hostile request."""
    cases: list[tuple[str, str, str, bytes, str | None, dict[str, Any]]] = []
    good_body = json.dumps({"run_id": run_id, "seq": 1}).encode()
    endpoints = {
        "hook": ("/hookflow/qstash/", HOOK),
        "call": (
            f"/hookflow/qstash/call/?run={run_id}&position=0&owner={'a' * 32}",
            f"{CALL}?run={run_id}&position=0&owner={'a' * 32}",
        ),
        "sweep": ("/hookflow/qstash/sweep/", SWEEP),
    }
    for name, (path, url) in endpoints.items():
        for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
            cases.append((f"{name}-{method}", method, path, good_body, sign(key=KEY, url=url,
                          body=good_body), {}))  # fmt: skip
        unsigned: dict[str, str | None] = {
            "missing": None,
            "empty": "",
            "garbage": "garbage",
            "three-dots": "a.b.c",
            "long": "x" * 10000,
            "not-base64": "@@@.@@@.@@@",
            "alg-none": base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
            + "."
            + base64.urlsafe_b64encode(json.dumps(claims_for(url, good_body)).encode())
            .decode()
            .rstrip("=")
            + ".",
            "nested-header": base64.urlsafe_b64encode(b'{"alg":' + b"[" * 1400 + b"]" * 1400 + b"}")
            .decode()
            .rstrip("=")
            + ".e30.c2ln",
            "forged-key": token(claims_for(url, good_body), key="sig_" + "z" * 28),
        }
        for label, signature in unsigned.items():
            cases.append((f"{name}-sig-{label}", "POST", path, good_body, signature, {}))
        bad_claims: dict[str, dict[str, Any]] = {
            "expired": {"exp": int(time.time()) - 10, "nbf": int(time.time()) - 400},
            "not-yet": {"nbf": int(time.time()) + 600},
            "wrong-iss": {"iss": "Evil"},
            "no-iss": {"iss": None},
            "no-sub": {"sub": None},
            "int-sub": {"sub": 7},
            "wrong-sub": {"sub": f"{SITE}/elsewhere/"},
            "no-jti": {"jti": None},
            "int-jti": {"jti": 99},
            "long-jti": {"jti": "j" * 300},
            "nul-jti": {"jti": "j\x00"},
            "no-exp": {"exp": None},
            "str-exp": {"exp": "soon"},
            "huge-exp": {"exp": 10**30},
            "int-body": {"body": 5},
            "wrong-body": {"body": "AAAA"},
        }
        for label, changes in bad_claims.items():
            signature = token(claims_for(url, good_body, **changes))
            cases.append((f"{name}-claim-{label}", "POST", path, good_body, signature, {}))
        cases.append((f"{name}-tampered", "POST", path, good_body + b" ",
                      sign(key=KEY, url=url, body=good_body), {}))  # fmt: skip
        cases.append((f"{name}-content-length-lie", "POST", path, good_body,
                      sign(key=KEY, url=url, body=good_body),
                      {"CONTENT_LENGTH": str(10**12)}))  # fmt: skip
        cases.append((f"{name}-content-length-nan", "POST", path, good_body,
                      sign(key=KEY, url=url, body=good_body),
                      {"CONTENT_LENGTH": "lots"}))  # fmt: skip
    # Signed bodies the wake-up webhook must refuse for good.
    bodies: dict[str, bytes] = {
        "not-json": b"{not json",
        "invalid-utf8": b'{"run_id": "\xff\xfe", "seq": 1}',
        "array": b"[1, 2]",
        "string": b'"run"',
        "empty": b"",
        "empty-object": b"{}",
        "deep": b'{"run_id": ' + b"[" * 5000 + b"]" * 5000 + b', "seq": 1}',
        "nul-id": json.dumps({"run_id": "a\x00b", "seq": 1}).encode(),
        "surrogate-id": b'{"run_id": "\\ud800", "seq": 1}',
        "long-id": json.dumps({"run_id": "r" * 300, "seq": 1}).encode(),
        "control-id": json.dumps({"run_id": "a\nb", "seq": 1}).encode(),
        "unicode-id": json.dumps({"run_id": "ラン-🚀", "seq": 1}).encode(),
        "int-id": json.dumps({"run_id": 5, "seq": 1}).encode(),
        "null-id": json.dumps({"run_id": None, "seq": 1}).encode(),
        "str-seq": json.dumps({"run_id": run_id, "seq": "1"}).encode(),
        "float-seq": json.dumps({"run_id": run_id, "seq": 1.5}).encode(),
        "bool-seq": json.dumps({"run_id": run_id, "seq": True}).encode(),
        "negative-seq": json.dumps({"run_id": run_id, "seq": -1}).encode(),
        "huge-seq": json.dumps({"run_id": run_id, "seq": 2**70}).encode(),
        "extra-key": json.dumps({"run_id": run_id, "seq": 1, "x": 1}).encode(),
        "big": json.dumps({"run_id": run_id, "seq": 1, "pad": "p" * 100_000}).encode(),
    }
    for label, body in bodies.items():
        cases.append((f"hook-body-{label}", "POST", "/hookflow/qstash/", body,
                      sign(key=KEY, url=HOOK, body=body), {}))  # fmt: skip
    # Signed callbacks whose URL or body cannot name a step, or describe no answer.
    owner = "a" * 32
    queries = {
        "no-query": "",
        "nul-run": f"?run=a%00b&position=0&owner={owner}",
        "long-run": f"?run={'r' * 300}&position=0&owner={owner}",
        "negative-position": f"?run={run_id}&position=-1&owner={owner}",
        "float-position": f"?run={run_id}&position=1e3&owner={owner}",
        "arabic-digit-position": f"?run={run_id}&position=%D9%A3&owner={owner}",
        "huge-position": f"?run={run_id}&position={'9' * 30}&owner={owner}",
        "bad-owner": f"?run={run_id}&position=0&owner=not-hex!",
        "long-owner": f"?run={run_id}&position=0&owner={'a' * 100}",
        "no-owner": f"?run={run_id}&position=0",
        "unknown-run": f"?run=no-such-run&position=0&owner={owner}",
    }
    answer = json.dumps({"status": 200, "body": ""}).encode()
    for label, query in queries.items():
        url = CALL + query
        cases.append((f"call-query-{label}", "POST", "/hookflow/qstash/call/" + query, answer,
                      sign(key=KEY, url=url, body=answer), {}))  # fmt: skip
    url = f"{CALL}?run={run_id}&position=0&owner={owner}"
    callbacks: dict[str, bytes] = {
        "str-status": json.dumps({"status": "200"}).encode(),
        "bool-status": json.dumps({"status": True}).encode(),
        "no-status": json.dumps({"body": ""}).encode(),
        "huge-status": json.dumps({"status": 10**9}).encode(),
        "list-header": json.dumps({"status": 200, "header": [1, 2]}).encode(),
        "int-body": json.dumps({"status": 200, "body": 5}).encode(),
        "bad-base64": json.dumps({"status": 200, "body": "!!!"}).encode(),
        "deep": b'{"status": 200, "header": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        "array": b"[]",
    }
    for label, body in callbacks.items():
        cases.append((f"call-body-{label}", "POST", url.removeprefix(SITE), body,
                      sign(key=KEY, url=url, body=body), {}))  # fmt: skip
    return cases


def test_fuzz_hostile_requests_get_4xx_and_change_nothing(runtime: Runtime) -> None:
    """Over a hundred malformed, forged or hostile requests: each a 4xx, no row changed."""
    handle = flows.linear.start(flows.Count(n=1))
    cases = _cases(handle.run_id)
    assert len(cases) >= 100
    before = snapshot()
    failures: list[str] = []
    for name, method, path, body, signature, extra in cases:
        response = post(path, body, signature, method=method, **extra)
        status = response.status_code
        if not 400 <= status < 500:
            failures.append(f"{name}: {status} {response.content[:200]!r}")
        elif method != "HEAD" and "error" not in json.loads(response.content):
            failures.append(f"{name}: {status} without an error")
    assert failures == []
    assert snapshot() == before
    assert flows.executions(handle.run_id) == {}
