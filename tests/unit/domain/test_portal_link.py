from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.errors import InvalidValueError
from shared.domain.portal_link import (
    MAX_LIFETIME,
    PortalLinkExpired,
    PortalLinkInvalid,
    link_expiry,
    sign,
    verify,
)

pytestmark = pytest.mark.unit

SECRET = b"portal-secret-for-unit-tests"
NOW = datetime(2026, 1, 15, 12, 0, 30, 123456, tzinfo=UTC)


def test_a_signed_link_grants_its_customer_until_its_expiry() -> None:
    expires = link_expiry(NOW, timedelta(hours=1))
    assert expires == datetime(2026, 1, 15, 13, 0, 30, tzinfo=UTC)
    token = sign("cus_42", expires, SECRET)
    grant = verify(token, SECRET, NOW + timedelta(minutes=59))
    assert (grant.customer_id, grant.expires_at) == ("cus_42", expires)


def test_a_link_is_refused_from_its_expiry_second_on() -> None:
    expires = link_expiry(NOW, timedelta(minutes=5))
    token = sign("cus_42", expires, SECRET)
    verify(token, SECRET, expires - timedelta(microseconds=1))
    with pytest.raises(PortalLinkExpired) as refused:
        verify(token, SECRET, expires)
    assert refused.value.code == "portal_link_expired"


@pytest.mark.parametrize("tamper", [
    lambda t: t.replace(t.split(".")[1], sign("cus_43", NOW, SECRET).split(".")[1]),  # another customer
    lambda t: ".".join([*t.split(".")[:2], str(int(t.split(".")[2]) + 86400), t.split(".")[3]]),  # later expiry
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature bytes
    lambda t: "v2" + t[2:],  # version
    lambda t: t + ".x",  # shape
    lambda t: "not-a-token",
    lambda t: t.replace(t.split(".")[1], "%%%"),  # not base64
])
def test_a_tampered_link_is_invalid(tamper: object) -> None:
    token = sign("cus_42", link_expiry(NOW, timedelta(hours=1)), SECRET)
    forged = tamper(token)  # type: ignore[operator]
    assert forged != token
    with pytest.raises(PortalLinkInvalid) as refused:
        verify(forged, SECRET, NOW)
    assert refused.value.code == "portal_link_invalid"


def test_a_link_signed_with_another_secret_is_invalid_even_when_expired() -> None:
    token = sign("cus_42", NOW + timedelta(minutes=1), b"another-secret-of-16-bytes")
    with pytest.raises(PortalLinkInvalid):
        verify(token, SECRET, NOW + timedelta(days=1))  # the signature is checked before the expiry


def test_customer_ids_with_any_characters_round_trip() -> None:
    token = sign("org.ü/ß 1", NOW + timedelta(hours=1), SECRET)
    assert "/" not in token and " " not in token
    assert verify(token, SECRET, NOW).customer_id == "org.ü/ß 1"


@pytest.mark.parametrize("lifetime", [timedelta(seconds=59), MAX_LIFETIME + timedelta(seconds=1)])
def test_a_link_lifetime_is_bounded(lifetime: timedelta) -> None:
    with pytest.raises(InvalidValueError) as refused:
        link_expiry(NOW, lifetime)
    assert refused.value.code == "portal_link_lifetime"


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(InvalidValueError):
        sign("cus_42", NOW, b"short")
