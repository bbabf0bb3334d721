"""The QStash webhooks: wake-up deliveries and ``call`` callbacks.

Every answer is JSON. QStash retries anything but 2xx and 489, so:

=====  ==========================================================================
200    done: the tick ran and the run's next wake-up is published, or the
       delivery was stale (finished run, old sequence number) and ignored
401    missing, forged, expired, tampered, wrong-URL or replayed signature
       (QStash retries: a key fixed in the settings lets the retry in)
405    not a POST
489    a permanent problem (unknown run or workflow, invalid body), with
       ``Upstash-NonRetryable-Error: true`` so QStash stops at once
503    a retry can help: the database is unavailable, a publish failed, a step
       of the run is held by a tick that may have died (``Retry-After`` says
       when its lease lapses), or the signing keys are not configured
=====  ==========================================================================

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
import json
import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from qstash import Receiver
from qstash.errors import QStashError, SignatureError

from .._client import current_runtime
from .._journal import StepStatus
from .._runtime import call_response, waiting_children
from .._store import RunState
from ..exceptions import ConfigurationError, UnknownRunError, UnknownWorkflowError
from ._qstash import QStashConfig, QStashScheduler

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._runtime import Runtime
    from .._steps import CallStep

__all__ = ["qstash_call", "qstash_webhook"]

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


# -- signatures --------------------------------------------------------------------


def _config(runtime: Runtime) -> QStashConfig:
    scheduler = runtime.scheduler
    if isinstance(scheduler, QStashScheduler):
        return scheduler.config
    return QStashConfig.from_settings()


def _signed_url(request: HttpRequest, config: QStashConfig) -> str:
    """The URL QStash called, as it signed it (the ``sub`` claim)."""
    if config.signature_base_url:
        return config.signature_base_url + request.get_full_path()
    return request.build_absolute_uri()


def _verify(request: HttpRequest, config: QStashConfig) -> None:
    """Check the ``Upstash-Signature`` header, then record its ``jti`` against replays.

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
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(401, "the body is not UTF-8, so it cannot match a signature") from None
    url = _signed_url(request, config)
    try:
        Receiver(current, following).verify(signature=signature, body=body, url=url)
    except SignatureError as exc:
        raise _Refused(401, f"invalid signature: {exc}") from None
    # Verified with one of our keys, so the claims can be read as they are.
    # PyJWT's key parameter names cryptography's key classes, which are not
    # installed, so pyright sees part of the signature as unknown.
    claims: dict[str, Any] = jwt.decode(  # pyright: ignore[reportUnknownMemberType]
        signature, options={"verify_signature": False}
    )
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti or not isinstance(exp, int | float):
        raise _Refused(401, "the signature has no jti or exp claim: a replay could not be told")
    _record_token(jti, exp)


def _record_token(jti: str, exp: float) -> None:
    from .models import SeenSignature

    expires = datetime.fromtimestamp(exp, tz=UTC)
    try:
        # Its own transaction, committed before the tick: a delivery that then
        # fails is retried by QStash with a new token, never with this one.
        with transaction.atomic(using=_db()):
            SeenSignature.objects.using(_db()).create(jti=jti, expires_at=expires)
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


# -- bodies ------------------------------------------------------------------------


def _json_object(request: HttpRequest) -> dict[str, Any]:
    try:
        data: object = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _permanent(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _permanent("the body must be a JSON object")
    return data  # pyright: ignore[reportUnknownVariableType]


def _wakeup(request: HttpRequest) -> tuple[str, int]:
    data = _json_object(request)
    run_id, seq = data.get("run_id"), data.get("seq")
    if set(data) != {"run_id", "seq"} or not isinstance(run_id, str) or not run_id:
        raise _permanent('the body must be {"run_id": "<id>", "seq": <int>}')
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise _permanent('the body must be {"run_id": "<id>", "seq": <int>}')
    return run_id, seq


def _retried(request: HttpRequest) -> int:
    try:
        return int(request.headers.get("Upstash-Retried", "0"))
    except ValueError:
        return 0


# -- the hand-off after a tick -----------------------------------------------------


def _hand_off(
    request: HttpRequest, runtime: Runtime, run_id: str, delivered_seq: int | None
) -> RunState:
    """Make sure the run's next wake-up is published before the delivery is acknowledged.

    Raises:
        _Refused: 503 when a publish failed, or when this is a retried
            delivery and a step is still held by a lease (its holder may
            have died with the first attempt: QStash comes back once it lapses).
    """
    store = runtime.store
    run = store.get_run(run_id)
    if run is None:
        raise _permanent(f"no run has id {run_id!r}")
    scheduler = runtime.scheduler
    if not isinstance(scheduler, QStashScheduler):
        return run
    message_id = request.headers.get("Upstash-Message-Id", "")
    retried = _retried(request)
    try:
        scheduler.repair(runtime, run, -1 if delivered_seq is None else delivered_seq, message_id)
        if retried:
            # A retry: the first attempt may have died after committing a
            # wake-up of a parent or child run that it then failed to publish.
            for other in _relatives(runtime, run):
                scheduler.repair(runtime, other, -1, message_id)
    except (QStashError, httpx.HTTPError, ConfigurationError) as exc:
        raise _Refused(503, f"could not publish the next wake-up: {exc}") from None
    if retried and not run.status.finished:
        held = _lease_lapses(runtime, run)
        if held is not None:
            raise _Refused(
                503,
                "a step of the run is held by a tick that may have died; retry when its "
                "lease lapses",
                retry_after=held,
            )
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


def _lease_lapses(runtime: Runtime, run: RunState) -> int | None:
    """Seconds until the last live lease on a step of the run lapses, or None."""
    now = runtime.clock.now()
    leases = [
        record.lease_until
        for record in runtime.store.steps(run.run_id)
        if record.status is StepStatus.PENDING
        and record.lease_until is not None
        and record.lease_until > now
    ]
    if not leases:
        return None
    return max(1, math.ceil((max(leases) - now).total_seconds()))


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
    what: str, handle: Callable[[HttpRequest, Runtime], JsonResponse]
) -> Callable[[HttpRequest], JsonResponse]:
    """A QStash endpoint: POST only, signature verified, every failure a JSON answer.

    Permanent problems answer 489 (QStash stops retrying), passing ones 503
    (QStash retries), and only a bug in this code a 500.
    """

    @functools.wraps(handle)
    def view(request: HttpRequest) -> JsonResponse:
        if request.method != "POST":
            return _not_post()
        try:
            runtime = current_runtime()
            _verify(request, _config(runtime))
            return handle(request, runtime)
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


def _wake_up(request: HttpRequest, runtime: Runtime) -> JsonResponse:
    """A wake-up delivery ``{"run_id", "seq"}``: tick the run, then hand off its next wake-up."""
    run_id, seq = _wakeup(request)
    run = runtime.store.get_run(run_id)
    if run is None:
        raise _permanent(f"no run has id {run_id!r}")
    if run.status.finished or seq < run.wake_seq:
        reason = f"run is {run.status.value}" if run.status.finished else "stale wake-up"
        run = _hand_off(request, runtime, run_id, seq)
        return _answer(
            200,
            {"status": "ignored", "reason": reason, "run_id": run_id, "seq": seq},
        )
    report = runtime.tick(run_id)
    run = _hand_off(request, runtime, run_id, seq)
    return _finish(run, {"steps_run": report.steps_run})


def _call_back(request: HttpRequest, runtime: Runtime) -> JsonResponse:
    """QStash's callback for a ``call`` step: record the answer, then tick the run."""
    run_id = request.GET.get("run", "")
    owner = request.GET.get("owner", "")
    try:
        position = int(request.GET.get("position", ""))
    except ValueError:
        raise _permanent("the callback URL has no valid position") from None
    if not run_id or not owner:
        raise _permanent("the callback URL has no run or owner")
    answer = _call_answer(_json_object(request))
    accepted = runtime.complete_step(run_id, position, owner, answer)
    run = _hand_off(request, runtime, run_id, None)
    status = "done" if accepted else "ignored"
    return _answer(200, {"status": status, "run_id": run_id, "position": position,
                         "run_status": run.status.value})  # fmt: skip


qstash_webhook: Callable[[HttpRequest], JsonResponse] = _delivery("delivery", _wake_up)
"""The wake-up webhook: ``hookflow:qstash``."""

qstash_call: Callable[[HttpRequest], JsonResponse] = _delivery("callback", _call_back)
"""The ``call`` steps' callback: ``hookflow:qstash-call``."""


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


def _call_answer(data: dict[str, Any]) -> _CallAnswer:
    status = data.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
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
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        raise _permanent("the callback body's body is not base64") from None
    url = data.get("url")
    return _CallAnswer(status, headers, text, url if isinstance(url, str) else "")
