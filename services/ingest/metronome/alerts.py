"""Metronome's threshold notifications (alerts) over ours (pure): what a create asks, and a customer's alert.

Thresholds are amounts of the alert's credit type: for USD (cents), integer cents (1000 = USD 10.00), our minor
units. See `services.ingest.service_layer.metronome_alerts` for the mapping of alert types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.ingest.metronome.customers import not_supported
from services.ingest.metronome.invoices import credit_type, currency_of_credit_type
from services.ingest.service_layer.metronome_alerts import KINDS, NewAlert, StoredAlert
from services.ingest.service_layer.refusals import MetronomeRefusal

UNSUPPORTED_FIELDS = ("plan_id", "access_type", "alert_specifiers", "credit_grant_type_filters",
                      "custom_field_filters", "group_values", "invoice_types_filter", "seat_filter")
STATUSES = {"ENABLED": "enabled", "ARCHIVED": "archived"}


def new_alert(params: Mapping[str, Any]) -> NewAlert:
    """Our alert for Metronome's create parameters; a type or filter we cannot evaluate is not supported."""
    alert_type = str(params["alert_type"])
    if alert_type not in KINDS:
        raise not_supported("alert_type", f"alert type {alert_type!r} (spend_threshold_reached and "
                                          "low_credit_balance_reached are)")
    for field in UNSUPPORTED_FIELDS:
        if params.get(field):
            raise not_supported(field, f"alert {field}")
    customer_id = params.get("customer_id")
    if not customer_id:
        raise not_supported("customer_id", "alerts for every customer (name one customer)")
    if alert_type == "spend_threshold_reached" and params.get("billable_metric_id"):
        raise not_supported("billable_metric_id", "a spend alert on one billable metric")
    threshold = params["threshold"]
    if isinstance(threshold, bool) or float(threshold) != int(threshold) or int(threshold) <= 0:
        raise MetronomeRefusal("threshold is a positive whole number of cents", code="invalid",
                               fields=[("threshold", "a positive whole number of cents")])
    return NewAlert(customer_id=str(customer_id), name=str(params["name"]), alert_type=alert_type,
                    threshold_minor=int(threshold),
                    currency=currency_of_credit_type(str(params.get("credit_type_id") or credit_type("USD")["id"])),
                    billable_metric_id=params.get("billable_metric_id"), uniqueness_key=params.get("uniqueness_key"))


def statuses_of(alert_statuses: list[str] | None) -> list[str]:
    """Our statuses for Metronome's filter (absent: enabled only); DISABLED alerts do not exist here."""
    asked = [s.upper() for s in alert_statuses or ["ENABLED"]]
    return [STATUSES[s] for s in asked if s in STATUSES]


def customer_alert_json(alert: StoredAlert) -> dict[str, Any]:
    """Metronome's `CustomerAlert`: the alert, and whether it fired in the subscription's current period."""
    status = None if alert.in_alarm is None else ("in_alarm" if alert.in_alarm else "ok")
    triggered = (f"{'spend' if alert.kind == 'spend' else 'credit left'} {alert.observed_minor} "
                 f"{'reached' if alert.kind == 'spend' else 'below'} {alert.threshold_minor}"
                 if alert.in_alarm else None)
    return {"alert": {"id": alert.alert_id, "name": alert.name, "status": alert.status,
                      "threshold": alert.threshold_minor, "type": alert.alert_type,
                      "updated_at": alert.updated_at.isoformat(), "credit_type": credit_type(alert.currency),
                      "uniqueness_key": alert.uniqueness_key},
            "customer_status": status, "triggered_by": triggered}
