"""The billing subscription behind an org's report plan (issue 15, item 4: one subscription model).

`PUT /v1/quota/orgs/{org}/plan` puts the org on a report plan of the catalog (``reports_basic`` ...); this
use case makes its billing subscription follow, through the ordinary lifecycle commands (outbox ->
`commands.v1` -> the worker, the only writer of subscriptions), so the invoice bills the plan whose allotment
the quota admits:

- the org's subscription (the one named in the request, else the one the quota store remembers, else a live
  one of the org on a report plan in the read model, e.g. made by `POST /v1/subscriptions`) is changed
  to the plan at once (``timing="immediate"``: the allotment changes at once too, so the fee is prorated
  like any immediate upgrade or downgrade); nothing is sent when the read model already shows that plan;
- an org that is a billing customer without such a subscription (or whose subscription ended) is
  subscribed to the plan;
- an org that is not a billing customer (a quota-only org) has no invoice: nothing is sent, as before.

A top-up (`POST .../top-ups`) is also a unit credit of that subscription on the ``reports`` meter
(`credits.grant`, source ``top_up``, expiring at the month's end; its grant id derives from the subscription
and the top-up id, so a replayed top-up is applied once by the worker too). The admission does NOT read the
ledger: it decides on the quota store's month row as before (one read per batch, the benchmarked path); the
grant makes the top-up visible where every other credit of the subscription is (grants, ledger, invoices).

The quota's HTTP answer does not change: the command is committed to the outbox before the quota store is
changed, so an accepted plan change always reaches the worker; its outcome is the worker's to record
(`GET /v1/commands/{id}`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa

from services.ingest.auth import Principal
from services.ingest.service_layer.lifecycle import Accepted, Subscribe, send_command, subscribe
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from shared.adapters.postgres.schema.billing import subscriptions
from shared.contracts.messages import ChangePlan, GrantCredits
from shared.domain.catalog import Catalog

ENDED = frozenset({"cancelled"})
REPORT_PLAN_FAMILY = "report_quota"
REPORT_METER = "reports"


@dataclass(frozen=True)
class ReportSubscription:
    """What the plan change did to billing: the subscription (None: a quota-only org) and the command sent
    (None: nothing to change)."""

    subscription_id: str | None
    accepted: Accepted | None = None


def follow_report_plan(uow: UnitOfWorkFactory, catalog: Catalog, org_id: str, plan_id: str,
                       subscription_id: str | None, *, principal: Principal, now: datetime,
                       request_id: str | None) -> ReportSubscription:
    """Create or change the org's billing subscription so that it is on ``plan_id`` (see the module)."""
    if subscription_id is not None:
        with uow() as work:
            owner = work.owner_of(subscription_id)
            row = work.subscription(subscription_id)
        if owner is None or owner != org_id:
            return ReportSubscription(None)  # not a subscription of this org: the quota keeps its own key
        if row is not None and row.get("status") in ENDED:
            subscription_id = None  # ended: the org is subscribed anew below
        elif row is not None and row.get("plan_id") == plan_id:
            return ReportSubscription(subscription_id)
    if subscription_id is not None:
        accepted = send_command(
            uow, subscription_id,
            lambda customer_id: ChangePlan(subscription_id=subscription_id, customer_id=customer_id,
                                           plan_id=plan_id, timing="immediate"),
            "subscription.change_plan", principal=principal, authorize=lambda _customer_id: None, now=now,
            request_id=request_id, plan_id=plan_id, timing="immediate", source="quota.set_plan")
        return ReportSubscription(subscription_id, accepted)
    with uow() as work:
        if work.customer_terms(org_id) is None:
            return ReportSubscription(None)
    accepted = subscribe(uow, catalog, Subscribe(customer_id=org_id, plan_id=plan_id), principal=principal,
                         now=now, request_id=request_id)
    return ReportSubscription(accepted.subscription_id, accepted)


def live_report_subscription(engine: sa.Engine, catalog: Catalog, org_id: str) -> str | None:
    """The org's newest subscription on a report plan that has not ended (None: none in the read model)."""
    report_plans = [plan_id for plan_id, plan in catalog.plans.items() if plan.family == REPORT_PLAN_FAMILY]
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(subscriptions.c.subscription_id)
            .where(subscriptions.c.customer_id == org_id, subscriptions.c.plan_id.in_(report_plans),
                   subscriptions.c.status.not_in(ENDED))
            .order_by(subscriptions.c.started_at.desc()).limit(1)).scalar_one_or_none()
    return None if found is None else str(found)

def top_up_grant_id(subscription_id: str, top_up_id: str) -> str:
    """`rq_<32 hex>`: one grant per (subscription, top-up id), whatever the number of retries."""
    return "rq_" + hashlib.sha256(f"{subscription_id}|{top_up_id}".encode()).hexdigest()[:32]


def grant_top_up(uow: UnitOfWorkFactory, org_id: str, subscription_id: str | None, reports: int, top_up_id: str,
                 expires_at: datetime, *, principal: Principal, now: datetime, request_id: str | None
                 ) -> Accepted | None:
    """Send the top-up as ``reports`` unit credits of the org's subscription (None: the org has none)."""
    return _grant_reports(uow, org_id, subscription_id, reports, expires_at, "top_up", top_up_id,
                          f"report top-up {top_up_id}", principal=principal, now=now, request_id=request_id)


def grant_trial(uow: UnitOfWorkFactory, org_id: str, subscription_id: str | None, reports: int,
                ends_at: datetime, *, principal: Principal, now: datetime, request_id: str | None) -> Accepted | None:
    """Send the org's one trial as ``reports`` unit credits of its subscription, expiring when the trial ends
    (one grant per subscription: a second trial call grants nothing new)."""
    # NOTE: "|trial" cannot be a top-up id (those match IDENTIFIER, no "|"), so the two never share a grant id.
    return _grant_reports(uow, org_id, subscription_id, reports, ends_at, "trial", "|trial", "report trial",
                          principal=principal, now=now, request_id=request_id)


def _grant_reports(uow: UnitOfWorkFactory, org_id: str, subscription_id: str | None, reports: int,
                   expires_at: datetime, source: Literal["top_up", "trial"], key: str, description: str, *,
                   principal: Principal, now: datetime, request_id: str | None) -> Accepted | None:
    if subscription_id is None or reports <= 0:
        return None
    with uow() as work:
        if work.owner_of(subscription_id) != org_id:
            return None
    grant_id = top_up_grant_id(subscription_id, key)
    sid = subscription_id

    def build(customer_id: str) -> GrantCredits:
        return GrantCredits(subscription_id=sid, customer_id=customer_id, grant_id=grant_id,
                            meter_id=REPORT_METER, units=Decimal(reports), source=source, expires_at=expires_at,
                            effective_at=now, description=description)

    return send_command(uow, sid, build, "credits.grant", principal=principal, authorize=lambda _customer_id: None,
                        now=now, request_id=request_id, grant_id=grant_id, meter_id=REPORT_METER,
                        units=str(reports), source=source, quota_key=key)
