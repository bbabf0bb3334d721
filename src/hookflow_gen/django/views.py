"""The QStash endpoints: wake-up deliveries, ``call`` callbacks and the sweep.

Every answer is JSON. QStash retries anything but 2xx and 489, so:

=====  ==========================================================================
200    done: the tick ran and the run's next wake-up is published, or the
       delivery was stale (finished run, old sequence number) and ignored
401    missing, forged, expired, tampered, wrong-URL or replayed signature
       (QStash retries: a key fixed in the settings lets the retry in)
405    not a POST
489    a permanent problem (unknown run or workflow, invalid body or ids, a
       body over the endpoint's size), with ``Upstash-NonRetryable-Error:
       true`` so QStash stops at once
503    a retry can help: the database is unavailable, a publish failed, or
       the signing keys are not configured
=====  ==========================================================================

Bodies are read from the stream in chunks, bounded before and while they
are read, never through ``request.body`` (so Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` does not apply; ``CALL_RESPONSE_MAX_BYTES``
does); JSON is depth-checked before it is parsed; every claim of the token
is checked for presence and type; ids are checked for length and characters
before any query.

A delivery that finds a step leased by another tick publishes a delayed
wake-up for the lease's end before it answers 200 (see
``_keep_lease_alive``), so no answer can leave a run without a wake-up.

A signature's ``jti`` is stored until its ``exp`` when it is accepted, so a
captured request cannot be replayed. QStash signs every delivery attempt
afresh, so a retried delivery carries a new token and is not mistaken for a
replay.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from qstash.errors import QStashError

from .._client import current_runtime
from .._journal import StepStatus
from .._runtime import call_response, waiting_children
from .._store import RunState
from ..exceptions import (
    ConfigurationError,
    NonRetryableError,
    UnknownRunError,
    UnknownWorkflowError,
)
from . import _outbox
from ._qstash import QStashConfig, QStashScheduler
from ._store import DjangoStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._runtime import Runtime
    from .._steps import CallStep

__all__ = ["qstash_call", "qstash_schedule", "qstash_sweep", "qstash_webhook", "replay_callback"]

log: logging.Logger = logging.getLogger("hookflow_gen.qstash")

_PRUNE_EVERY = 60.0  # seconds between deletions of expired signature rows
_prune_lock = threading.Lock()
_next_prune = 0.0


class _Refused(Exception):
    """Answer the delivery with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _answer(
    status: int, payload: dict[str, Any], *, retry_after: int | None = None
) -> JsonResponse:
    response = JsonResponse(payload, status=status)
    if status == 489:
        response["Upstash-NonRetryable-Error"] = "true"
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def _refuse(request: HttpRequest, refused: _Refused) -> JsonResponse:
    level = logging.ERROR if refused.status >= 500 else logging.WARNING
    log.log(
        level,
        "QStash delivery %s to %s refused (%d): %s",
        request.headers.get("Upstash-Message-Id", "-"),
        request.path,
        refused.status,
        refused.message,
    )
    return _answer(refused.status, {"error": refused.message}, retry_after=refused.retry_after)


def _permanent(message: str) -> _Refused:
    return _Refused(489, message)


# -- bodies, bounded before they are read ---------------------------------------------

# A wake-up body is about 60 bytes; anything much larger is not from us.
_WAKEUP_MAX_BODY = 64 * 1024
_MAX_JSON_DEPTH = 32
_MAX_SIGNATURE = 4096
_MAX_RUN_ID = 255
_OWNER = re.compile(r"[0-9a-f]{1,64}")
_POSITION = re.compile(r"[0-9]{1,9}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class _Body:
    """A request body read in chunks: its SHA-256, its size, and the bytes if they were kept."""

    data: bytes | None
    size: int
    digest: bytes
    #: The accepted token's ``jti`` (set once the signature is verified).
    token_id: str | None = None


def _read_body(request: HttpRequest, *, keep: int, ceiling: int) -> _Body:
    """Read the body from the stream (never ``request.body``: Django's upload limit is not ours).

    Up to ``keep`` bytes are kept; a longer body is only hashed, so its
    signature can still be checked. A body over ``ceiling`` (by its
    ``Content-Length``, or as read) is refused before or as soon as it
    shows, unread.

    Raises:
        _Refused: 489 for a body over the ceiling.
    """
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(declared)
    except ValueError:
        raise _permanent("the Content-Length header is not a number") from None
    if length > ceiling:
        raise _permanent(f"the body ({length} bytes) is larger than this endpoint accepts")
    digest = hashlib.sha256()
    kept: list[bytes] = []
    size = 0
    while True:
        chunk = request.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > ceiling:
            raise _permanent("the body is larger than this endpoint accepts")
        digest.update(chunk)
        if size <= keep:
            kept.append(chunk)
    return _Body(b"".join(kept) if size <= keep else None, size, digest.digest())


def _json_depth_ok(data: bytes) -> bool:
    """Whether the JSON nests no deeper than ``_MAX_JSON_DEPTH`` (strings are skipped)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > _MAX_JSON_DEPTH:
                return False
        else:
            depth -= 1
    return True


def _json_object(data: bytes) -> dict[str, Any]:
    if not _json_depth_ok(data):
        raise _permanent(f"the body nests JSON deeper than {_MAX_JSON_DEPTH} levels")
    try:
        parsed: object = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _permanent(f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise _permanent("the body must be a JSON object")
    return parsed  # pyright: ignore[reportUnknownVariableType]


def _run_id(value: object, what: str) -> str:
    """A run id fit for a query: text of 1 to 255 printable characters.

    Raises:
        _Refused: 489 otherwise (it can never name a run).
    """
    if not isinstance(value, str) or not value:
        raise _permanent(f"{what} must be a non-empty string")
    if len(value) > _MAX_RUN_ID or not value.isprintable():
        raise _permanent(
            f"{what} must be at most {_MAX_RUN_ID} printable characters (no NUL, control "
            "characters or lone surrogates)"
        )
    return value


# -- signatures --------------------------------------------------------------------


def _config(runtime: Runtime) -> QStashConfig:
    scheduler = runtime.scheduler
    if isinstance(scheduler, QStashScheduler):
        return scheduler.config
    return QStashConfig.from_settings()


def _signed_url(request: HttpRequest, config: QStashConfig) -> str:
    """The URL QStash called, as it signed it (the ``sub`` claim).

    The configured base (``SIGNATURE_BASE_URL``, else ``BASE_URL``) plus the
    request's path and query: the URL the site published, whatever scheme
    and host a proxy in front of it passes on. Only without either setting
    (``DEBUG``) is it rebuilt from the request.
    """
    base = config.signature_base_url or config.base_url
    if base:
        return base + request.get_full_path()
    return request.build_absolute_uri()


def _decode_token(signature: str, keys: tuple[str, str]) -> dict[str, Any]:
    """The claims of a token signed (HS256, issuer Upstash) by one of ``keys``.

    Raises:
        _Refused: 401 when neither key verifies it, or it is malformed.
    """
    problem = "not signed with a configured key"
    for key in keys:
        try:
            # PyJWT's key parameter names cryptography's key classes, which are
            # not installed, so pyright sees part of the signature as unknown.
            claims: dict[str, Any] = jwt.decode(  # pyright: ignore[reportUnknownMemberType]
                signature,
                key,
                algorithms=["HS256"],
                issuer="Upstash",
                options={"require": ["iss", "sub", "exp", "nbf", "jti", "body"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as exc:
            problem = str(exc) or type(exc).__name__
            continue
        except (ValueError, TypeError, RecursionError) as exc:
            # A header segment PyJWT parses before any check: hostile JSON.
            problem = f"malformed token ({type(exc).__name__})"
            continue
        return claims
    raise _Refused(401, f"invalid signature: {problem}")


def _verify(request: HttpRequest, config: QStashConfig, body: _Body) -> str:
    """Check the ``Upstash-Signature`` header, then record its ``jti`` against replays.

    Every claim is checked for presence and type before it is used: ``iss``
    is Upstash, ``sub`` the URL called, ``body`` the base64url SHA-256 of
    the body (with or without padding), ``exp``/``nbf`` numbers PyJWT
    checks against the clock, ``jti`` a token id of at most 255 characters.

    Returns:
        The token's ``jti``, recorded with the delivery's message id.

    Raises:
        _Refused: 401 for a bad signature, 503 when it cannot be checked.
    """
    current, following = config.current_signing_key, config.next_signing_key
    if not current or not following:
        # Never skip verification, even in DEBUG: without keys, refuse (and
        # let QStash retry, so deliveries get through once keys are set).
        raise _Refused(503, "the QStash signing keys are not configured")
    signature = request.headers.get("Upstash-Signature")
    if not signature:
        raise _Refused(401, "missing Upstash-Signature header")
    if len(signature) > _MAX_SIGNATURE or not signature.isascii():
        raise _Refused(401, "invalid signature: not a QStash token")
    claims = _decode_token(signature, (current, following))
    sub, digest, jti, exp = (claims.get(k) for k in ("sub", "body", "jti", "exp"))
    if not isinstance(sub, str) or not isinstance(digest, str):
        raise _Refused(401, "invalid signature: the sub and body claims must be strings")
    if not isinstance(jti, str) or not jti or len(jti) > 255 or not jti.isprintable():
        raise _Refused(401, "invalid signature: the jti claim must be a short string")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise _Refused(401, "invalid signature: the exp claim must be a number")
    url = _signed_url(request, config)
    if sub != url:
        raise _Refused(401, f"invalid signature: signed for {sub[:300]!r}, not {url!r}")
    expected = base64.urlsafe_b64encode(body.digest).rstrip(b"=").decode("ascii")
    if not hmac.compare_digest(digest.rstrip("="), expected):
        raise _Refused(401, "invalid signature: the body does not match its hash")
    _record_token(jti, exp, _message_id(request))
    return jti


def _message_id(request: HttpRequest) -> str | None:
    value = request.headers.get("Upstash-Message-Id", "")
    return value if 0 < len(value) <= 128 and value.isprintable() else None


def _record_token(jti: str, exp: float, message_id: str | None) -> None:
    from .models import SeenSignature

    try:
        expires = datetime.fromtimestamp(exp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _Refused(401, "invalid signature: the exp claim is out of range") from None
    try:
        # Its own transaction, committed before the tick: a delivery that then
        # fails is retried by QStash with a new token, never with this one.
        with transaction.atomic(using=_db()):
            SeenSignature.objects.using(_db()).create(
                jti=jti, expires_at=expires, message_id=message_id
            )
    except IntegrityError:
        raise _Refused(401, f"replayed signature (token {jti} was used before)") from None
    _prune_now_and_then()


def _prune_now_and_then() -> None:
    global _next_prune
    now = time.monotonic()
    with _prune_lock:
        if now < _next_prune:
            return
        _next_prune = now + _PRUNE_EVERY
    from .models import SeenSignature

    SeenSignature.objects.using(_db()).filter(expires_at__lt=datetime.now(tz=UTC)).delete()


def _db() -> str:
    from django.db import router

    from .models import SeenSignature

    return router.db_for_write(SeenSignature)


def _wakeup(body: _Body) -> tuple[str, int]:
    assert body.data is not None
    data = _json_object(body.data)
    run_id, seq = data.get("run_id"), data.get("seq")
    if set(data) != {"run_id", "seq"}:
        raise _permanent('the body must be {"run_id": "<id>", "seq": <int>}')
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**31:
        raise _permanent('the body must be {"run_id": "<id>", "seq": <int>}')
    return _run_id(run_id, "run_id"), seq


def _retried(request: HttpRequest) -> int:
    value = request.headers.get("Upstash-Retried", "0")
    return int(value) if _POSITION.fullmatch(value) else 0


# -- the hand-off after a tick -----------------------------------------------------


def _hand_off(
    request: HttpRequest, runtime: Runtime, run_id: str, delivered_seq: int | None, body: _Body
) -> RunState:
    """Make sure the run's next wake-up is out before the delivery is acknowledged.

    - The run's current wake-up is published again (deduplicated: free when
      it went out), and its outbox rows are sent; on a retried delivery
      those of its parent and children too (the first attempt may have died
      after committing their wake-ups).
    - When another delivery of this same message was accepted before (a
      concurrent copy, or an attempt that died), a step still leased by
      another tick gets a wake-up for when its lease lapses, unless the run
      has another wake-up on its way (see ``_keep_lease_alive``).

    Raises:
        _Refused: 503 when a publish failed: QStash retries the delivery,
            which tries again.
    """
    store = runtime.store
    run = store.get_run(run_id)
    if run is None:
        raise _permanent(f"no run has id {run_id!r}")
    scheduler = runtime.scheduler
    if not isinstance(scheduler, QStashScheduler):
        return run
    message_id = request.headers.get("Upstash-Message-Id", "")[:128]
    retried = _retried(request)
    try:
        scheduler.repair(runtime, run, -1 if delivered_seq is None else delivered_seq, message_id)
        others = _relatives(runtime, run) if retried else []
        for other in others:
            scheduler.repair(runtime, other, -1, message_id)
        if isinstance(store, DjangoStore):
            for owed in (run.run_id, *(other.run_id for other in others)):
                report = _outbox.flush(scheduler, store.db, run_id=owed)
                if report.failed:
                    raise _Refused(503, f"could not publish a wake-up: {report.error}")
        if not run.status.finished and _copy_elsewhere(request, body):
            _keep_lease_alive(runtime, scheduler, run, delivered_seq)
    except (QStashError, httpx.HTTPError, ConfigurationError) as exc:
        raise _Refused(503, f"could not publish the next wake-up: {exc}") from None
    return run


def _relatives(runtime: Runtime, run: RunState) -> list[RunState]:
    store = runtime.store
    ids: list[str] = []
    if run.parent_run_id is not None:
        ids.append(run.parent_run_id)
    if not run.status.finished:
        ids.extend(waiting_children(store, run.run_id))
    found = [store.get_run(other) for other in ids]
    return [other for other in found if other is not None and not other.status.finished]


def _copy_elsewhere(request: HttpRequest, body: _Body) -> bool:
    """Whether another delivery of this very message was accepted within the token lifetime.

    Only then can this answer end a message another tick depends on: a copy
    of it running concurrently, or its earlier attempt that died. A message
    with no id counts as copied (the safe side).
    """
    from .models import SeenSignature

    message_id = _message_id(request)
    if message_id is None:
        return True
    copies = SeenSignature.objects.using(_db()).filter(message_id=message_id)
    return copies.exclude(jti=body.token_id or "").exists()


def _keep_lease_alive(
    runtime: Runtime, scheduler: QStashScheduler, run: RunState, delivered_seq: int | None
) -> None:
    """Publish a wake-up for when a step leased by another tick lapses, if nothing else comes.

    This delivery is about to be acknowledged, and another delivery of the
    same message was accepted before (``_copy_elsewhere``). If a ``run``
    step of the run is leased by another tick (that concurrent copy, or an
    attempt that died), the message that tick depends on ends with this
    answer: should the holder die, nothing would wake the run when its lease
    lapses. So a delayed wake-up for the
    lease's end is published before answering 200, deduplicated by the
    lease's owner: any number of deliveries that find the same lease cost
    one message. (A retryable 503 would also keep this delivery alive, but
    it spends QStash's retries, which a long step can exhaust into the DLQ,
    and it cannot work with ``RETRIES = 0``.) ``call`` steps are left to
    their callback, and the sweep repairs a callback that never came.
    """
    now = runtime.clock.now()
    wake_at = run.wake_at
    if wake_at is not None and (wake_at > now or run.wake_seq != delivered_seq):
        return  # another wake-up is on its way
    held = [
        record
        for record in runtime.store.steps(run.run_id)
        if record.status is StepStatus.PENDING
        and record.kind == "run"
        and record.lease_until is not None
        and record.lease_until > now
        and record.lease_owner is not None
    ]
    if not held:
        return
    last = max(held, key=lambda record: record.lease_until or now)
    assert last.lease_until is not None and last.lease_owner is not None
    scheduler.publish_wakeup(
        run.run_id, run.wake_seq, last.lease_until, after=f"lease-{last.lease_owner}"
    )


def _finish(run: RunState, extra: dict[str, Any] | None = None) -> JsonResponse:
    payload: dict[str, Any] = {
        "status": "done",
        "run_id": run.run_id,
        "run_status": run.status.value,
        "wake_seq": run.wake_seq,
    }
    payload.update(extra or {})
    return _answer(200, payload)


# -- the views ---------------------------------------------------------------------


def _not_post() -> JsonResponse:
    response = _answer(405, {"error": "QStash delivers with POST only"})
    response["Allow"] = "POST"
    return response


def _delivery(
    what: str,
    handle: Callable[[HttpRequest, Runtime, _Body], JsonResponse],
    limits: Callable[[QStashConfig], tuple[int, int]],
) -> Callable[[HttpRequest], JsonResponse]:
    """A QStash endpoint: POST only, body bounded, signature verified, every failure JSON.

    ``limits`` gives the bytes of body kept and the most that is read at
    all. Permanent problems answer 489 (QStash stops retrying), passing
    ones 503 (QStash retries), and only a bug in this code a 500.
    """

    @functools.wraps(handle)
    def view(request: HttpRequest) -> JsonResponse:
        if request.method != "POST":
            return _not_post()
        try:
            runtime = current_runtime()
            config = _config(runtime)
            keep, ceiling = limits(config)
            body = _read_body(request, keep=keep, ceiling=ceiling)
            body = dataclasses.replace(body, token_id=_verify(request, config, body))
            return handle(request, runtime, body)
        except _Refused as refused:
            return _refuse(request, refused)
        except (UnknownRunError, UnknownWorkflowError) as exc:
            return _refuse(request, _permanent(str(exc)))
        except ConfigurationError as exc:
            return _refuse(request, _Refused(503, str(exc)))
        except (QStashError, httpx.HTTPError) as exc:
            return _refuse(request, _Refused(503, f"could not publish a wake-up: {exc}"))
        except DatabaseError as exc:
            return _refuse(request, _Refused(503, f"database unavailable: {exc}"))
        except Exception as exc:
            log.exception("QStash %s to %s failed", what, request.path)
            return _answer(500, {"error": f"internal error: {type(exc).__name__}"})

    return csrf_exempt(transaction.non_atomic_requests(view))


def _small(config: QStashConfig) -> tuple[int, int]:
    return _WAKEUP_MAX_BODY, _WAKEUP_MAX_BODY


def _callback_limits(config: QStashConfig) -> tuple[int, int]:
    # The callback carries the answer base64-encoded (4/3 of its size), next
    # to the request's own body and headers: keep room for both. Longer ones
    # are still read (and hashed) up to a ceiling, so the step can be failed.
    keep = 2 * math.ceil(config.call_response_max_bytes * 4 / 3) + 1024 * 1024
    return keep, max(64 * 1024 * 1024, 4 * keep)


def _wake_up(request: HttpRequest, runtime: Runtime, body: _Body) -> JsonResponse:
    """A wake-up delivery ``{"run_id", "seq"}``: tick the run, then hand off its next wake-up."""
    run_id, seq = _wakeup(body)
    run = runtime.store.get_run(run_id)
    if run is None:
        raise _permanent(f"no run has id {run_id!r}")
    if run.status.finished or seq < run.wake_seq:
        reason = f"run is {run.status.value}" if run.status.finished else "stale wake-up"
        run = _hand_off(request, runtime, run_id, seq, body)
        return _answer(
            200,
            {"status": "ignored", "reason": reason, "run_id": run_id, "seq": seq},
        )
    report = runtime.tick(run_id)
    run = _hand_off(request, runtime, run_id, seq, body)
    return _finish(run, {"steps_run": report.steps_run})


def _callback_target(request: HttpRequest) -> tuple[str, int, str]:
    """The run, position and lease owner named in the callback URL's query, validated."""
    owner = request.GET.get("owner", "")
    position = request.GET.get("position", "")
    run_id = _run_id(request.GET.get("run", ""), "the callback URL's run")
    if not _POSITION.fullmatch(position):
        raise _permanent("the callback URL has no valid position")
    if not _OWNER.fullmatch(owner):
        raise _permanent("the callback URL has no valid owner")
    return run_id, int(position), owner


def _call_back(request: HttpRequest, runtime: Runtime, body: _Body) -> JsonResponse:
    """QStash's callback for a ``call`` step: record the answer, then tick the run."""
    run_id, position, owner = _callback_target(request)
    limit = _config(runtime).call_response_max_bytes
    if body.data is None:
        answer: Callable[[CallStep[Any]], object] = _TooLarge(body.size, limit, "callback")
    else:
        answer = _call_answer(_json_object(body.data), limit)
    return _record_call(
        (request, body), runtime, run_id=run_id, position=position, owner=owner, answer=answer
    )


def _record_call(
    delivery: tuple[HttpRequest, _Body] | None,
    runtime: Runtime,
    *,
    run_id: str,
    position: int,
    owner: str,
    answer: Callable[[CallStep[Any]], object],
) -> JsonResponse:
    if runtime.store.get_run(run_id) is None:
        raise _permanent(f"no run has id {run_id!r}")
    accepted = runtime.complete_step(run_id, position, owner, answer)
    if delivery is not None:
        run = _hand_off(delivery[0], runtime, run_id, None, delivery[1])
    else:
        found = runtime.store.get_run(run_id)
        assert found is not None
        run = found
    status = "done" if accepted else "ignored"
    return _answer(200, {"status": status, "run_id": run_id, "position": position,
                         "run_status": run.status.value})  # fmt: skip


def replay_callback(runtime: Runtime, url_query: str, data: bytes) -> bool:
    """Process a dead-lettered ``call`` callback (read back from QStash's DLQ); recorded?

    The body came from QStash's API over the token, so it is taken as a
    signed delivery would be; the ids in it are validated all the same.

    Raises:
        _Refused: the message cannot name a step of a run (489 material).
    """
    from django.http import QueryDict

    query = QueryDict(url_query)
    fake = HttpRequest()
    fake.GET = query
    run_id, position, owner = _callback_target(fake)
    limit = _config(runtime).call_response_max_bytes
    _, keep_limit = _callback_limits(_config(runtime))
    if len(data) > keep_limit:
        answer: Callable[[CallStep[Any]], object] = _TooLarge(len(data), limit, "callback")
    else:
        answer = _call_answer(_json_object(data), limit)
    response = _record_call(
        None, runtime, run_id=run_id, position=position, owner=owner, answer=answer
    )
    return response.status_code == 200 and json.loads(response.content)["status"] == "done"


def _sweep(request: HttpRequest, runtime: Runtime, body: _Body) -> JsonResponse:
    """The sweep, called by a QStash schedule: outbox, stranded runs, dead letters."""
    from ._sweep import sweep

    report = sweep(runtime)
    return _answer(200, {"status": "done", **report.as_json()})


def _scheduled(request: HttpRequest, runtime: Runtime, body: _Body) -> JsonResponse:
    """A QStash schedule fired: start the run of its cron tick, once however often delivered.

    The schedule is named in the (signed) query string. The tick is the one
    the message was created for: QStash creates a schedule's message when
    the cron fires, and every retry or duplicate of it has the same id, so
    the message's ``createdAt`` (asked of QStash) names the same tick, and
    the tick's run id makes the start idempotent.
    """
    from ._schedules import find_schedule, start_tick

    name = request.GET.get("schedule", "")
    found = find_schedule(name) if 0 < len(name) <= 255 else None
    if found is None:
        raise _permanent(f"no registered schedule is called {name[:300]!r}")
    workflow, schedule = found
    message_id = _message_id(request)
    scheduler = runtime.scheduler
    if message_id is None or not isinstance(scheduler, QStashScheduler):
        raise _permanent("a schedule delivery needs an Upstash-Message-Id, on the QStash scheduler")
    message = scheduler.client.message.get(message_id)
    fired_at = datetime.fromtimestamp(message.created_at / 1000, UTC)
    run_id, created = start_tick(runtime, workflow, schedule, fired_at)
    return _answer(200, {"status": "started" if created else "duplicate", "run_id": run_id})


qstash_webhook: Callable[[HttpRequest], JsonResponse] = _delivery("delivery", _wake_up, _small)
"""The wake-up webhook: ``hookflow:qstash``."""

qstash_call: Callable[[HttpRequest], JsonResponse] = _delivery(
    "callback", _call_back, _callback_limits
)
"""The ``call`` steps' callback: ``hookflow:qstash-call``."""

qstash_sweep: Callable[[HttpRequest], JsonResponse] = _delivery("sweep", _sweep, _small)
"""The sweep a QStash schedule calls: ``hookflow:qstash-sweep``."""

qstash_schedule: Callable[[HttpRequest], JsonResponse] = _delivery("schedule", _scheduled, _small)
"""A cron schedule's firing (``?schedule=NAME``): ``hookflow:qstash-schedule``."""


@dataclasses.dataclass(frozen=True, slots=True)
class _TooLarge:
    """An answer over ``CALL_RESPONSE_MAX_BYTES``: the step fails, never to be retried."""

    size: int
    limit: int
    what: str

    def __call__(self, step: CallStep[Any]) -> object:
        raise NonRetryableError(
            f"call {step.name!r}: the {self.what} is {self.size} bytes, over "
            f"HOOKFLOW['QSTASH']['CALL_RESPONSE_MAX_BYTES'] ({self.limit} bytes)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _CallAnswer:
    """What QStash's callback says about one attempt of a call."""

    status: int
    headers: dict[str, str]
    text: str
    url: str

    def __call__(self, step: CallStep[Any]) -> object:
        if self.status == 0:
            # No HTTP answer (connection refused, timeout): a transport error,
            # retried by the step's policy as an httpx error would be.
            raise ConnectionError(f"QStash could not reach {self.url or step.url}: {self.text}")
        return call_response(step, self.status, self.headers, self.text)


def _call_answer(data: dict[str, Any], limit: int) -> Callable[[CallStep[Any]], object]:
    status = data.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 999:
        raise _permanent("the callback body has no integer status")
    raw_headers: object = data.get("header") or {}
    if not isinstance(raw_headers, dict):
        raise _permanent("the callback body's header must be an object")
    headers: dict[str, str] = {}
    # QStash lists each header's values: {"Content-Type": ["application/json"]}.
    header_map: dict[Any, Any] = raw_headers  # pyright: ignore[reportUnknownVariableType]
    for name, value in header_map.items():
        values: list[Any] = value if isinstance(value, list) else [value]  # pyright: ignore[reportUnknownVariableType]
        headers[str(name)] = ", ".join(str(v) for v in values)
    encoded = data.get("body") or ""
    if not isinstance(encoded, str):
        raise _permanent("the callback body's body must be base64 text")
    if len(encoded) > math.ceil(limit * 4 / 3) + 4:
        return _TooLarge(len(encoded) * 3 // 4, limit, "answer")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _permanent("the callback body's body is not base64") from None
    if len(raw) > limit:
        return _TooLarge(len(raw), limit, "answer")
    url = data.get("url")
    return _CallAnswer(
        status, headers, raw.decode("utf-8", errors="replace"), url if isinstance(url, str) else ""
    )
