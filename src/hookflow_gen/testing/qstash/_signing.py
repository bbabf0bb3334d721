"""Request signing exactly as QStash does it."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import jwt

__all__ = ["SIGNATURE_LIFETIME", "sign"]

SIGNATURE_LIFETIME = 300
"""Seconds a signature stays valid (the ``exp`` claim minus ``iat``)."""


def sign(*, key: str, url: str, body: bytes, now: float | None = None) -> str:
    """Return the ``Upstash-Signature`` JWT for one delivery.

    The timestamps come from the real wall clock, never a scaled one:
    receivers check ``nbf`` without leeway, so a future stamp would be
    rejected.

    Args:
        key: The signing key (the server's current key).
        url: The exact URL called, query string included (the ``sub`` claim).
        body: The raw request body.
        now: Unix time to stamp; defaults to the current time.

    Returns:
        The encoded HS256 token.
    """
    issued = int(time.time() if now is None else now)
    digest = hashlib.sha256(body).digest()
    claims = {
        "iss": "Upstash",
        "sub": url,
        "iat": issued,
        "nbf": issued,
        "exp": issued + SIGNATURE_LIFETIME,
        "jti": f"jwt_{uuid.uuid4().hex}",
        "body": base64.urlsafe_b64encode(digest).decode("ascii").rstrip("="),
    }
    # PyJWT's key parameter names cryptography's key classes, which are not
    # installed, so pyright sees part of the signature as unknown.
    return jwt.encode(claims, key, algorithm="HS256")  # pyright: ignore[reportUnknownMemberType]
