"""An org's rows looked up by a list of keys (a batch's enquiries, users, spend request ids) cost one primary-key
probe per key, whatever the org's history and whatever plan PostgreSQL caches for the statement.

The regression: written as `key = ANY(<list>)`, the statements' generic plans (a prepared statement's, costed on
the average org) read a big org's rows by org alone and filtered them by the list, so every exact-path write of
that org read all of its consumptions, ever. Each statement runs here under `plan_cache_mode =
force_generic_plan` against a big org among many small ones, and its plan's reads of the org's rows are counted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.quota_store import (
    _COMMIT_SQL,
    _GROUP_COMMIT_SQL,
    _LOAD_SQL,
    BatchWrite,
    _commit_params,
    _group_item,
    _json,
    _load_params,
)
from shared.adapters.postgres.spend_store import _RESERVATIONS_SQL
from tests.integration.quota.plans import generic_plan, rows_read

pytestmark = pytest.mark.integration

MONTH = datetime(2026, 1, 1, tzinfo=UTC)
BIG_ROWS = 20_000
SMALL_ORGS = 20_000
PROBED = 3  # keys in each looked-up list: one stored, two not


# Each table's rows: `{org}` is the org's SQL expression (of `i` for one org per row), `:n` the number of rows.
_ROWS = {
    "quota_consumptions": """
        INSERT INTO quota_consumptions (org_id, enquiry_id, user_id, month_start, month_end, consumed_at,
                                        org_allotment, org_remaining, on_trial, event_id)
        SELECT {org}, 'enq-' || i, 'user-' || i, :month, :month + interval '1 month', :month, 1000000, 1, false,
               gen_random_uuid() FROM generate_series(1, CAST(:n AS int)) AS i""",
    "quota_user_months": """
        INSERT INTO quota_user_months (org_id, month_start, user_id, used)
        SELECT {org}, :month, 'user-' || i, 1 FROM generate_series(1, CAST(:n AS int)) AS i""",
    "spend_reservations": """
        INSERT INTO spend_reservations (org_id, request_id, transaction_id, subscription_id, period_start,
                                        period_end, quantity, spent_quantity, reserved_at, event_id)
        SELECT {org}, 'req-' || i, 'req-' || i, 'sub', :month, :month + interval '1 month', 1, i, :month,
               gen_random_uuid() FROM generate_series(1, CAST(:n AS int)) AS i""",
}


@pytest.fixture(scope="module")
def big_org(engine: sa.Engine) -> str:
    """SMALL_ORGS orgs with one row in each table, analysed; then one org that grew BIG_ROWS rows since (the
    statistics, and so a generic plan's costs, still describe the average org as tiny)."""
    tag = uuid.uuid4().hex[:8]
    big = f"big-{tag}"
    with engine.begin() as conn:
        for insert in _ROWS.values():
            conn.execute(sa.text(insert.format(org=f"'small-{tag}-' || i")), {"n": SMALL_ORGS, "month": MONTH})
        conn.execute(sa.text("INSERT INTO quota_orgs (org_id, plan_id, plan_monthly_reports)"
                             " VALUES (:big, 'Ultimate', 1000000)"), {"big": big})
    with engine.connect() as conn:
        conn.execute(sa.text(f"ANALYZE {', '.join(_ROWS)}, quota_orgs"))
        conn.commit()
    with engine.begin() as conn:
        for insert in _ROWS.values():
            conn.execute(sa.text(insert.format(org=":big")), {"n": BIG_ROWS, "month": MONTH, "big": big})
    return big


def _keys(prefix: str, *, stored: bool = True) -> list[str]:
    """PROBED keys: the first stored (unless not `stored`), the others not."""
    return [f"{prefix}1" if stored else f"{prefix}missing-c", f"{prefix}missing-a", f"{prefix}missing-b"]


def _write(org_id: str, refused: list[str]) -> BatchWrite:
    return BatchWrite(org_id=org_id, seen_version=0, month_start=MONTH, month_end=datetime(2026, 2, 1, tzinfo=UTC),
                      month_plan_reports=1_000_000, consumed_at=MONTH, trial_delta=0, user_limit=None,
                      user_grants={}, consumptions=[], alerts=[], usage_topic="usage", alert_topic="alerts",
                      message_key=org_id, refused_enquiries=refused)


def test_an_exact_path_write_probes_each_refused_enquiry_of_a_big_org(engine: sa.Engine, big_org: str) -> None:
    # refused enquiries are, nearly always, not stored: nothing stops the scan early
    plan = generic_plan(engine, _COMMIT_SQL, _commit_params(_write(big_org, _keys("enq-", stored=False))))

    assert rows_read(plan, "quota_consumptions") <= PROBED


def test_a_grouped_write_probes_each_refused_enquiry_of_a_big_org(engine: sa.Engine, big_org: str) -> None:
    params = {"writes": _json([_group_item(0, _write(big_org, _keys("enq-", stored=False)))])}
    plan = generic_plan(engine, _GROUP_COMMIT_SQL, params)

    assert rows_read(plan, "quota_consumptions") <= PROBED


def test_reading_a_batch_probes_each_enquiry_and_user_of_a_big_org(engine: sa.Engine, big_org: str) -> None:
    plan = generic_plan(engine, _LOAD_SQL, _load_params(big_org, MONTH, _keys("user-"), _keys("enq-")))

    assert rows_read(plan, "quota_consumptions") <= PROBED
    assert rows_read(plan, "quota_user_months") <= PROBED


def test_reading_a_batch_of_spend_authorisations_probes_each_request_of_a_big_org(
        engine: sa.Engine, big_org: str) -> None:
    plan = generic_plan(engine, _RESERVATIONS_SQL, {"o": big_org, "r": _keys("req-")})

    assert rows_read(plan, "spend_reservations") <= PROBED


