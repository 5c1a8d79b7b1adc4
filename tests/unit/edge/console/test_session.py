"""The console's session cookie and CSRF tokens: signed, expiring on the wall clock, refused when tampered."""

import base64
import json

import pytest

from services.ingest.console.session import SessionSigner

pytestmark = pytest.mark.unit
SECRET = b"0123456789abcdef0123456789abcdef"


class WallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_issued_session_verifies_until_it_expires():
    clock = WallClock()
    signer = SessionSigner(SECRET, 3600, now=clock)
    cookie, session = signer.issue("key_admin")
    assert signer.verify(cookie) == session
    assert session.key_id == "key_admin" and session.expires_at == 1_800_003_600
    clock.now += 3599
    assert signer.verify(cookie) == session
    clock.now += 1
    assert signer.verify(cookie) is None


def test_a_tampered_or_foreign_cookie_is_refused():
    signer = SessionSigner(SECRET, 3600, now=WallClock())
    cookie, _ = signer.issue("key_reader")
    body, mac = cookie.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["k"] = "admin-bootstrap"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert signer.verify(f"{forged_body}.{mac}") is None
    assert signer.verify(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert SessionSigner(b"another secret of 32 bytes......", 3600, now=WallClock()).verify(cookie) is None
    for junk in (None, "", "no-dot", "a.b.c", "!!!.???", "e30.e30"):
        assert signer.verify(junk) is None


def test_the_csrf_token_belongs_to_one_session():
    signer = SessionSigner(SECRET, 3600, now=WallClock())
    _, one = signer.issue("key_a")
    _, other = signer.issue("key_a")
    token = signer.csrf_token(one)
    assert signer.csrf_valid(one, token)
    assert not signer.csrf_valid(other, token)
    assert not signer.csrf_valid(one, None) and not signer.csrf_valid(one, "")


def test_without_a_configured_secret_each_process_draws_its_own():
    first = SessionSigner.from_setting(None, 60)
    second = SessionSigner.from_setting(None, 60)
    cookie, _ = first.issue("key_a")
    assert first.verify(cookie) is not None
    assert second.verify(cookie) is None
    configured = SessionSigner.from_setting("a shared secret, long enough", 60)
    assert SessionSigner.from_setting("a shared secret, long enough", 60).verify(configured.issue("k")[0]) is not None


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SessionSigner(b"short", 60)
