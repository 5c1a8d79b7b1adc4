"""The console's session cookie and CSRF tokens: HMAC-SHA256 over a small payload, no server-side store.

A session is `base64url(json{k: key id, e: expiry (unix seconds), n: nonce}).base64url(hmac)`. It is
issued after the operator entered an admin API key (the key itself is never stored in it) and is valid
until its expiry. Expiry is measured on the wall clock (`time.time`), never on the billing clock, which
the operator may move months ahead. The CSRF token of a session is `hmac(secret, "csrf:" + nonce)`: a form
carries it, and a POST whose token is not its session's is refused.

The secret is `BILLING_CONSOLE_SECRET`; when unset, each process draws a random one at start, so sessions
end when the edge restarts and are not shared between HTTP worker processes (set the secret to share).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE_NAME = "console_session"


@dataclass(frozen=True)
class ConsoleSession:
    key_id: str  # the admin API key the operator logged in with (audit trail's actor)
    expires_at: int  # unix seconds
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and verifies session cookies and their CSRF tokens with one secret."""

    def __init__(self, secret: bytes, lifetime_seconds: int, now: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the console secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime_seconds = lifetime_seconds
        self._now = now

    @classmethod
    def from_setting(cls, secret: str | None, lifetime_seconds: int) -> SessionSigner:
        """The signer of one process: the configured secret, or a random one when none is set."""
        return cls(secret.encode() if secret else secrets.token_bytes(32), lifetime_seconds)

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(self, key_id: str) -> tuple[str, ConsoleSession]:
        session = ConsoleSession(key_id, int(self._now()) + self.lifetime_seconds, secrets.token_urlsafe(16))
        payload = json.dumps({"k": session.key_id, "e": session.expires_at, "n": session.nonce},
                             separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", session

    def verify(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie carries, or None when it is absent, malformed, tampered with or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(signature, self._mac(payload)):
            return None
        try:
            fields = json.loads(payload)
            session = ConsoleSession(str(fields["k"]), int(fields["e"]), str(fields["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > self._now() else None

    def csrf_token(self, session: ConsoleSession) -> str:
        return _b64(self._mac(f"csrf:{session.nonce}".encode()))

    def csrf_valid(self, session: ConsoleSession, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token(session).encode())
