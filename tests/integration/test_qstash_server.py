"""Contract tests of the QStash-compatible server, driven by the real ``qstash`` client."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from qstash import QStash, Receiver
from qstash.errors import QStashError
from qstash.message import PublishResponse

import hookflow_gen.testing.qstash as qstash_module
from hookflow_gen.testing._qstash_cli import export_lines
from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    DEFAULT_TOKEN,
    QStashServer,
    default_backoff,
    parse_duration,
)
from hookflow_gen.testing.qstash._cron import Cron, CronError
from tests.qstash_sink import Received, Sink

if TYPE_CHECKING:
    from collections.abc import Iterator

SCALE = 0.001


@pytest.fixture
def sink() -> Iterator[Sink]:
    receiver = Sink()
    yield receiver
    receiver.close()


@pytest.fixture
def qs() -> Iterator[QStashServer]:
    with QStashServer(time_scale=SCALE) as server:
        yield server


@pytest.fixture
def client(qs: QStashServer) -> QStash:
    return QStash(qs.token, base_url=qs.url, retry=False)


def verify(qs: QStashServer, request: Received) -> None:
    Receiver(
        current_signing_key=qs.current_signing_key, next_signing_key=qs.next_signing_key
    ).verify(
        signature=request.headers["upstash-signature"],
        body=request.body.decode(),
        url=request.url,
    )


def claims(qs: QStashServer, request: Received) -> dict[str, Any]:
    # PyJWT's key parameter names cryptography's key classes, which are not
    # installed, so pyright sees part of the signature as unknown.
    return jwt.decode(  # pyright: ignore[reportUnknownMemberType]
        request.headers["upstash-signature"],
        qs.current_signing_key,
        algorithms=["HS256"],
        options={"verify_signature": True, "require": ["iss", "sub", "exp", "nbf"]},
    )


def publish_json(client: QStash, **options: Any) -> PublishResponse:
    result = client.message.publish_json(**options)
    assert isinstance(result, PublishResponse)
    return result


def publish(client: QStash, **options: Any) -> PublishResponse:
    result = client.message.publish(**options)
    assert isinstance(result, PublishResponse)
    return result


def raw(qs: QStashServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {qs.token}", **kwargs.pop("headers", {})}
    with httpx.Client(trust_env=False) as http:
        return http.request(method, qs.url + path, headers=headers, **kwargs)


# -- delivery and signing --------------------------------------------------------


def test_publish_delivers_body_and_qstash_headers(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A published message reaches the destination with QStash's delivery headers."""
    result = publish_json(client, url=sink.url("/hook"), body={"n": 1}, headers={"X-Trace": "abc"})
    [request] = sink.wait_for(1, "/hook")
    assert result.deduplicated is False
    assert request.method == "POST"
    assert json.loads(request.body) == {"n": 1}
    assert request.headers["upstash-message-id"] == result.message_id
    assert request.headers["upstash-retried"] == "0"
    assert request.headers["user-agent"] == "Upstash-QStash"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-trace"] == "abc"
    assert not any(name.startswith("upstash-forward") for name in request.headers)


def test_signature_verifies_and_claims_match_qstash(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """The signature verifies with qstash.Receiver and carries QStash's exact claims."""
    before = int(time.time())
    destination = sink.url("/hook/a?x=1&y=two")
    publish(client, url=destination, body="plain text", content_type="text/plain")
    [request] = sink.wait_for(1, "/hook/a")
    verify(qs, request)
    decoded = claims(qs, request)
    assert decoded["iss"] == "Upstash"
    assert decoded["sub"] == destination == request.url
    assert before <= decoded["iat"] == decoded["nbf"] <= time.time()
    assert decoded["exp"] == decoded["iat"] + 300
    assert decoded["jti"]
    digest = hashlib.sha256(b"plain text").digest()
    assert decoded["body"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_each_delivery_has_a_unique_jti(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Every signature carries its own jti, so receivers can reject replays."""
    for n in range(3):
        publish_json(client, url=sink.url("/hook"), body={"n": n})
    requests = sink.wait_for(3, "/hook")
    assert len({claims(qs, r)["jti"] for r in requests}) == 3


def test_method_override_is_used_for_delivery(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Upstash-Method chooses the HTTP method of the delivery."""
    publish_json(client, url=sink.url("/put"), body={}, method="PUT")
    [request] = sink.wait_for(1, "/put")
    assert request.method == "PUT"


# -- time ------------------------------------------------------------------------


def test_delay_is_scaled_by_time_scale(sink: Sink) -> None:
    """Upstash-Delay holds the delivery back for the scaled duration."""
    with QStashServer(time_scale=0.01) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        published = time.time()
        publish_json(client, url=sink.url("/late"), body={}, delay="30s")
        time.sleep(0.1)
        assert sink.requests("/late") == []
        [request] = sink.wait_for(1, "/late")
    assert request.started - published >= 0.3


def test_not_before_wins_over_delay(sink: Sink) -> None:
    """Upstash-Not-Before decides the delivery time even when a delay is given."""
    with QStashServer(time_scale=0.01) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        published = time.time()
        publish_json(
            client, url=sink.url("/nb"), body={}, delay="1d", not_before=int(published) + 20
        )
        [request] = sink.wait_for(1, "/nb")
        message = server.messages()[0]
    assert request.started - published < 0.5
    assert message.not_before == pytest.approx(int(published) + 20, abs=1)


# -- retries ---------------------------------------------------------------------


def test_retries_follow_qstash_backoff_then_dead_letter(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """Failed attempts are retried after min(86400, e^(2.5n)) scaled, then dead-lettered."""
    failure: tuple[int, dict[str, str], bytes] = (500, {}, b"boom")
    sink.respond("/fail", *[failure] * 4)
    result = publish_json(client, url=sink.url("/fail"), body={}, retries=3)
    qs.wait_idle(timeout=10)
    attempts = qs.attempts(result.message_id)
    assert [a.retried for a in attempts] == [0, 1, 2, 3]
    assert [a.status for a in attempts] == [500] * 4
    expected = [math.exp(2.5), math.exp(5.0), math.exp(7.5)]
    assert [a.next_delay for a in attempts] == [*expected, None]
    received = sink.requests("/fail")
    assert [r.headers["upstash-retried"] for r in received] == ["0", "1", "2", "3"]
    for previous, current, delay in zip(received, received[1:], expected, strict=False):
        gap = current.started - previous.finished
        assert delay * SCALE - 0.005 <= gap <= delay * SCALE + 0.25
    [entry] = qs.dlq()
    assert entry.message.message_id == result.message_id
    assert entry.response_status == 500
    assert qs.message(result.message_id).state == "FAILED"


def test_default_backoff_is_capped_at_a_day() -> None:
    """The back-off formula matches QStash's table and caps at 86400 s."""
    assert default_backoff(1) == pytest.approx(12.18, abs=0.01)
    assert default_backoff(3) == pytest.approx(1808.04, abs=0.01)
    assert default_backoff(5) == 86400
    assert default_backoff(50) == 86400


def test_retry_after_header_sets_next_delay(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """A Retry-After answer replaces the back-off for the next attempt."""
    sink.respond("/busy", (429, {"Retry-After": "100"}, b""))
    result = publish_json(client, url=sink.url("/busy"), body={})
    qs.wait_idle()
    first, second = qs.attempts(result.message_id)
    assert first.next_delay == 100.0
    assert second.succeeded
    gap = sink.requests("/busy")[1].started - sink.requests("/busy")[0].finished
    assert gap >= 100 * SCALE - 0.005


def test_retry_delay_expression_is_honoured(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Upstash-Retry-Delay (milliseconds, with `retried`) sets each retry's delay."""
    sink.respond("/expr", (500, {}, b""), (500, {}, b""))
    result = publish_json(
        client, url=sink.url("/expr"), body={}, retry_delay="1000 * (1 + retried)"
    )
    qs.wait_idle()
    assert [a.next_delay for a in qs.attempts(result.message_id)] == [1.0, 2.0, None]


def test_non_retryable_489_goes_straight_to_dlq(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """Status 489 with Upstash-NonRetryable-Error fails the message at once."""
    sink.respond("/fatal", (489, {"Upstash-NonRetryable-Error": "true"}, b"no"))
    result = publish_json(client, url=sink.url("/fatal"), body={}, retries=3)
    qs.wait_idle()
    assert len(qs.attempts(result.message_id)) == 1
    [entry] = qs.dlq()
    assert entry.response_status == 489
    assert entry.response_body == b"no"


def test_connection_errors_count_as_failed_attempts(qs: QStashServer, client: QStash) -> None:
    """A destination that refuses connections is retried, then dead-lettered."""
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    result = publish_json(client, url=f"http://127.0.0.1:{port}/x", body={}, retries=1)
    qs.wait_idle()
    attempts = qs.attempts(result.message_id)
    assert [a.status for a in attempts] == [None, None]
    assert all(a.error for a in attempts)
    assert qs.dlq()[0].response_status == 0


# -- deduplication ---------------------------------------------------------------


def test_deduplication_id_answers_202_with_first_id(qs: QStashServer, sink: Sink) -> None:
    """A repeated deduplication id answers 202 with the first message's id, delivering once."""
    headers = {"Upstash-Deduplication-Id": "order-1", "Content-Type": "application/json"}
    first = raw(qs, "POST", f"/v2/publish/{sink.url('/dedup')}", headers=headers, content=b"{}")
    second = raw(qs, "POST", f"/v2/publish/{sink.url('/dedup')}", headers=headers, content=b"{}")
    assert first.status_code == 201
    assert first.json()["deduplicated"] is False
    assert second.status_code == 202
    assert second.json() == {"messageId": first.json()["messageId"], "deduplicated": True}
    qs.wait_idle()
    assert len(sink.requests("/dedup")) == 1
    assert qs.stats.deduplicated == 1


def test_deduplication_keeps_the_first_message_within_the_window(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A second publish with the same id inside the 10-minute window is the first message."""
    first = publish_json(client, url=sink.url("/dedup"), body={}, deduplication_id="k")
    again = publish_json(client, url=sink.url("/dedup"), body={}, deduplication_id="k")
    assert not first.deduplicated
    assert again.deduplicated
    assert again.message_id == first.message_id
    qs.wait_idle()
    assert len(sink.requests("/dedup")) == 1


def test_deduplication_window_expires(sink: Sink) -> None:
    """After the (scaled) 10-minute window the same id publishes a new message."""
    # A window of 1.2 real seconds, waited out on the server's own clock.
    with QStashServer(time_scale=0.002) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        first = publish_json(client, url=sink.url("/w"), body={}, deduplication_id="k")
        window_ends = server.now() + 600
        while server.now() <= window_ends + 1:
            time.sleep(0.01)
        later = publish_json(client, url=sink.url("/w"), body={}, deduplication_id="k")
    assert not later.deduplicated
    assert later.message_id != first.message_id


def test_content_based_deduplication(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Content-based deduplication drops an identical publish but not a different body."""
    url = sink.url("/content")
    first = publish_json(client, url=url, body={"a": 1}, content_based_deduplication=True)
    same = publish_json(client, url=url, body={"a": 1}, content_based_deduplication=True)
    other = publish_json(client, url=url, body={"a": 2}, content_based_deduplication=True)
    assert same.deduplicated
    assert same.message_id == first.message_id
    assert not other.deduplicated
    qs.wait_idle()
    assert len(sink.requests("/content")) == 2


# -- messages, DLQ and keys API --------------------------------------------------


def test_cancel_pending_message(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """A delayed message can be read and cancelled through the client before delivery."""
    result = publish_json(
        client, url=sink.url("/never"), body={"k": "v"}, delay="1d", headers={"X-A": "1"}
    )
    message = client.message.get(result.message_id)
    assert message.url == sink.url("/never")
    assert message.body == '{"k": "v"}'
    assert message.headers == {"X-A": ["1"]}
    assert message.max_retries == 3
    client.message.cancel(result.message_id)
    qs.wait_idle(timeout=1)
    assert qs.message(result.message_id).state == "CANCELLED"
    with pytest.raises(QStashError, match="404"):
        client.message.get(result.message_id)
    with pytest.raises(QStashError, match="404"):
        client.message.cancel(result.message_id)
    assert sink.requests("/never") == []


def test_dlq_list_and_delete_through_client(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """The real client lists and deletes dead-lettered messages."""
    sink.respond("/dead", (500, {"X-Why": "db"}, b"broken"))
    result = publish_json(client, url=sink.url("/dead"), body={"x": 1}, retries=0)
    qs.wait_idle()
    listing = client.dlq.list()
    [message] = listing.messages
    assert listing.cursor is None
    assert message.message_id == result.message_id
    assert message.url == sink.url("/dead")
    assert message.response_status == 500
    assert message.response_body == "broken"
    assert message.response_headers is not None
    assert message.response_headers["x-why"] == ["db"]
    assert message.body == '{"x": 1}'
    assert client.dlq.get(message.dlq_id).message_id == result.message_id
    client.dlq.delete(message.dlq_id)
    assert client.dlq.list().messages == []
    with pytest.raises(QStashError, match="404"):
        client.dlq.delete(message.dlq_id)


def test_signing_keys_endpoint(qs: QStashServer, client: QStash) -> None:
    """GET /v2/keys answers the server's current and next signing keys."""
    keys = client.signing_key.get()
    assert (keys.current, keys.next) == (DEFAULT_CURRENT_SIGNING_KEY, DEFAULT_NEXT_SIGNING_KEY)


def test_batch_publishes_every_message(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """A batch publishes each item, with its own headers."""
    answers = client.message.batch_json(
        [
            {"url": sink.url("/b1"), "body": {"i": 1}, "headers": {"X-I": "1"}},
            {"url": sink.url("/b2"), "body": {"i": 2}},
        ]
    )
    assert len(answers) == 2
    [one] = sink.wait_for(1, "/b1")
    [two] = sink.wait_for(1, "/b2")
    assert one.headers["x-i"] == "1"
    assert two.json() == {"i": 2}


def test_wrong_or_missing_token_is_rejected(qs: QStashServer) -> None:
    """Requests without the right bearer token get 401 with a JSON error."""
    bad = QStash("wrong", base_url=qs.url, retry=False)
    with pytest.raises(QStashError, match="401"):
        bad.signing_key.get()
    with httpx.Client(trust_env=False) as http:
        response = http.get(qs.url + "/v2/keys")
    assert response.status_code == 401
    assert "error" in response.json()


def test_unknown_route_and_bad_input_answer_json_errors(qs: QStashServer) -> None:
    """Unknown routes answer 404 and invalid headers 400, both as JSON errors."""
    missing = raw(qs, "GET", "/v2/nothing")
    assert missing.status_code == 404
    assert "error" in missing.json()
    bad = raw(qs, "POST", "/v2/publish/http://127.0.0.1:1/x", headers={"Upstash-Delay": "soon"})
    assert bad.status_code == 400
    assert "Upstash-Delay".lower() in bad.json()["error"]
    assert raw(qs, "POST", "/v2/publish/not-a-url").status_code == 400


# -- callbacks -------------------------------------------------------------------


def test_callback_after_each_attempt(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """A signed callback with QStash's JSON shape follows every attempt."""
    sink.respond("/slow-api", (500, {}, b"first"), (200, {"X-R": "1"}, b"result"))
    result = publish_json(
        client,
        url=sink.url("/slow-api"),
        body={"q": 1},
        headers={"X-Src": "s"},
        callback=sink.url("/cb"),
        callback_headers={"Upstash-Callback-Forward-X-Run": "run-1"},
    )
    callbacks = sink.wait_for(2, "/cb")
    qs.wait_idle()
    for request in callbacks:
        verify(qs, request)
        assert request.headers["x-run"] == "run-1"
    bodies = sorted((r.json() for r in callbacks), key=lambda b: b["retried"])
    first, second = bodies
    assert (first["status"], first["retried"]) == (500, 0)
    assert (second["status"], second["retried"]) == (200, 1)
    assert base64.b64decode(second["body"]) == b"result"
    assert second["header"]["x-r"] == ["1"]
    assert second["sourceMessageId"] == result.message_id
    assert second["maxRetries"] == 3
    assert second["url"] == sink.url("/slow-api")
    assert second["method"] == "POST"
    assert second["sourceHeader"] == {"X-Src": ["s"]}
    assert json.loads(base64.b64decode(second["sourceBody"])) == {"q": 1}
    assert second["topicName"] == second["endpointName"] == ""
    assert len(qs.messages(kind="callback")) == 2
    assert qs.stats.published == 1


def test_failure_callback_when_message_dead_letters(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """The failure callback receives the final answer and the DLQ id."""
    sink.respond("/doomed", (500, {}, b"nope"))
    result = publish_json(
        client, url=sink.url("/doomed"), body={}, retries=0, failure_callback=sink.url("/failed")
    )
    [request] = sink.wait_for(1, "/failed")
    qs.wait_idle()
    verify(qs, request)
    payload = request.json()
    [entry] = qs.dlq()
    assert payload["dlqId"] == entry.dlq_id
    assert payload["status"] == 500
    assert base64.b64decode(payload["body"]) == b"nope"
    assert payload["sourceMessageId"] == result.message_id
    assert len(qs.messages(kind="failure_callback")) == 1


# -- fault injection -------------------------------------------------------------


def test_duplicate_next_delivers_twice_sequentially(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """duplicate_next sends the same attempt again after the first answer."""
    qs.faults.duplicate_next()
    result = publish_json(client, url=sink.url("/dup"), body={})
    qs.wait_idle()
    first, second = sink.requests("/dup")
    assert first.headers["upstash-message-id"] == second.headers["upstash-message-id"]
    assert first.headers["upstash-retried"] == second.headers["upstash-retried"] == "0"
    assert second.started >= first.finished
    verify(qs, second)
    assert claims(qs, first)["jti"] != claims(qs, second)["jti"]
    assert [a.copy for a in qs.attempts(result.message_id)] == [0, 1]
    assert qs.faults.armed == 0
    publish_json(client, url=sink.url("/dup"), body={})
    qs.wait_idle()
    assert len(sink.requests("/dup")) == 3


def test_duplicate_with_replay_reuses_the_signature(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """replay=True resends the first copy's exact signature."""
    qs.faults.duplicate_next(replay=True)
    publish_json(client, url=sink.url("/replay"), body={})
    qs.wait_idle()
    first, second = sink.requests("/replay")
    assert first.headers["upstash-signature"] == second.headers["upstash-signature"]


def test_concurrent_copies_overlap_in_time(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """concurrent_copies delivers the copies in parallel."""
    sink.slow("/par", 0.3)
    qs.faults.concurrent_copies(copies=2)
    publish_json(client, url=sink.url("/par"), body={})
    qs.wait_idle()
    one, two = sink.requests("/par")
    assert max(one.started, two.started) < min(one.finished, two.finished)
    assert one.headers["upstash-message-id"] == two.headers["upstash-message-id"]


def test_delay_delivery_holds_an_attempt_back(sink: Sink) -> None:
    """delay_delivery postpones the next attempt by the scaled extra time."""
    with QStashServer(time_scale=0.01) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        server.faults.delay_delivery(30, url=sink.url("/held"))
        published = time.time()
        publish_json(client, url=sink.url("/held"), body={})
        publish_json(client, url=sink.url("/free"), body={})
        server.wait_idle()
        attempts = server.attempts()
    [held] = sink.requests("/held")
    [free] = sink.requests("/free")
    assert held.started - published >= 0.3
    assert free.started - published < 0.3
    assert [a.fault for a in attempts if a.url.endswith("/held")] == ["delay 30s"]


def test_drop_answer_retries_a_delivered_request(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """drop_answer ignores a real answer, so the destination sees a retry."""
    qs.faults.drop_answer()
    result = publish_json(client, url=sink.url("/drop"), body={})
    qs.wait_idle()
    received = sink.requests("/drop")
    assert [r.headers["upstash-retried"] for r in received] == ["0", "1"]
    first, second = qs.attempts(result.message_id)
    assert first.status is None
    assert first.error is not None
    assert first.next_delay == pytest.approx(math.exp(2.5))
    assert second.succeeded
    assert qs.message(result.message_id).state == "DELIVERED"


# -- introspection and lifecycle -------------------------------------------------


def test_stats_count_messages_and_bytes(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Stats count published messages and their body bytes, apart from callbacks."""
    publish(client, url=sink.url("/s"), body="12345")
    publish(client, url=sink.url("/s"), body="123", callback=sink.url("/s-cb"))
    qs.wait_idle()
    stats = qs.stats
    assert (stats.published, stats.published_bytes) == (2, 8)
    assert stats.callbacks == 1
    assert stats.callback_bytes == len(sink.requests("/s-cb")[0].body)
    assert stats.delivered == 3
    assert stats.attempts == 3
    qs.reset()
    assert qs.stats.published == 0
    assert qs.messages() == []


def test_wait_idle_times_out_while_work_is_pending(qs: QStashServer, client: QStash) -> None:
    """wait_idle raises TimeoutError while a delayed message is pending."""
    publish_json(client, url="http://127.0.0.1:1/x", body={}, delay="7d")
    with pytest.raises(TimeoutError):
        qs.wait_idle(timeout=0.1)


def test_stop_joins_every_thread(sink: Sink) -> None:
    """Stopping the server leaves no thread of its own behind."""
    before = set(threading.enumerate())
    with QStashServer(time_scale=SCALE) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        publish_json(client, url=sink.url("/t"), body={})
        publish_json(client, url=sink.url("/t"), body={}, delay="1d")
        sink.wait_for(1, "/t")
    leftover = [t for t in set(threading.enumerate()) - before if t.name.startswith("qstash")]
    assert leftover == []
    with pytest.raises(RuntimeError):
        _ = server.url


def test_parse_duration_accepts_qstash_forms() -> None:
    """Durations accept s, m, h, d, compounds and bare seconds; junk is rejected."""
    assert parse_duration("10s") == 10
    assert parse_duration("5m") == 300
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("15") == 15
    with pytest.raises(ValueError, match="duration"):
        parse_duration("10x")


def test_public_names_are_pinned() -> None:
    """The public API of the module is exactly this sorted list."""
    assert qstash_module.__all__ == sorted(qstash_module.__all__)
    assert qstash_module.__all__ == [
        "DEDUPLICATION_WINDOW",
        "DEFAULT_CURRENT_SIGNING_KEY",
        "DEFAULT_NEXT_SIGNING_KEY",
        "DEFAULT_RETRIES",
        "DEFAULT_TOKEN",
        "DeliveryAttempt",
        "DlqEntry",
        "FaultPlan",
        "Faults",
        "MessageKind",
        "MessageState",
        "PublishedMessage",
        "QStashServer",
        "ScheduleRecord",
        "Stats",
        "WorkflowRunRecord",
        "default_backoff",
        "parse_duration",
        "sign",
    ]


# -- forwarded headers and failed deliveries ---------------------------------------


def test_qstash_headers_win_over_forwarded_ones_of_any_case(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """Forwarded headers named like QStash's own, in any case, never reach the destination."""
    result = publish(
        client,
        url=sink.url("/hook"),
        body="payload",
        headers={
            "upstash-signature": "stale-token",
            "UPSTASH-MESSAGE-ID": "msg_forged",
            "upstash-retried": "7",
            "user-agent": "forged-agent",
            "HOST": "evil.example",
            "content-type": "text/forged",
            "X-Kept": "yes",
        },
        content_type="text/plain",
    )
    [request] = sink.wait_for(1, "/hook")
    own = ["upstash-signature", "upstash-message-id", "upstash-retried", "user-agent", "host"]
    for name in own:
        assert request.count(name) == 1, name
    verify(qs, request)
    assert request.headers["upstash-message-id"] == result.message_id
    assert request.headers["upstash-retried"] == "0"
    assert request.headers["user-agent"] == "Upstash-QStash"
    assert request.headers["host"] == sink.base.removeprefix("http://")
    assert request.headers["content-type"] == "text/plain"
    assert request.headers["x-kept"] == "yes"


def test_forwarded_content_length_does_not_break_the_delivery(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A forwarded Content-Length that contradicts the body is ignored; the body arrives whole."""
    publish(client, url=sink.url("/hook"), body="hello world", headers={"Content-Length": "3"})
    [request] = sink.wait_for(1, "/hook")
    qs.wait_idle()
    assert request.body == b"hello world"
    assert request.count("content-length") == 1
    assert qs.stats.delivered == 1


def test_any_exception_in_a_delivery_ends_as_retries_then_a_dead_letter(
    qs: QStashServer, client: QStash, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while delivering is a failed attempt: retried, then dead-lettered."""
    original = httpx.Client.request

    def failing(self: httpx.Client, method: str, url: Any, **options: Any) -> httpx.Response:
        if str(url).startswith(sink.url("/boom")):
            raise RuntimeError("boom")
        return original(self, method, url, **options)

    monkeypatch.setattr(httpx.Client, "request", failing)
    result = publish_json(client, url=sink.url("/boom"), body={}, retries=2)
    qs.wait_idle()
    message = qs.message(result.message_id)
    assert message.state == "FAILED"
    attempts = qs.attempts(result.message_id)
    assert [a.retried for a in attempts] == [0, 1, 2]
    assert all(a.error is not None and "RuntimeError: boom" in a.error for a in attempts)
    [entry] = qs.dlq()
    assert entry.message.message_id == result.message_id


def test_headers_that_cannot_be_sent_are_refused_at_publish(qs: QStashServer, sink: Sink) -> None:
    """A forwarded header with a line break, or a bad callback setting, is a 400 at publish."""
    items = [{"destination": sink.url("/x"), "headers": {"Upstash-Forward-X": "a\r\nb"}}]
    assert raw(qs, "POST", "/v2/batch", json=items).status_code == 400
    bad_callback = raw(
        qs,
        "POST",
        "/v2/publish/" + sink.url("/x"),
        headers={
            "Upstash-Callback": sink.url("/cb"),
            "Upstash-Callback-Retries": "many",
        },
    )
    assert bad_callback.status_code == 400
    assert qs.stats.published == 0


# -- schedules -------------------------------------------------------------------


def test_cron_next_firing_follows_each_field() -> None:
    """Cron expressions fire at the next matching minute, with steps, lists, names and zones."""
    start = datetime.datetime(2026, 12, 2, 3, 7, 30, tzinfo=datetime.UTC).timestamp()

    def next_utc(text: str, after: float = start) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(Cron.parse(text).next_after(after), datetime.UTC)

    assert next_utc("* * * * *") == datetime.datetime(2026, 12, 2, 3, 8, tzinfo=datetime.UTC)
    assert next_utc("*/15 * * * *").minute == 15
    assert next_utc("0 9 * * MON-FRI") == datetime.datetime(2026, 12, 2, 9, 0, tzinfo=datetime.UTC)
    assert next_utc("0 0 1 JAN *") == datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    assert next_utc("30 4 * * 0").weekday() == 6  # 0 is Sunday
    assert next_utc("30 4 * * 7") == next_utc("30 4 * * 0")
    # Both day fields restricted: either one matching fires (the 5th, then Monday the 7th).
    fifth = next_utc("0 0 5 * MON")
    assert fifth == datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
    assert next_utc("0 0 5 * MON", fifth.timestamp()).day == 7
    tokyo = next_utc("CRON_TZ=Asia/Tokyo 0 9 * * *")
    assert tokyo == datetime.datetime(2026, 12, 3, 0, 0, tzinfo=datetime.UTC)
    bad_expressions = ["* * * *", "61 * * * *", "*/0 * * * *", "5-1 * * * *"]
    bad_expressions.append("CRON_TZ=No/X * * * * *")
    for bad in bad_expressions:
        with pytest.raises(CronError):
            Cron.parse(bad)
    with pytest.raises(CronError):
        Cron.parse("0 0 30 2 *").next_after(start)


def test_schedule_fires_signed_deliveries_on_the_scaled_clock(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A cron schedule publishes a normal signed message at each firing of the QStash clock."""
    schedule_id = client.schedule.create(
        destination=sink.url("/sweep?site=1"),
        cron="* * * * *",
        body="tick",
        headers={"X-Site": "shop"},
        retries=2,
    )
    requests = sink.wait_for(3, "/sweep")
    ids = {request.headers["upstash-message-id"] for request in requests}
    assert len(ids) == 3
    for request in requests:
        verify(qs, request)
        assert request.body == b"tick"
        assert request.headers["x-site"] == "shop"
        assert request.headers["upstash-schedule-id"] == schedule_id
        assert request.url.endswith("/sweep?site=1")
    record = next(r for r in qs.schedules() if r.schedule_id == schedule_id)
    # Firings land on minute boundaries of the QStash clock (late ones are skipped,
    # never bunched, so real gaps depend on the machine's load and are not asserted).
    assert record.last_fired_at is not None
    assert record.last_fired_at % 60 == 0
    assert record.next_fire_at is not None
    assert record.next_fire_at > record.last_fired_at
    assert ids <= set(record.message_ids)
    assert all(qs.message(i).max_retries == 2 for i in ids)


def test_schedule_list_get_pause_resume_delete(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """Schedules are listed, read, paused, resumed and deleted through the client."""
    schedule_id = client.schedule.create(
        destination=sink.url("/tick"), cron="*/5 * * * *", body="b", headers={"X-A": "1"}
    )
    other = client.schedule.create(destination=sink.url("/other"), cron="0 0 1 1 *")
    assert {s.schedule_id for s in client.schedule.list()} == {schedule_id, other}
    got = client.schedule.get(schedule_id)
    assert got.cron == "*/5 * * * *"
    assert got.destination == sink.url("/tick")
    assert got.body == "b"
    assert got.headers == {"X-A": ["1"]}
    assert got.paused is False
    assert got.next_schedule_time is not None
    assert got.next_schedule_time >= got.created_at
    client.schedule.pause(schedule_id)
    paused = client.schedule.get(schedule_id)
    assert paused.paused is True
    assert paused.next_schedule_time is None
    fired = len(next(r for r in qs.schedules() if r.schedule_id == schedule_id).message_ids)
    client.schedule.resume(schedule_id)
    assert client.schedule.get(schedule_id).paused is False
    sink.wait_for(fired + 1, "/tick")
    client.schedule.delete(schedule_id)
    assert [s.schedule_id for s in client.schedule.list()] == [other]
    with pytest.raises(QStashError, match="not found"):
        client.schedule.get(schedule_id)
    assert schedule_id not in {r.schedule_id for r in qs.schedules()}


def test_schedule_with_same_id_replaces_and_wait_idle_ignores_schedules(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """Creating with an existing schedule id replaces it; an idle schedule does not block."""
    first = client.schedule.create(
        destination=sink.url("/a"), cron="0 0 1 1 *", schedule_id="sweep"
    )
    second = client.schedule.create(
        destination=sink.url("/b"), cron="0 0 1 1 *", schedule_id="sweep"
    )
    assert first == second == "sweep"
    [schedule] = client.schedule.list()
    assert schedule.destination == sink.url("/b")
    qs.wait_idle(timeout=5)


def test_schedule_create_rejects_bad_input(qs: QStashServer, sink: Sink) -> None:
    """A missing or invalid cron, or a bad destination, is a 400 with a message."""
    no_cron = raw(qs, "POST", "/v2/schedules/" + sink.url("/x"))
    assert no_cron.status_code == 400
    assert "Upstash-Cron" in no_cron.json()["error"]
    bad_cron = raw(qs, "POST", "/v2/schedules/" + sink.url("/x"), headers={"Upstash-Cron": "x"})
    assert bad_cron.status_code == 400
    bad_url = raw(qs, "POST", "/v2/schedules/nowhere", headers={"Upstash-Cron": "* * * * *"})
    assert bad_url.status_code == 400
    assert raw(qs, "GET", "/v2/schedules").json() == []


# -- flow control ----------------------------------------------------------------


def _max_overlap(requests: list[Received]) -> int:
    events = sorted(
        [(r.started, 1) for r in requests] + [(r.finished, -1) for r in requests],
        key=lambda event: (event[0], event[1]),
    )
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("parallelism", [1, 2])
def test_flow_control_parallelism_caps_concurrent_deliveries(
    qs: QStashServer, client: QStash, sink: Sink, parallelism: int
) -> None:
    """No more deliveries of one flow-control key run at once than its parallelism."""
    sink.slow("/slow", 0.05)
    for n in range(6):
        publish_json(
            client,
            url=sink.url("/slow"),
            body={"n": n},
            flow_control={"key": "k", "parallelism": parallelism},
        )
    requests = sink.wait_for(6, "/slow")
    qs.wait_idle()
    assert _max_overlap(requests) <= parallelism
    assert sorted(r.json()["n"] for r in requests) == list(range(6))
    info = client.flow_control.get("k")
    assert info.parallelism_max == parallelism
    assert info.parallelism_count == 0
    assert info.wait_list_size == 0


def test_flow_control_rate_spreads_deliveries_over_periods(sink: Sink) -> None:
    """At most ``rate`` deliveries of a key start within one period of the QStash clock."""
    scale = 0.01
    with QStashServer(time_scale=scale) as server:
        client = QStash(server.token, base_url=server.url, retry=False)
        for n in range(6):
            publish_json(
                client,
                url=sink.url("/rated"),
                body={"n": n},
                flow_control={"key": "r", "rate": 2, "period": 10},
            )
        sink.wait_for(6, "/rated")
        server.wait_idle()
        starts = sorted(a.started_at for a in server.attempts())
    assert len(starts) == 6
    # Any three starts span about a period (10 QStash seconds = 0.1 s real); without
    # the rate all six would start within a few milliseconds. Half a period of slack
    # absorbs scheduling jitter on a loaded machine.
    spans = [later - earlier for earlier, later in zip(starts, starts[2:], strict=False)]
    assert min(spans) >= 10 * scale * 0.5


def test_flow_control_is_reported_and_validated(qs: QStashServer, client: QStash) -> None:
    """A pending message shows its flow control; a malformed value is a 400."""
    result = publish_json(
        client,
        url="http://127.0.0.1:9/never",
        body={},
        delay=3600,
        flow_control={"key": "shown", "parallelism": 3, "rate": 5, "period": "1m"},
    )
    message = client.message.get(result.message_id)
    assert message.flow_control is not None
    assert message.flow_control.key == "shown"
    assert message.flow_control.parallelism == 3
    assert message.flow_control.rate == 5
    assert message.flow_control.period == 60
    client.message.cancel(result.message_id)
    for value in ["parallelism=0", "speed=3", "rate=x", ""]:
        answer = raw(
            qs,
            "POST",
            "/v2/publish/http://127.0.0.1:9/x",
            headers={"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": value},
        )
        assert answer.status_code == 400, value


# -- command line ----------------------------------------------------------------


def test_export_lines_match_upstash_dev_server() -> None:
    """The export lines name the same variables and defaults as Upstash's dev server."""
    with QStashServer(port=0) as server:
        lines = export_lines(server)
        url = server.url
    assert lines == [
        f"export QSTASH_URL={url}",
        f"export QSTASH_TOKEN={DEFAULT_TOKEN}",
        f"export QSTASH_CURRENT_SIGNING_KEY={DEFAULT_CURRENT_SIGNING_KEY}",
        f"export QSTASH_NEXT_SIGNING_KEY={DEFAULT_NEXT_SIGNING_KEY}",
    ]
    assert url.startswith("http://127.0.0.1:")


def test_cli_prints_exports_and_serves_until_interrupted() -> None:
    """The CLI prints the export lines, answers the API, and exits 0 on SIGTERM."""
    source = Path(__file__).resolve().parents[2] / "src"
    process = subprocess.Popen(
        [sys.executable, "-m", "hookflow_gen.testing._qstash_cli", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(source), "PATH": ""},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        assert lines[0].startswith("export QSTASH_URL=http://127.0.0.1:")
        assert lines[1:] == [
            f"export QSTASH_TOKEN={DEFAULT_TOKEN}",
            f"export QSTASH_CURRENT_SIGNING_KEY={DEFAULT_CURRENT_SIGNING_KEY}",
            f"export QSTASH_NEXT_SIGNING_KEY={DEFAULT_NEXT_SIGNING_KEY}",
        ]
        url = lines[0].removeprefix("export QSTASH_URL=")
        keys = QStash(DEFAULT_TOKEN, base_url=url, retry=False).signing_key.get()
        assert keys.current == DEFAULT_CURRENT_SIGNING_KEY
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
