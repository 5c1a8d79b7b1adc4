"""Identifiers shared by the aggregates: typed ids (plain strings at runtime, distinct types for mypy) and the
deterministic ids the billing worker derives (same identity parts, same id: a replay derives the same one)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from shared.domain.invoice import InvoiceKey

SubscriptionId = NewType("SubscriptionId", str)
CustomerId = NewType("CustomerId", str)
InvoiceId = NewType("InvoiceId", str)

#: Namespace of every derived id (invoices, attempts, events, scheduled jobs): same input, same id.
IDS = uuid.UUID("6f1c2b0e-9a57-4d8e-b3f1-2c7d5a9e8b41")


def uuid5_of(namespace: uuid.UUID) -> Callable[[str], uuid.UUID]:
    """``uuid.uuid5(namespace, name)`` as a function of ``name``, the namespace's part of its SHA-1 hashed once
    rather than per id (a billing run derives several ids per subscription; the edge one per admission)."""
    namespace_sha1 = hashlib.sha1(namespace.bytes, usedforsecurity=False)  # UUID version 5 is SHA-1 by definition

    def derive(name: str) -> uuid.UUID:
        digest = namespace_sha1.copy()
        digest.update(name.encode())
        return uuid.UUID(bytes=digest.digest()[:16], version=5)

    return derive


_uuid5 = uuid5_of(IDS)


def derived_id(prefix: str, *parts: object) -> str:
    """A deterministic id such as ``in_3f2a...`` from its identity parts (replays derive the same id)."""
    return f"{prefix}_{_uuid5('|'.join(map(str, parts))).hex[:24]}"


def invoice_id_for(key: InvoiceKey) -> InvoiceId:
    return InvoiceId(derived_id("in", key))


def attempt_id_for(invoice_id: str, attempt_no: int) -> str:
    return derived_id("pa", invoice_id, attempt_no)


def event_uuid(*parts: object) -> uuid.UUID:
    return _uuid5("|".join(map(str, parts)))
