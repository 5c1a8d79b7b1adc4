"""The Metronome-compatible surface's pure translations: errors for the SDK, pages, customers' billing config,
billable metrics <-> meters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.ingest.metronome import billable_metrics, customers
from services.ingest.metronome.pages import page
from services.ingest.problems import metronome_problem
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import CustomerRecord

pytestmark = pytest.mark.unit


def test_a_422_problem_is_metronomes_400_with_message_and_our_fields_and_no_retry() -> None:
    body, status, headers = metronome_problem(
        {"type": "/problems/validation", "title": "Request validation failed", "status": 422, "code": "validation",
         "detail": "one or more fields are invalid", "errors": [{"field": "name", "reason": "required"}]}, 422)
    assert (status, body["status"], headers) == (400, 400, {"x-should-retry": "false"})
    assert body["message"] == "one or more fields are invalid"
    assert (body["code"], body["errors"]) == ("validation", [{"field": "name", "reason": "required"}])


def test_an_outage_stays_a_503_the_sdk_may_retry_and_a_problem_without_detail_gives_its_title() -> None:
    body, status, headers = metronome_problem({"title": "Service unavailable", "status": 503}, 503)
    assert (status, headers["x-should-retry"], body["message"]) == (503, "true", "Service unavailable")


def test_a_page_shows_limit_items_and_names_the_last_one_only_when_more_follow() -> None:
    more = page(["a", "b", "c"], 2, str, str.upper)
    assert more["data"] == ["A", "B"] and more["next_page"]
    last = page(["a", "b"], 2, str, str.upper)
    assert last == {"data": ["A", "B"], "next_page": None}


def test_a_stripe_billing_config_names_the_stripe_customer_and_other_providers_are_not_supported() -> None:
    assert customers.stripe_customer_of(None) is None
    assert customers.stripe_customer_of({"billing_provider_type": "stripe", "billing_provider_customer_id": "cus_1",
                                         "stripe_collection_method": "charge_automatically"}) == "cus_1"
    for config, field in (
            ({"billing_provider_type": "netsuite", "billing_provider_customer_id": "n"},
             "billing_config.billing_provider_type"),
            ({"billing_provider_type": "stripe", "billing_provider_customer_id": "cus_1",
              "stripe_collection_method": "send_invoice"}, "billing_config.stripe_collection_method"),
            ({"billing_provider_type": "stripe", "billing_provider_customer_id": "cus_1", "aws_region": "us-east-1"},
             "billing_config.aws_region")):
        with pytest.raises(MetronomeRefusal) as refused:
            customers.stripe_customer_of(config)
        assert (refused.value.code, refused.value.fields[0][0]) == ("not_supported", field)


def test_a_customer_shows_its_aliases_without_the_external_id_and_archival_makes_it_unbillable() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    record = CustomerRecord(customer_id="cust_1", external_id="ext", kind="org", name="Acme", email="", currency="USD",
                            timezone="UTC", tax_rate_bps=0, aliases=["ext", "org-1"], custom_fields={"tier": "pro"},
                            created_at=at, updated_at=at, archived_at=at)
    detail = customers.customer_detail_json(record)
    assert (detail["id"], detail["external_id"], detail["ingest_aliases"], detail["custom_fields"]) == (
        "cust_1", "ext", ["org-1"], {"tier": "pro"})
    assert detail["current_billable_status"]["value"] == "unbillable" and detail["archived_at"] == at.isoformat()


def test_a_sum_metric_with_a_group_key_is_a_sum_meter_with_a_dimension_and_reads_back_the_same() -> None:
    params = {"name": "Tokens", "aggregation_type": "SUM", "aggregation_key": "tokens",
              "event_type_filter": {"in_values": ["inference"]}, "group_keys": [["model"]],
              "property_filters": [{"name": "tokens", "exists": True}]}
    definition = billable_metrics.meter_definition("bm_1", params)
    assert definition == {"id": "bm_1", "name": "Tokens", "event_type": "inference", "aggregation": "sum",
                          "unit": "tokens", "value_property": "tokens", "dimension": "model"}
    shown = billable_metrics.metric_json("bm_1", definition, None)
    assert (shown["aggregation_type"], shown["aggregation_key"], shown["group_keys"],
            shown["event_type_filter"]) == ("SUM", "tokens", [["model"]], {"in_values": ["inference"]})


def test_a_count_metric_counts_events_of_its_one_event_type() -> None:
    definition = billable_metrics.meter_definition(
        "bm_2", {"name": "Calls", "aggregation_type": "COUNT", "event_type_filter": {"in_values": ["call"]}})
    assert (definition["aggregation"], definition["unit"], "value_property" in definition) == ("count", "events", False)


@pytest.mark.parametrize(("params", "field"), [
    ({"aggregation_type": "UNIQUE", "aggregation_key": "user"}, "aggregation_type"),
    ({"aggregation_type": "LATEST", "aggregation_key": "seats"}, "aggregation_type"),
    ({"event_type_filter": {"in_values": ["a", "b"]}}, "event_type_filter.in_values"),
    ({"event_type_filter": {"in_values": ["a"], "not_in_values": ["b"]}}, "event_type_filter.not_in_values"),
    ({"group_keys": [["model", "region"]]}, "group_keys"),
    ({"property_filters": [{"name": "region", "exists": True}]}, "property_filters.0"),
    ({"custom_fields": {"team": "x"}}, "custom_fields"),
])
def test_what_a_meter_cannot_express_is_not_supported(params: dict[str, object], field: str) -> None:
    with pytest.raises(MetronomeRefusal) as refused:
        billable_metrics.meter_definition("bm_3", {"name": "m", "event_type_filter": {"in_values": ["e"]}, **params})
    assert (refused.value.code, refused.value.fields[0][0]) == ("not_supported", field)


def _hour(day: int, hour: int) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def test_day_windows_sum_the_hours_of_each_utc_day_and_groups_show_null_for_a_value_without_usage() -> None:
    from decimal import Decimal

    from services.ingest.metronome import usage
    from services.ingest.service_layer.metronome_usage import HourTotal

    spans = usage.windows(_hour(1, 0), _hour(3, 0), "DAY")
    assert spans == [(_hour(1, 0), _hour(2, 0)), (_hour(2, 0), _hour(3, 0))]
    totals = [HourTotal("c", "tok/a", _hour(1, 1), Decimal(100)), HourTotal("c", "tok/b", _hour(1, 23), Decimal("0.5")),
              HourTotal("c", "tok/a", _hour(2, 0), Decimal(25)), HourTotal("c", "tok/a", _hour(3, 0), Decimal(7))]
    rows = usage.list_rows(totals, spans, {"tok": "Tokens"}, {"tok": ("model", ["a", "b"])})
    assert [(r["start_timestamp"], r["value"], r["groups"]) for r in rows] == [
        (_hour(1, 0).isoformat(), 100.5, {"a": 100, "b": 0.5}), (_hour(2, 0).isoformat(), 25, {"a": 25, "b": None})]
    groups = usage.group_rows(totals, spans, "model", None)
    assert [(r["group_value"], r["value"]) for r in groups] == [("a", 100), ("b", 0.5), ("a", 25)]
    assert [r["value"] for r in usage.group_rows(totals, usage.windows(_hour(1, 0), _hour(3, 0), "NONE"),
                                                 None, None)] == [125.5]


def test_usage_bounds_are_utc_midnights_in_order_and_only_the_metrics_group_key_groups() -> None:
    from services.ingest.metronome import usage

    for start, end, field in ((_hour(1, 5), _hour(2, 0), "starting_on"), (_hour(2, 0), _hour(2, 0), "ending_before")):
        with pytest.raises(MetronomeRefusal) as refused:
            usage.check_bounds(start, end)
        assert refused.value.fields[0][0] == field
    assert usage.group_key_of("model", ["model"], None) == ("model", None)
    with pytest.raises(MetronomeRefusal) as refused:
        usage.group_key_of("model", ["model", "region"], None)
    assert refused.value.code == "not_supported"


def test_an_invoice_is_stated_in_cents_with_metronomes_statuses_and_unit_prices_in_cents() -> None:
    from decimal import Decimal

    from services.ingest.metronome import invoices
    from services.ingest.views import InvoiceLineView, InvoiceView

    start, end = _hour(1, 0), datetime(2026, 4, 1, tzinfo=UTC)
    line = InvoiceLineView(line_no=1, kind="usage", description="Calls", amount_minor=50, currency="USD",
                           quantity=Decimal(10), unit_price=Decimal("0.05"), meter_id="bm_1", period_start=start,
                           period_end=end, proration=False)
    fee = InvoiceLineView(line_no=2, kind="fee", description="Pro", amount_minor=2000, currency="USD",
                          quantity=Decimal(1), plan_id="pro", proration=False)
    invoice = InvoiceView(invoice_id="in_1", subscription_id="sub_1", customer_id="cust_1", kind="period_close",
                          status="uncollectible", currency="USD", period_start=start, period_end=end,
                          subtotal_minor=2050, discount_minor=0, credits_applied_minor=0, tax_minor=0,
                          total_minor=2050, amount_paid_minor=0, lines=[line, fee])
    shown = invoices.invoice_json(invoice, {"sub_1": "contract-1"})
    assert (shown["status"], shown["external_invoice"]["external_status"], shown["total"], shown["contract_id"]) == (
        "FINALIZED", "UNCOLLECTIBLE", 2050, "contract-1")
    assert [(li["type"], li["total"], li["unit_price"], li["quantity"], li["product_id"])
            for li in shown["line_items"]] == [("usage", 50, 5, 10, "bm_1"), ("subscription", 2000, None, 1, "pro")]
    assert invoices.credit_type("EUR") == {"id": "EUR", "name": "EUR (minor units)"}


def test_a_spend_alert_is_a_threshold_in_cents_and_other_types_or_filters_are_not_supported() -> None:
    from services.ingest.metronome import alerts

    made = alerts.new_alert({"alert_type": "spend_threshold_reached", "name": "n", "threshold": 1000.0,
                             "customer_id": "cust_1", "uniqueness_key": "k"})
    assert (made.threshold_minor, made.currency, made.uniqueness_key) == (1000, "USD", "k")
    for params, field in (({"alert_type": "invoice_total_reached"}, "alert_type"),
                          ({"alert_type": "spend_threshold_reached", "customer_id": None}, "customer_id"),
                          ({"alert_type": "low_credit_balance_reached", "seat_filter": {"seat_group_key": "u"}},
                           "seat_filter")):
        with pytest.raises(MetronomeRefusal) as refused:
            alerts.new_alert({"name": "n", "threshold": 100, "customer_id": "cust_1", **params})
        assert (refused.value.code, refused.value.fields[0][0]) == ("not_supported", field)
    with pytest.raises(MetronomeRefusal) as refused:
        alerts.new_alert({"alert_type": "spend_threshold_reached", "name": "n", "threshold": 10.5,
                          "customer_id": "cust_1"})
    assert refused.value.fields[0][0] == "threshold"
    assert alerts.statuses_of(None) == ["enabled"] and alerts.statuses_of(["ARCHIVED", "DISABLED"]) == ["archived"]
