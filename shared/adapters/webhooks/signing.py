"""Signing outgoing webhooks, and `verify_signature` for receivers (the scheme Stripe uses).

Header: ``OpenLedger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
A receiver recomputes the HMAC over the raw bytes it received (never a re-serialised JSON), compares in
constant time, and refuses a timestamp older than its tolerance (replay protection). Several ``v1=`` entries
may appear; any one matching is enough (after a rotation with a grace, the new and the old secret both sign).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from typing import Final

HEADER: Final = "OpenLedger-Signature"
SCHEME: Final = "v1"
SECRET_PREFIX: Final = "whsec_"
DEFAULT_TOLERANCE_SECONDS: Final = 300


class SignatureVerificationError(ValueError):
    """The signature header is missing, malformed, does not match, or is too old."""


def new_secret() -> str:
    """A new signing secret (``whsec_`` + 32 random bytes, URL-safe base64)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secrets: str | Sequence[str], timestamp: int) -> str:
    """The header value for ``payload`` sent at ``timestamp`` (unix seconds, the wall clock): one ``v1=`` per
    secret (the current one first; after a rotation, the previous one too until it expires)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    return ",".join([f"t={timestamp}", *(f"{SCHEME}={compute_signature(payload, key, timestamp)}" for key in keys)])


def verify_signature(payload: bytes, header: str | None, secret: str,
                     tolerance: int | None = DEFAULT_TOLERANCE_SECONDS, *, now: float | None = None) -> int:
    """Check a delivery as a receiver: returns the signed timestamp, raises `SignatureVerificationError`.

    ``payload`` is the raw request body, ``header`` the ``OpenLedger-Signature`` value, ``tolerance`` the
    largest accepted age in seconds (None: no age check), ``now`` the receiver's unix time (default: now).
    """
    if not header:
        raise SignatureVerificationError("no signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureVerificationError("malformed signature header")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureVerificationError("malformed timestamp") from None
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureVerificationError(f"no timestamp or no {SCHEME} signature")
    expected = compute_signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureVerificationError("no signature matches the payload")
    if tolerance is not None and abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise SignatureVerificationError("timestamp outside the tolerance")
    return timestamp
