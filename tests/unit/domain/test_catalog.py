from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from shared.adapters.catalog_file import load_catalog_file, load_default_catalog
from shared.domain.calendar import Interval
from shared.domain.catalog import Catalog, ChangeTiming, OveragePolicy, Pooling, QuotaWindow, TrialEndBehaviour
from shared.domain.errors import CatalogError, UnknownPlanError
from shared.domain.money import Money, UnitPrice

pytestmark = pytest.mark.unit


def usd(major: str) -> Money:
    return Money.of(major, "USD")


MINIMAL = {
    "version": 1,
    "currency": "USD",
    "meters": [
        {"id": "api_calls", "unit": "call", "event_type": "api_call", "aggregation": "count"},
    ],
    "plans": [
        {
            "id": "starter",
            "name": "Starter",
            "family": "classic",
            "interval": "month",
            "price": "12.50",
            "meters": {"api_calls": {"overage": "bill", "unit_price": "0.001", "included": {"units": 1000}}},
        }
    ],
}


def broken(path: list[object], value: object) -> dict[str, object]:
    data = copy.deepcopy(MINIMAL)
    target: object = data
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return data


def test_the_shipped_catalogs_load_and_validate():
    catalog = load_default_catalog()
    assert {"free", "pro", "team", "enterprise"} <= set(catalog.plans)
    assert {"reports_ultimate", "reports_enterprise", "reports_basic", "reports_lite", "reports_trial"} <= set(
        catalog.plans
    )
    assert {"basic_monthly", "premium_monthly", "premium_yearly"} <= set(catalog.plans)


def test_usage_tiers_match_the_hugging_face_style_offer():
    catalog = load_default_catalog()
    free, pro, team, enterprise = (catalog.plan(name) for name in ("free", "pro", "team", "enterprise"))
    assert (free.fee(1), pro.fee(1), team.fee(3), enterprise.fee(3)) == (usd("0"), usd("9"), usd("60"), usd("150"))
    assert free.pricing_for("inference").included.for_seats(1) == usd("0.10")
    assert free.pricing_for("inference").overage is OveragePolicy.BLOCK
    assert pro.pricing_for("inference").included.for_seats(1) == usd("2.00")
    assert pro.pricing_for("inference").overage is OveragePolicy.BILL
    assert team.pricing_for("inference").included.pooling is Pooling.PER_SEAT
    assert team.pricing_for("inference").included.for_seats(5) == usd("10.00")
    assert free.pricing_for("storage").included.for_seats(1) == Decimal(100)
    assert enterprise.pricing_for("storage").included.for_seats(4) == Decimal(4000)
    # USD 18 per TB-month with 1 TB = 1000 GB
    assert pro.pricing_for("storage").unit_price == UnitPrice(Decimal("0.018"), "USD")
    assert pro.change_timing is ChangeTiming.PERIOD_END


def test_report_plans_carry_monthly_quotas_and_a_14_day_trial():
    catalog = load_default_catalog()
    limits = {
        plan_id: catalog.plan(plan_id).quota.limit
        for plan_id in ("reports_ultimate", "reports_enterprise", "reports_basic", "reports_lite")
    }
    assert limits == {"reports_ultimate": 1000, "reports_enterprise": 500, "reports_basic": 100, "reports_lite": 20}
    assert all(catalog.plan(plan_id).quota.window is QuotaWindow.CALENDAR_MONTH for plan_id in limits)
    assert all(catalog.plan(plan_id).example_prices for plan_id in limits)
    trial = catalog.plan("reports_trial").quota
    assert (trial.limit, trial.window, trial.window_days) == (10, QuotaWindow.TRIAL, 14)


def test_classic_plans_and_coupons():
    catalog = load_default_catalog()
    assert catalog.plan("basic_monthly").fee(1) == usd("10")
    assert catalog.plan("premium_monthly").trial_end_without_payment_method is TrialEndBehaviour.CANCEL
    assert catalog.plan("premium_yearly").interval is Interval.YEAR
    assert catalog.coupon("LAUNCH25X3").invoice_limit == 3


def test_a_minimal_document_parses():
    plan = Catalog.from_dict(MINIMAL).plan("starter")
    assert plan.fee(1) == usd("12.50")
    assert plan.pricing_for("api_calls").included.units == Decimal(1000)


def test_unknown_plan_is_a_typed_error():
    with pytest.raises(UnknownPlanError):
        Catalog.from_dict(MINIMAL).plan("nope")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["plans", 0, "price"], 12.5, "quoted strings"),
        (["plans", 0, "price"], "12.505", "more decimals than USD"),
        (["plans", 0, "interval"], "fortnight", "expected one of month, year"),
        (["plans", 0, "meters", "api_calls", "overage"], "shrug", "plans[starter].meters.api_calls.overage"),
        (["plans", 0, "meters", "api_calls"], {"overage": "bill"}, "unit_price: is required"),
        (["plans", 0, "meters", "ghost"], {"overage": "block"}, "unknown meter 'ghost'"),
        (["plans", 0, "colour"], "blue", "unknown field(s) colour"),
        (["plans", 0, "trial_days"], -1, "must be >= 0"),
        (["currency"], "ZZZ", "unknown ISO 4217 currency"),
        (["version"], 2, "unsupported catalog version"),
        (["meters", 0, "aggregation"], "sum", "value_property: is required"),
    ],
)
def test_invalid_documents_fail_with_a_message_naming_the_field(path, value, message):
    with pytest.raises(CatalogError) as error:
        Catalog.from_dict(broken(path, value))
    assert message in str(error.value)


def test_duplicate_ids_are_refused_within_and_across_documents():
    doubled = copy.deepcopy(MINIMAL)
    doubled["plans"].append(copy.deepcopy(doubled["plans"][0]))  # type: ignore[attr-defined]
    with pytest.raises(CatalogError, match="duplicate plan id 'starter'"):
        Catalog.from_dict(doubled)
    one = Catalog.from_dict(MINIMAL)
    with pytest.raises(CatalogError, match="more than one catalog document"):
        Catalog.merge([one, one])


def test_coupons_validate_their_shape():
    data = copy.deepcopy(MINIMAL)
    data["coupons"] = [{"id": "BAD", "percent_off": "10", "duration": "repeating"}]
    with pytest.raises(CatalogError, match="duration_periods"):
        Catalog.from_dict(data)
    data["coupons"] = [{"id": "NAIVE", "percent_off": "10", "duration": "once", "redeem_by": "2030-01-01T00:00:00"}]
    with pytest.raises(CatalogError, match="UTC offset"):
        Catalog.from_dict(data)


def test_file_adapter_names_the_file_in_errors(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken(["plans", 0, "price"], 12.5)))
    with pytest.raises(CatalogError, match=r"broken\.yaml: .*plans\[starter\]\.price"):
        load_catalog_file(path)
