"""Signed, expiring links to a customer's read-only usage page (the customer portal).

A link carries its own authority: the customer id and the expiry instant, and an HMAC-SHA256 over both with
a server secret. Nothing is stored, so a link cannot be revoked before it expires except by rotating the
secret (which revokes every link): that is why links are short-lived and bounded (`MAX_LIFETIME`).

Token layout (URL-safe, no padding): ``v1.<base64url(customer_id)>.<expiry, unix seconds>.<base64url(mac)>``;
the MAC covers ``v1.<base64url(customer_id)>.<expiry>``, so the version, the customer and the expiry are all
signed. Verification compares MACs in constant time (`hmac.compare_digest`) and checks the signature before
the expiry, so a forged link is never told whether its expiry would have passed.

Pure: the instant is a parameter, the secret is given by the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.domain.errors import DomainError, InvalidValueError

VERSION = "v1"
MIN_LIFETIME = timedelta(minutes=1)
MAX_LIFETIME = timedelta(days=30)
DEFAULT_LIFETIME = timedelta(hours=24)
MIN_SECRET_BYTES = 16


class PortalLinkError(DomainError):
    """Family: a portal token that grants nothing."""


class PortalLinkInvalid(PortalLinkError):
    """Malformed, or its signature does not match (tampered, or signed with another secret)."""

    code = "portal_link_invalid"


class PortalLinkExpired(PortalLinkError):
    """Genuine, but its expiry has passed."""

    code = "portal_link_expired"


@dataclass(frozen=True)
class PortalGrant:
    """What a verified token allows: reading `customer_id`'s page until `expires_at`."""

    customer_id: str
    expires_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidValueError(f"the portal secret must have at least {MIN_SECRET_BYTES} bytes",
                                code="portal_secret_too_short")
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def link_expiry(now: datetime, lifetime: timedelta) -> datetime:
    """The expiry of a link made at `now` valid for `lifetime` (whole seconds), within the bounds."""
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise InvalidValueError(f"a portal link lives between {int(MIN_LIFETIME.total_seconds())} and "
                                f"{int(MAX_LIFETIME.total_seconds())} seconds", code="portal_link_lifetime")
    return (now + lifetime).astimezone(UTC).replace(microsecond=0)


def sign(customer_id: str, expires_at: datetime, secret: bytes) -> str:
    """The token granting `customer_id`'s page until `expires_at` (truncated to the second)."""
    if not customer_id:
        raise InvalidValueError("a portal link names a customer", code="portal_link_customer")
    signed = f"{VERSION}.{_b64(customer_id.encode())}.{int(expires_at.timestamp())}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def verify(token: str, secret: bytes, now: datetime) -> PortalGrant:
    """The grant of a genuine, unexpired token; `PortalLinkInvalid` or `PortalLinkExpired` otherwise.

    A link is valid up to (excluding) its expiry second."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit() or len(parts[2]) > 12:
        raise PortalLinkInvalid("this link is malformed")
    signed = ".".join(parts[:3])
    try:
        given = _unb64(parts[3])
        customer_id = _unb64(parts[1]).decode()
    except (binascii.Error, ValueError) as error:
        raise PortalLinkInvalid("this link is malformed") from error
    if not hmac.compare_digest(_mac(secret, signed), given):
        raise PortalLinkInvalid("this link's signature does not match")
    expires_at = datetime.fromtimestamp(int(parts[2]), UTC)
    if now >= expires_at:
        raise PortalLinkExpired(f"this link expired at {expires_at.isoformat()}")
    return PortalGrant(customer_id=customer_id, expires_at=expires_at)
