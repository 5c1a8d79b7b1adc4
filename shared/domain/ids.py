"""Typed identifiers shared by the aggregates (plain strings at runtime, distinct types for mypy)."""

from __future__ import annotations

from typing import NewType

SubscriptionId = NewType("SubscriptionId", str)
CustomerId = NewType("CustomerId", str)
InvoiceId = NewType("InvoiceId", str)
