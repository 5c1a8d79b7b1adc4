"""Metronome contracts over our subscriptions: the edge's use cases (admin).

A contract is ONE subscription of ours plus its terms (`services.ingest.metronome.contract_terms`): making it
materialises the plan its terms define in our catalog (content-addressed, created once) and subscribes the
customer to it, the contract row, the route row, the audit row and the create command committing in one
transaction. An edit computes the new terms; a different plan is a plan change (now, or at the period end
when the edit starts there), a different quantity a seat change, an end date a cancellation: each a command
to the worker, answered with the worker's outcome. The contract row records the new terms once the commands
are sent (`edits` keeps what each edit changed).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from services.ingest.auth import Principal
from services.ingest.metronome.contract_terms import (
    Invalid,
    Terms,
    Unsupported,
    override_entry,
    plan_definition,
    recurring_credit_entry,
    subscription_entry,
)
from services.ingest.service_layer import lifecycle
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.metronome_pricing import not_found, products_by_id, rate_card_in, rates_of
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import SqlUnitOfWork, UnitOfWork, UnitOfWorkFactory
from shared.adapters.postgres.outbox import rows_committed
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.contract_pricing import mx_contracts, mx_products
from shared.contracts.messages import (
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    RevokeCancellation,
    SubscriptionCommand,
)
from shared.domain.catalog import Catalog

#: Makes sure the plan of a definition is in the catalog; returns the catalog it is in and its plan id
#: (naming its version), as the native subscribe route pins it.
EnsurePlan = Callable[[dict[str, Any]], tuple[Catalog, str]]


@dataclass(frozen=True)
class ContractRequest:
    customer_id: str
    rate_card_id: str
    starting_at: datetime
    ending_before: datetime | None = None
    name: str | None = None
    uniqueness_key: str | None = None
    subscriptions: Sequence[Mapping[str, Any]] = ()
    recurring_credits: Sequence[Mapping[str, Any]] = ()
    overrides: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class StoredContract:
    contract_id: str
    customer_id: str
    subscription_id: str
    rate_card_id: str
    name: str | None
    starting_at: datetime
    ending_before: datetime | None
    terms: Terms
    initial_terms: Terms
    plan_id: str
    created_at: datetime
    archived_at: datetime | None
    seq: int
    edits: list[dict[str, Any]]
    products: dict[str, str] = field(default_factory=dict)  # product id -> name, for the answer
    period: tuple[datetime, datetime] | None = None  # the subscription's current period (read model)
    status: str | None = None


def _refusal(error: Unsupported | Invalid) -> MetronomeRefusal:
    if isinstance(error, Unsupported):
        return MetronomeRefusal(f"{error.feature} is not supported by this engine", code="not_supported",
                               fields=[(error.field, f"not supported: {error.feature}")])
    return MetronomeRefusal(f"{error.field}: {error.reason}", fields=[(error.field, error.reason)])


def _terms_of(request: ContractRequest) -> Terms:
    try:
        if len(request.subscriptions) > 1:
            raise Unsupported("subscriptions", "one subscription (the tier's recurring fee) per contract")
        subscription = None
        if request.subscriptions:
            subscription = subscription_entry(request.subscriptions[0], str(uuid.uuid4()), "subscriptions[0]")
            subscription["starting_at"] = request.starting_at.isoformat()
            subscription["quantity_schedule"] = [{"quantity": subscription["quantity"],
                                                  "starting_at": request.starting_at.isoformat()}]
        credits = [recurring_credit_entry(c, str(uuid.uuid4()), f"recurring_credits[{i}]")
                   for i, c in enumerate(request.recurring_credits)]
        overrides = [override_entry(o, str(uuid.uuid4()), f"overrides[{i}]", request.starting_at,
                                    o["starting_at"]) for i, o in enumerate(request.overrides)]
    except (Unsupported, Invalid) as error:
        raise _refusal(error) from error
    return Terms(subscription, tuple(credits), tuple(overrides))


def _definition(conn: sa.Connection, rate_card_id: str, terms: Terms, at: datetime) -> dict[str, Any]:
    card = rate_card_in(conn, rate_card_id, "rate_card_id").card
    try:
        return plan_definition(card, products_by_id(conn), rates_of(conn, rate_card_id), terms, at)
    except (Unsupported, Invalid) as error:
        raise _refusal(error) from error


@contextmanager
def _joined(conn: sa.Connection) -> Iterator[UnitOfWork]:
    """A unit of work inside a transaction the caller owns (the contract row commits with the command)."""
    yield SqlUnitOfWork(conn)


def create(engine: sa.Engine, ensure_plan: EnsurePlan, request: ContractRequest, *, principal: Principal,
           now: datetime, request_id: str | None) -> tuple[str, Accepted]:
    """Make a contract: its plan, then the subscription and the contract row in one transaction. Refuses a
    start in the future and an end date (`not_supported`: a contract starts when made; end it with
    updateEndDate), a repeated `uniqueness_key` (`already_exists`), what the terms cannot bill."""
    # NOTE: billing starts when the contract is made; Metronome's starting_at is on an hour boundary, so the
    # current hour is that instant. A start in the future or backdated beyond it is refused, never shifted.
    if request.starting_at > now:
        raise MetronomeRefusal("a contract starts when it is made", code="not_supported",
                              fields=[("starting_at", "not supported: a start in the future")])
    if request.starting_at < now.replace(minute=0, second=0, microsecond=0):
        raise MetronomeRefusal("a contract starts when it is made (in the current hour)", code="not_supported",
                              fields=[("starting_at", "not supported: a backdated start")])
    if request.ending_before is not None:
        raise MetronomeRefusal("an end date is set by updateEndDate", code="not_supported",
                              fields=[("ending_before", "not supported: an end date at creation")])
    terms = _terms_of(request)
    with engine.connect() as conn:
        definition = _definition(conn, request.rate_card_id, terms, now)
    catalog, plan_id = ensure_plan(definition)
    contract_id = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            subscription_id = lifecycle.new_subscription_id()
            conn.execute(sa.insert(mx_contracts).values(
                contract_id=contract_id, customer_id=request.customer_id, subscription_id=subscription_id,
                rate_card_id=request.rate_card_id, name=request.name, starting_at=request.starting_at,
                terms=terms.as_json(), plan_id=plan_id, uniqueness_key=request.uniqueness_key,
                edits=[{"at": now.isoformat(), "initial": terms.as_json()}]))
            accepted = lifecycle.subscribe(
                lambda: _joined(conn), catalog,
                lifecycle.Subscribe(customer_id=request.customer_id, plan_id=plan_id, seats=terms.seats,
                                    subscription_id=subscription_id),
                principal=principal, now=now, request_id=request_id)
    except IntegrityError as error:
        raise MetronomeRefusal("a contract with this uniqueness_key exists", code="already_exists",
                              fields=[("uniqueness_key", "already used")]) from error
    rows_committed()
    return contract_id, accepted


# --- reads --------------------------------------------------------------------------------------------------


def _stored(conn: sa.Connection, row: Any) -> StoredContract:
    edits = list(row.edits)
    initial = Terms.from_json(edits[0]["initial"]) if edits and "initial" in edits[0] else Terms.from_json(row.terms)
    sub = conn.execute(sa.select(subscriptions.c.current_period_start, subscriptions.c.current_period_end,
                                 subscriptions.c.status)
                       .where(subscriptions.c.subscription_id == row.subscription_id)).first()
    names = {r.product_id: r.name for r in conn.execute(sa.select(mx_products.c.product_id, mx_products.c.name))}
    return StoredContract(row.contract_id, row.customer_id, row.subscription_id, row.rate_card_id, row.name,
                          row.starting_at, row.ending_before, Terms.from_json(row.terms), initial, row.plan_id,
                          row.created_at, row.archived_at, int(row.seq), edits, names,
                          (sub.current_period_start, sub.current_period_end) if sub else None,
                          sub.status if sub else None)


def contract(engine: sa.Engine, customer_id: str, contract_id: str) -> StoredContract:
    with engine.connect() as conn:
        row = conn.execute(sa.select(mx_contracts).where(mx_contracts.c.contract_id == contract_id,
                                                         mx_contracts.c.customer_id == customer_id)).first()
        if row is None:
            raise not_found("contract", contract_id, "contract_id")
        return _stored(conn, row)


def contracts_page(engine: sa.Engine, customer_id: str, after: str | None, limit: int, *,
                   include_archived: bool = False) -> list[StoredContract]:
    """Up to `limit + 1` contracts of a customer in creation order after the cursor key."""
    query = sa.select(mx_contracts).where(mx_contracts.c.customer_id == customer_id) \
        .order_by(mx_contracts.c.seq).limit(limit + 1)
    if after is not None:
        if not after.isdigit() or len(after) > 18:
            raise MetronomeRefusal("pass back a cursor unchanged", fields=[("cursor", "not a cursor")])
        query = query.where(mx_contracts.c.seq > int(after))
    if not include_archived:
        query = query.where(mx_contracts.c.archived_at.is_(None))
    with engine.connect() as conn:
        return [_stored(conn, row) for row in conn.execute(query)]


# --- edits --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """An edit of a contract (v2 edit, v1 amend, updateEndDate), already decoded."""

    add_subscriptions: Sequence[Mapping[str, Any]] = ()
    update_subscriptions: Sequence[Mapping[str, Any]] = ()
    add_overrides: Sequence[Mapping[str, Any]] = ()
    remove_override_ids: Sequence[str] = ()
    add_recurring_credits: Sequence[Mapping[str, Any]] = ()
    end_recurring_credit_ids: Sequence[str] = ()
    end_date_given: bool = False
    ending_before: datetime | None = None
    name: str | None = None


@dataclass(frozen=True)
class Step:
    """One command an edit needs: `build(customer_id)` makes it; audited as `action` with `details`."""

    build: Callable[[str], SubscriptionCommand]
    action: str
    details: dict[str, Any]


@dataclass(frozen=True)
class PlannedEdit:
    """What an edit changes: its commands in order, then the contract row's new state (`record`)."""

    current: StoredContract
    steps: list[Step]
    terms: Terms
    plan_id: str
    ending_before: datetime | None
    name: str | None


def _at_or_now(value: Any, now: datetime) -> datetime:
    return value if isinstance(value, datetime) else now


def _timing(starting_at: datetime, now: datetime, period: tuple[datetime, datetime] | None,
            field_name: str) -> str:
    if now.replace(minute=0, second=0, microsecond=0) <= starting_at <= now:
        return "immediate"
    if starting_at <= now:
        raise MetronomeRefusal("a change applies now (in the current hour) or at the period end",
                              code="not_supported", fields=[(field_name, "not supported: a backdated change")])
    if period is not None and starting_at == period[1]:
        return "period_end"
    raise MetronomeRefusal("a change applies now or at the current period's end", code="not_supported",
                          fields=[(field_name, "not supported: another instant than now or the period end")])


def _new_terms(current: StoredContract, edit: Edit, now: datetime) -> tuple[Terms, str, int | None]:
    """The terms after `edit`, the plan change timing and the new quantity (None: unchanged)."""
    subscription = dict(current.terms.subscription) if current.terms.subscription is not None else None
    timing = "immediate"
    quantity: int | None = None
    ended = False
    try:
        for index, update in enumerate(edit.update_subscriptions):
            path = f"update_subscriptions[{index}]"
            if subscription is None or update.get("subscription_id") != subscription["id"]:
                raise Invalid(f"{path}.subscription_id", "not a subscription of this contract")
            for key in ("seat_updates", "quantity_management_mode_update", "proration_rounding"):
                if update.get(key):
                    raise Unsupported(f"{path}.{key}", key)
            if "ending_before" in update and update["ending_before"] is not None:
                timing = _timing(update["ending_before"], now, current.period, f"{path}.ending_before")
                ended = True
            for q_index, change in enumerate(update.get("quantity_updates") or ()):
                q_path = f"{path}.quantity_updates[{q_index}]"
                if _timing(change["starting_at"], now, current.period, f"{q_path}.starting_at") != "immediate":
                    raise Unsupported(f"{q_path}.starting_at", "a quantity change applies now")
                base = quantity if quantity is not None else int(subscription["quantity"])
                wanted = change.get("quantity")
                if wanted is None:
                    wanted = base + int(change.get("quantity_delta") or 0)
                quantity = int(wanted)
                if quantity != wanted or quantity < 1:
                    raise Unsupported(f"{q_path}.quantity", "a whole number of seats, at least 1")
            if update.get("name"):
                subscription["name"] = update["name"]
        if len(edit.add_subscriptions) > 1:
            raise Unsupported("add_subscriptions", "one subscription per contract")
        if ended:
            subscription = None
        if edit.add_subscriptions:
            if subscription is not None:
                raise Unsupported("add_subscriptions", "one subscription per contract: end the current one "
                                                       "in the same edit (update_subscriptions.ending_before)")
            raw = edit.add_subscriptions[0]
            start = _at_or_now(raw.get("starting_at"), now)
            add_timing = _timing(start, now, current.period, "add_subscriptions[0].starting_at")
            if ended and add_timing != timing:
                raise Invalid("add_subscriptions[0].starting_at", "must be the ending subscription's end")
            timing = add_timing
            subscription = subscription_entry(raw, str(uuid.uuid4()), "add_subscriptions[0]")
            subscription["starting_at"] = start.isoformat()
            subscription["quantity_schedule"] = [{"quantity": subscription["quantity"],
                                                  "starting_at": start.isoformat()}]
        elif quantity is not None and subscription is not None:
            subscription["quantity"] = quantity
            subscription["quantity_schedule"] = [*subscription.get("quantity_schedule", []),
                                                 {"quantity": quantity, "starting_at": now.isoformat()}]
        overrides = [o for o in current.terms.overrides if o["id"] not in set(edit.remove_override_ids)]
        overrides += [override_entry(o, str(uuid.uuid4()), f"add_overrides[{i}]", now, o["starting_at"])
                      for i, o in enumerate(edit.add_overrides)]
        known = {c["id"] for c in current.terms.recurring_credits}
        for index, credit_id in enumerate(edit.end_recurring_credit_ids):
            if credit_id not in known:
                raise Invalid(f"update_recurring_credits[{index}].recurring_credit_id",
                              "not a recurring credit of this contract")
        credits = [c for c in current.terms.recurring_credits if c["id"] not in set(edit.end_recurring_credit_ids)]
        credits += [recurring_credit_entry(c, str(uuid.uuid4()), f"add_recurring_credits[{i}]")
                    for i, c in enumerate(edit.add_recurring_credits)]
    except (Unsupported, Invalid) as error:
        raise _refusal(error) from error
    if edit.add_subscriptions and subscription is not None:
        quantity = int(subscription["quantity"])  # the new subscription's: a seat change after the plan change
        if timing != "immediate" and quantity != current.terms.seats:
            raise _refusal(Unsupported("add_subscriptions[0].initial_quantity",
                                       "another quantity at the period end (change the quantity now)"))
    return Terms(subscription, tuple(credits), tuple(overrides)), timing, quantity


def plan_edit(engine: sa.Engine, ensure_plan: EnsurePlan, customer_id: str, contract_id: str, change: Edit, *,
              now: datetime) -> PlannedEdit:
    """The commands an edit needs (plan change, seat change, cancellation or its revocation), in that order.
    Nothing to change needs none. The plan of the new terms is made here (before any command names it)."""
    current = contract(engine, customer_id, contract_id)
    if current.status == "cancelled":
        raise MetronomeRefusal("the contract has ended", code="not_supported",
                              fields=[("contract_id", "not supported: editing an ended contract")])
    terms, timing, quantity = _new_terms(current, change, now)
    with engine.connect() as conn:
        definition = _definition(conn, current.rate_card_id, terms, now)
    plan_id = current.plan_id
    subscription_id = current.subscription_id
    steps: list[Step] = []
    if definition["id"] != current.plan_id.split("@", 1)[0]:
        _, plan_id = ensure_plan(definition)
        target = plan_id
        steps.append(Step(lambda owner: ChangePlan(subscription_id=subscription_id, customer_id=owner,
                                                   plan_id=target, timing=timing),
                          "subscription.change_plan", {"plan_id": target, "timing": timing,
                                                       "contract_id": contract_id}))
    if quantity is not None and quantity != current.terms.seats:
        if steps:
            # NOTE: a plan change and a seat change at one instant would be two prorations of the same
            # window (one invoice each, identified by the window): the worker refuses the second.
            raise MetronomeRefusal("a tier change keeps the quantity; change it in another edit",
                                  code="not_supported", fields=[("add_subscriptions[0].initial_quantity",
                                                                 "not supported: a tier and a quantity change "
                                                                 "in one edit")])
        seats = quantity
        steps.append(Step(lambda owner: ChangeSeats(subscription_id=subscription_id, customer_id=owner, seats=seats),
                          "subscription.change_seats", {"seats": seats, "contract_id": contract_id}))
    ending_before = current.ending_before
    if change.end_date_given and change.ending_before != current.ending_before:
        ending_before = change.ending_before
        if change.ending_before is None:
            steps.append(Step(lambda owner: RevokeCancellation(subscription_id=subscription_id, customer_id=owner),
                              "subscription.revoke_cancellation", {"contract_id": contract_id}))
        else:
            at_end = _timing(change.ending_before, now, current.period, "ending_before") == "period_end"
            steps.append(Step(lambda owner: CancelSubscription(subscription_id=subscription_id, customer_id=owner,
                                                               at_period_end=at_end, reason="contract end date"),
                              "subscription.cancel", {"at_period_end": at_end, "contract_id": contract_id}))
    return PlannedEdit(current, steps, terms, plan_id, ending_before, change.name)


def send_step(uow: UnitOfWorkFactory, planned: PlannedEdit, step: Step, *, principal: Principal, now: datetime,
              request_id: str | None) -> Accepted:
    return lifecycle.send_command(uow, planned.current.subscription_id, step.build, step.action,
                                  principal=principal, authorize=lambda _owner: None, now=now,
                                  request_id=request_id, **step.details)


def record_edit(engine: sa.Engine, planned: PlannedEdit, at: datetime) -> None:
    """The contract's new terms, once the worker applied every command of the edit."""
    entry = {"at": at.isoformat(), "terms": planned.terms.as_json()}
    with engine.begin() as conn:
        conn.execute(sa.update(mx_contracts).where(mx_contracts.c.contract_id == planned.current.contract_id).values(
            terms=planned.terms.as_json(), plan_id=planned.plan_id, ending_before=planned.ending_before,
            name=sa.func.coalesce(planned.name, mx_contracts.c.name),
            edits=mx_contracts.c.edits.op("||")(sa.func.jsonb_build_array(sa.cast(entry, JSONB)))))
