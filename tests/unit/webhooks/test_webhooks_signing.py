"""Signing of outgoing webhooks and `verify_signature` for receivers (Stripe's scheme)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.adapters.webhooks.signing import SignatureVerificationError, new_secret, sign, verify_signature

pytestmark = pytest.mark.unit
BODY = b'{"id":"e1","type":"invoice.paid"}'
SECRET = "whsec_abc"


def test_the_header_is_t_and_v1_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_abc", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, 1_700_000_000) == f"t=1700000000,v1={expected}"


def test_a_receiver_verifies_a_fresh_signature_and_gets_its_timestamp() -> None:
    header = sign(BODY, SECRET, 1_700_000_000)
    assert verify_signature(BODY, header, SECRET, 300, now=1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize(("body", "secret"), [(BODY + b" ", SECRET), (BODY, "whsec_other")])
def test_a_changed_body_or_another_secret_is_refused(body: bytes, secret: str) -> None:
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify_signature(body, sign(BODY, SECRET, 1_700_000_000), secret, 300, now=1_700_000_000)


def test_a_signature_older_than_the_tolerance_is_refused_and_none_skips_the_age_check() -> None:
    header = sign(BODY, SECRET, 1_700_000_000)
    with pytest.raises(SignatureVerificationError, match="tolerance"):
        verify_signature(BODY, header, SECRET, 300, now=1_700_000_301)
    assert verify_signature(BODY, header, SECRET, None, now=1_800_000_000) == 1_700_000_000


def test_any_one_of_several_v1_signatures_is_enough() -> None:
    good = sign(BODY, SECRET, 1_700_000_000).split(",")[1]
    header = f"t=1700000000,v1={'0' * 64},{good}"
    assert verify_signature(BODY, header, SECRET, 300, now=1_700_000_000) == 1_700_000_000


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000"])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureVerificationError):
        verify_signature(BODY, header, SECRET, 300, now=1_700_000_000)


def test_during_a_rotation_grace_both_secrets_sign_and_either_verifies() -> None:
    header = sign(BODY, [SECRET, "whsec_old"], 1_700_000_000)
    assert header.count("v1=") == 2
    for secret in (SECRET, "whsec_old"):
        assert verify_signature(BODY, header, secret, 300, now=1_700_000_000) == 1_700_000_000
    with pytest.raises(SignatureVerificationError):
        verify_signature(BODY, header, "whsec_other", 300, now=1_700_000_000)


def test_secrets_are_whsec_prefixed_and_unique() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and len(a) > 40 and a != b
