"""Metronome's customer shapes over our `CustomerRecord` (pure translations).

| Metronome | ours |
|---|---|
| `id` | `customer_id` |
| `external_id` | `external_id` (also an ingest alias, as in Metronome) |
| `ingest_aliases` | customer aliases, the external id left out |
| `name`, `custom_fields` | `name`, `custom_fields` |
| `billing_config` stripe `billing_provider_customer_id` | `stripe_customer_id` (recorded, none created) |
| `billing_config.stripe_collection_method` | `charge_automatically` only; `send_invoice`: not_supported |
| other billing providers, `customer_billing_provider_configurations`, revenue systems | not_supported |
| `archived_at`, `created_at`, `updated_at` | the same columns |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import CustomerRecord

NAME_LIMIT = 160  # Metronome truncates longer names


def not_supported(field: str, feature: str) -> MetronomeRefusal:
    """The refusal of a Metronome field or value this engine does not implement (400 `not_supported`)."""
    return MetronomeRefusal(f"{feature} is not supported by this engine", code="not_supported",
                            fields=[(field, f"not supported: {feature}")])


def stripe_customer_of(billing_config: Mapping[str, Any] | None) -> str | None:
    """The Stripe customer id a `billing_config` names (None without one); any other provider or option is
    refused as not supported."""
    if not billing_config:
        return None
    provider = billing_config.get("billing_provider_type")
    if provider != "stripe":
        raise not_supported("billing_config.billing_provider_type",
                            f"billing provider {provider!r} (only 'stripe' is)")
    method = billing_config.get("stripe_collection_method", "charge_automatically")
    if method != "charge_automatically":
        raise not_supported("billing_config.stripe_collection_method",
                            f"collection method {method!r} (invoices are charged automatically)")
    unknown = sorted(set(billing_config) - {"billing_provider_type", "billing_provider_customer_id",
                                            "stripe_collection_method"})
    if unknown:
        raise not_supported(f"billing_config.{unknown[0]}", f"billing_config option {unknown[0]!r}")
    customer_id = billing_config.get("billing_provider_customer_id")
    if not isinstance(customer_id, str) or not customer_id:
        raise MetronomeRefusal("billing_config.billing_provider_customer_id is required", code="invalid",
                               fields=[("billing_config.billing_provider_customer_id", "required")])
    return customer_id


def customer_json(record: CustomerRecord) -> dict[str, Any]:
    """Metronome's `Customer`."""
    return {"id": record.customer_id, "external_id": record.external_id,
            "ingest_aliases": [a for a in record.aliases if a != record.external_id],
            "name": record.name, "custom_fields": dict(record.custom_fields)}


def customer_detail_json(record: CustomerRecord) -> dict[str, Any]:
    """Metronome's `CustomerDetail`."""
    created = record.created_at.isoformat() if record.created_at else None
    return {**customer_json(record), "created_at": created,
            "updated_at": record.updated_at.isoformat() if record.updated_at else created,
            "archived_at": record.archived_at.isoformat() if record.archived_at else None,
            "customer_config": {"salesforce_account_id": None},
            "current_billable_status": {"value": "unbillable" if record.archived_at else "billable",
                                        "effective_at": None}}
