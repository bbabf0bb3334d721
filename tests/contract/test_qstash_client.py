"""Contract tests: every API of the official ``qstash`` client, against the local server."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import pytest
from qstash import QStash, Receiver
from qstash.errors import QStashError
from qstash.log import LogState
from qstash.message import BatchResponse, EnqueueResponse, PublishResponse

from hookflow_gen.testing.qstash import QStashServer
from tests.qstash_sink import Received, Sink

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def sink() -> Iterator[Sink]:
    receiver = Sink()
    yield receiver
    receiver.close()


@pytest.fixture
def qs() -> Iterator[QStashServer]:
    with QStashServer(time_scale=0.001) as server:
        yield server


@pytest.fixture
def client(qs: QStashServer) -> QStash:
    return QStash(qs.token, base_url=qs.url, retry=False)


def verified(qs: QStashServer, request: Received) -> Received:
    Receiver(
        current_signing_key=qs.current_signing_key, next_signing_key=qs.next_signing_key
    ).verify(
        signature=request.headers["upstash-signature"], body=request.body.decode(), url=request.url
    )
    return request


def test_publish_get_cancel_and_bulk_cancel(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Publish and publish_json deliver; get, cancel, cancel_many and cancel_all act on pending."""
    sent = client.message.publish(url=sink.url("/a"), body="text", content_type="text/plain")
    assert isinstance(sent, PublishResponse)
    [request] = sink.wait_for(1, "/a")
    assert verified(qs, request).body == b"text"
    later = sink.url("/later")
    held = [client.message.publish_json(url=later, body={}, delay=3600) for _ in range(4)]
    ids = [h.message_id for h in held if isinstance(h, PublishResponse)]
    assert client.message.get(ids[0]).url == sink.url("/later")
    client.message.cancel(ids[0])
    assert client.message.cancel_many(ids[1:3]) == 2
    assert client.message.cancel_all() == 1
    with pytest.raises(QStashError):
        client.message.get(ids[3])
    qs.wait_idle()
    assert sink.requests("/later") == []


def test_batch_and_batch_json(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """A batch publishes each of its messages, to URLs, queues and URL groups alike."""
    client.url_group.upsert_endpoints(
        url_group="pair", endpoints=[{"url": sink.url("/g1")}, {"url": sink.url("/g2")}]
    )
    answers = client.message.batch_json(
        [
            {"url": sink.url("/b1"), "body": {"n": 1}},
            {"url": sink.url("/b2"), "body": {"n": 2}, "queue": "batched"},
            {"url_group": "pair", "body": {"n": 3}},
        ]
    )
    assert isinstance(answers[0], BatchResponse)
    assert isinstance(answers[2], list)
    assert len(answers[2]) == 2
    plain = client.message.batch([{"url": sink.url("/b3"), "body": "raw"}])
    assert isinstance(plain[0], BatchResponse)
    for path in ["/b1", "/b2", "/g1", "/g2", "/b3"]:
        verified(qs, sink.wait_for(1, path)[0])
    assert client.queue.get("batched").name == "batched"


def test_enqueue_delivers_in_order_one_at_a_time(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A queue of parallelism 1 delivers its messages in order, never two at once."""
    client.queue.upsert("orders", parallelism=1)
    sink.slow("/q", 0.02)
    for n in range(5):
        answer = client.message.enqueue_json(queue="orders", url=sink.url("/q"), body={"n": n})
        assert isinstance(answer, EnqueueResponse)
    requests = sink.wait_for(5, "/q")
    assert [r.json()["n"] for r in requests] == [0, 1, 2, 3, 4]
    for earlier, later in itertools.pairwise(requests):
        assert earlier.finished <= later.started
    qs.wait_idle()
    queue = client.queue.get("orders")
    assert (queue.parallelism, queue.lag, queue.paused) == (1, 0, False)


def test_queue_pause_holds_messages_until_resume(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A paused queue keeps its messages; resuming delivers them; delete cancels the rest."""
    client.queue.upsert("held", parallelism=2, paused=True)
    for n in range(3):
        client.message.enqueue_json(queue="held", url=sink.url("/held"), body={"n": n})
    assert client.queue.get("held").lag == 3
    assert sink.requests("/held") == []
    client.queue.resume("held")
    assert sorted(r.json()["n"] for r in sink.wait_for(3, "/held")) == [0, 1, 2]
    client.queue.pause("held")
    client.message.enqueue_json(queue="held", url=sink.url("/held"), body={"n": 3})
    assert client.queue.get("held").paused is True
    assert [q.name for q in client.queue.list()] == ["held"]
    client.queue.delete("held")
    assert client.queue.list() == []
    qs.wait_idle()
    assert len(sink.requests("/held")) == 3


def test_schedules_through_the_client(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Every schedule call of the client works: create, get, list, pause, resume, delete."""
    schedule_id = client.schedule.create_json(
        destination=sink.url("/cron"), cron="* * * * *", body={"tick": True}
    )
    verified(qs, sink.wait_for(1, "/cron")[0])
    assert client.schedule.get(schedule_id).cron == "* * * * *"
    assert [s.schedule_id for s in client.schedule.list()] == [schedule_id]
    client.schedule.pause(schedule_id)
    client.schedule.resume(schedule_id)
    client.schedule.delete(schedule_id)
    assert client.schedule.list() == []


def test_dlq_get_list_delete(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Dead letters are listed, read and deleted, singly and in bulk."""
    failure: tuple[int, dict[str, str], bytes] = (500, {}, b"no")
    sink.respond("/dead", failure, failure, failure)
    for _ in range(3):
        client.message.publish_json(url=sink.url("/dead"), body={}, retries=0)
    qs.wait_idle()
    listed = client.dlq.list()
    assert len(listed.messages) == 3
    first = client.dlq.get(listed.messages[0].dlq_id)
    assert first.response_status == 500
    client.dlq.delete(first.dlq_id)
    assert client.dlq.delete_many([m.dlq_id for m in listed.messages[1:]]) == 2
    assert client.dlq.list().messages == []


def test_logs_list_every_state_change(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """``/v2/events`` lists a message's states, newest first, with filters."""
    sink.respond("/flaky", (500, {}, b"once"))
    sent = client.message.publish_json(url=sink.url("/flaky"), body={}, retries=1)
    assert isinstance(sent, PublishResponse)
    qs.wait_idle()
    logs = client.log.list(filter={"message_id": sent.message_id}).logs
    states = [log.state for log in reversed(logs)]
    assert states == [
        LogState.CREATED,
        LogState.ACTIVE,
        LogState.ERROR,
        LogState.RETRY,
        LogState.ACTIVE,
        LogState.DELIVERED,
    ]
    delivered = client.log.list(filter={"state": LogState.DELIVERED}).logs
    assert [log.message_id for log in delivered] == [sent.message_id]
    assert delivered[0].response_status == 200


def test_url_groups(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """URL groups are upserted, listed, read, trimmed and deleted; a publish fans out."""
    client.url_group.upsert_endpoints(
        url_group="team",
        endpoints=[{"url": sink.url("/u1"), "name": "one"}, {"url": sink.url("/u2")}],
    )
    group = client.url_group.get("team")
    endpoints = [(e.url, e.name) for e in group.endpoints]
    assert endpoints == [(sink.url("/u1"), "one"), (sink.url("/u2"), None)]
    answers = client.message.publish_json(url_group="team", body={"hello": 1})
    assert isinstance(answers, list)
    assert {a.url for a in answers} == {sink.url("/u1"), sink.url("/u2")}
    verified(qs, sink.wait_for(1, "/u1")[0])
    verified(qs, sink.wait_for(1, "/u2")[0])
    client.url_group.remove_endpoints(url_group="team", endpoints=[{"name": "one"}])
    assert [e.url for e in client.url_group.get("team").endpoints] == [sink.url("/u2")]
    assert [g.name for g in client.url_group.list()] == ["team"]
    client.url_group.delete("team")
    assert client.url_group.list() == []
    with pytest.raises(QStashError):
        client.url_group.get("team")


def test_signing_keys_get_and_rotate(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Keys are read and rotated; deliveries after a rotation are signed with the new key."""
    keys = client.signing_key.get()
    rotated = client.signing_key.rotate()
    assert rotated.current == keys.next
    assert rotated.next != keys.next
    client.message.publish_json(url=sink.url("/after"), body={})
    verified(qs, sink.wait_for(1, "/after")[0])


def test_flow_control_info(qs: QStashServer, client: QStash, sink: Sink) -> None:
    """Flow-control keys and the global parallelism are reported through the client."""
    sink.slow("/fc", 0.02)
    for n in range(3):
        client.message.publish_json(
            url=sink.url("/fc"), body={"n": n}, flow_control={"key": "fc", "parallelism": 1}
        )
    sink.wait_for(3, "/fc")
    qs.wait_idle()
    info = client.flow_control.get("fc")
    assert (info.parallelism_max, info.parallelism_count, info.wait_list_size) == (1, 0, 0)
    assert client.flow_control.get_global_parallelism().parallelism_count == 0


def test_flow_control_pause_resume_pin_unpin_and_reset(
    qs: QStashServer, client: QStash, sink: Sink
) -> None:
    """A paused key holds its messages until resumed; pins override messages' settings."""
    client.flow_control.pause("held")
    for n in range(2):
        client.message.publish_json(
            url=sink.url("/fc-held"), body={"n": n}, flow_control={"key": "held", "parallelism": 5}
        )
    # Publishing answers first; the message joins the key's wait list when its
    # delivery comes up, as on QStash: look until both are held.
    deadline = time.monotonic() + 60
    info = client.flow_control.get("held")
    while info.wait_list_size < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
        info = client.flow_control.get("held")
    assert (info.is_paused, info.wait_list_size) == (True, 2)
    assert sink.requests("/fc-held") == []
    client.flow_control.resume("held")
    assert sorted(r.json()["n"] for r in sink.wait_for(2, "/fc-held")) == [0, 1]
    client.flow_control.pin("held", {"parallelism": 1, "rate": 4, "period": 2})
    pinned = client.flow_control.get("held")
    assert (pinned.is_pinned_parallelism, pinned.is_pinned_rate) == (True, True)
    assert (pinned.parallelism_max, pinned.rate_max, pinned.rate_period) == (1, 4, 2)
    client.flow_control.reset_rate("held")
    assert client.flow_control.get("held").rate_count == 0
    client.flow_control.unpin("held", {"parallelism": True, "rate": True})
    unpinned = client.flow_control.get("held")
    assert (unpinned.is_pinned_parallelism, unpinned.is_pinned_rate) == (False, False)
    qs.wait_idle()
