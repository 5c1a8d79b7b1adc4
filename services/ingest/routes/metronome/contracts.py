"""Metronome's contracts: v1 create, get, list, amend (overrides), updateEndDate; v2 get, list, edit.

A contract is one subscription of ours on the plan its terms make (`services.ingest.service_layer.
metronome_contracts`). Making or editing one sends lifecycle commands to the worker and answers once the
worker applied them (409 with the worker's reason when it refused; the contract id at once when it has not
answered within the wait: the command is on its way). Decode, call, wait, encode (`metronome.contract_shapes`).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.metronome import pages
from services.ingest.metronome.contract_shapes import ContractFacts, contract_v1, contract_v2
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.metronome.pricing import IdData, MetronomeBody
from services.ingest.routes.subscriptions import unit_of_work, worker_outcome
from services.ingest.service_layer import catalog as catalog_use_cases
from services.ingest.service_layer import metronome_contracts as use_cases
from services.ingest.service_layer.refusals import CatalogRefusal, MetronomeRefusal
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from shared.adapters.catalog_file import read_catalog_documents
from shared.domain.catalog import Catalog

router = APIRouter(tags=["metronome"])
MAX_CONTRACTS_PAGE = 20  # Metronome's bound for contract lists


class SubscriptionRate(BaseModel):
    billing_frequency: Literal["MONTHLY", "QUARTERLY", "ANNUAL", "WEEKLY"]
    product_id: str = Field(min_length=1, max_length=200)


class SubscriptionIn(MetronomeBody):
    collection_schedule: Literal["ADVANCE", "ARREARS"]
    proration: dict[str, Any] | None = None
    subscription_rate: SubscriptionRate
    initial_quantity: Decimal | None = Field(default=None, allow_inf_nan=False)
    starting_at: AwareDatetime | None = None
    ending_before: AwareDatetime | None = None
    quantity_management_mode: Literal["SEAT_BASED", "QUANTITY_ONLY"] | None = None
    billing_cycle_config: dict[str, Any] | None = None
    seat_config: dict[str, Any] | None = None
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    temporary_id: str | None = Field(default=None, max_length=200)


class AccessAmount(MetronomeBody):
    unit_price: Decimal = Field(ge=0, allow_inf_nan=False)
    credit_type_id: str | None = None
    quantity: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
    access_type: Literal["SPEND", "QUANTITY"] | None = None


class Duration(BaseModel):
    value: Decimal = Field(allow_inf_nan=False)
    unit: Literal["PERIODS"] | None = None


class RecurringCreditIn(MetronomeBody):
    access_amount: AccessAmount
    commit_duration: Duration
    priority: Decimal = Field(allow_inf_nan=False)
    product_id: str = Field(min_length=1, max_length=200)
    starting_at: AwareDatetime
    applicable_product_ids: list[str] | None = Field(default=None, max_length=50)
    applicable_product_tags: list[str] | None = None
    specifiers: list[dict[str, Any]] | None = None
    hierarchy_configuration: dict[str, Any] | None = None
    rollover_fraction: Decimal | None = None
    ending_before: AwareDatetime | None = None
    recurrence_frequency: Literal["MONTHLY", "QUARTERLY", "ANNUAL", "WEEKLY", "DAILY"] | None = None
    proration: Literal["NONE", "FIRST", "LAST", "FIRST_AND_LAST"] | None = None
    subscription_config: dict[str, Any] | None = None
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    rate_type: Literal["COMMIT_RATE", "LIST_RATE"] | None = None
    temporary_id: str | None = None


class OverwriteRate(MetronomeBody):
    rate_type: Literal["FLAT", "PERCENTAGE", "SUBSCRIPTION", "TIERED", "TIERED_PERCENTAGE", "CUSTOM"]
    price: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    credit_type_id: str | None = None


class OverrideIn(MetronomeBody):
    starting_at: AwareDatetime
    product_id: str | None = Field(default=None, max_length=200)
    type: Literal["OVERWRITE", "MULTIPLIER", "TIERED"] | None = None
    multiplier: Decimal | None = Field(default=None, allow_inf_nan=False)
    overwrite_rate: OverwriteRate | None = None
    override_specifiers: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    applicable_product_tags: list[str] | None = None
    tiers: list[dict[str, Any]] | None = None
    is_commit_specific: bool | None = None
    ending_before: AwareDatetime | None = None
    entitled: bool | None = None
    priority: Decimal | None = None
    target: Literal["COMMIT_RATE", "LIST_RATE"] | None = None


def _entries(items: list[Any] | None, path: str) -> list[dict[str, Any]]:
    """Request entries as the pure translation reads them; a field we do not model is refused by name."""
    decoded: list[dict[str, Any]] = []
    for index, item in enumerate(items or ()):
        item.refuse_unknown(f"{path}[{index}].")
        for key in ("access_amount", "overwrite_rate"):
            nested = getattr(item, key, None)
            if nested is not None:
                nested.refuse_unknown(f"{path}[{index}].{key}.")
        decoded.append(item.model_dump(exclude_none=True))
    return decoded


class ContractCreate(MetronomeBody):
    customer_id: str = Field(min_length=1, max_length=200)
    starting_at: AwareDatetime
    rate_card_id: str | None = Field(default=None, max_length=200)
    ending_before: AwareDatetime | None = None
    name: str | None = Field(default=None, max_length=200)
    uniqueness_key: str | None = Field(default=None, min_length=1, max_length=128)
    subscriptions: list[SubscriptionIn] | None = Field(default=None, max_length=10)
    recurring_credits: list[RecurringCreditIn] | None = Field(default=None, max_length=20)
    overrides: list[OverrideIn] | None = Field(default=None, max_length=50)


class ContractRef(BaseModel):
    contract_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    include_balance: bool | None = None
    include_ledgers: bool | None = None
    as_of_date: AwareDatetime | None = None


class ContractList(MetronomeBody):
    customer_id: str = Field(min_length=1, max_length=200)
    cursor: str | None = None
    limit: int | None = None
    include_archived: bool | None = None
    include_balance: bool | None = None
    include_ledgers: bool | None = None


class Amend(MetronomeBody):
    contract_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    starting_at: AwareDatetime
    overrides: list[OverrideIn] | None = Field(default=None, max_length=50)


class EndDate(MetronomeBody):
    contract_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    ending_before: AwareDatetime | None = None
    allow_ending_before_finalized_invoice: bool | None = None


class QuantityUpdate(BaseModel):
    starting_at: AwareDatetime
    quantity: Decimal | None = Field(default=None, allow_inf_nan=False)
    quantity_delta: Decimal | None = Field(default=None, allow_inf_nan=False)


class SubscriptionUpdate(MetronomeBody):
    subscription_id: str = Field(min_length=1, max_length=200)
    ending_before: AwareDatetime | None = None
    quantity_updates: list[QuantityUpdate] | None = Field(default=None, max_length=20)
    name: str | None = Field(default=None, max_length=200)
    seat_updates: dict[str, Any] | None = None
    quantity_management_mode_update: dict[str, Any] | None = None
    proration_rounding: dict[str, Any] | None = None


class RecurringCreditUpdate(MetronomeBody):
    recurring_credit_id: str = Field(min_length=1, max_length=200)
    ending_before: AwareDatetime


class RemoveOverride(BaseModel):
    id: str = Field(min_length=1, max_length=200)


class ContractEdit(MetronomeBody):
    contract_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    add_subscriptions: list[SubscriptionIn] | None = Field(default=None, max_length=10)
    update_subscriptions: list[SubscriptionUpdate] | None = Field(default=None, max_length=10)
    add_overrides: list[OverrideIn] | None = Field(default=None, max_length=50)
    remove_overrides: list[RemoveOverride] | None = Field(default=None, max_length=50)
    add_recurring_credits: list[RecurringCreditIn] | None = Field(default=None, max_length=20)
    update_recurring_credits: list[RecurringCreditUpdate] | None = Field(
        default=None, max_length=20, description="ending_before ends a recurring credit with the edit's changes")
    update_contract_end_date: AwareDatetime | None = None
    update_contract_name: str | None = Field(default=None, max_length=200)
    uniqueness_key: str | None = Field(default=None, max_length=128)


async def catalog_write(request: Request, principal: Principal, container: Container) -> catalog_use_cases.Write:
    """Who writes the plans contracts make, when (the edge's clock), and the YAML bootstrap (as the catalog
    API's writes)."""
    now = await run_in_threadpool(container.clock.now)
    directory = container.settings.catalog_dir
    return catalog_use_cases.Write(principal=principal, at=now, request_id=request.headers.get("x-request-id"),
                                   bootstrap=lambda: read_catalog_documents(sorted(directory.glob("*.yaml"))))


def _plan_ensurer(container: Container, write: catalog_use_cases.Write) -> use_cases.EnsurePlan:
    """Makes the plan of a definition in the catalog once (a plan already there is kept as it is)."""

    def ensure(definition: dict[str, Any]) -> tuple[Catalog, str]:
        plan_id = str(definition["id"])
        catalog = container.current_catalog(plan_id)
        if plan_id not in catalog.plans:
            try:
                catalog_use_cases.create_plan(container.engine, definition, write)
            except CatalogRefusal as error:
                if error.code != "already_exists":  # made by a concurrent request: the same definition
                    raise
            if container.catalog_provider is not None:
                container.catalog_provider.refresh()
            catalog = container.current_catalog(plan_id)
        return catalog, container.current_plan_id(plan_id)

    return ensure


def _facts(found: use_cases.StoredContract) -> ContractFacts:
    return ContractFacts(found.contract_id, found.customer_id, found.rate_card_id, found.name, found.starting_at,
                         found.ending_before, found.created_at, found.archived_at, found.terms, found.initial_terms,
                         found.products, found.period)


@router.post("/v1/contracts/create", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: create a contract (one subscription of ours on the plan its terms make)")
async def create_contract(body: ContractCreate, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container),
                          uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    if body.rate_card_id is None:
        raise MetronomeRefusal("a contract is made on a rate card", code="not_supported",
                                        fields=[("rate_card_id", "not supported: a contract without a rate card "
                                                                 "(packages, aliases)")])
    authorize_customer(principal, body.customer_id)
    write = await catalog_write(request, principal, container)
    contract_request = use_cases.ContractRequest(
        customer_id=body.customer_id, rate_card_id=body.rate_card_id, starting_at=body.starting_at,
        ending_before=body.ending_before, name=body.name, uniqueness_key=body.uniqueness_key,
        subscriptions=_entries(body.subscriptions, "subscriptions"),
        recurring_credits=_entries(body.recurring_credits, "recurring_credits"),
        overrides=_entries(body.overrides, "overrides"))
    contract_id, accepted = await run_in_threadpool(
        lambda: use_cases.create(container.engine, _plan_ensurer(container, write), contract_request,
                                 principal=principal, now=write.at, request_id=write.request_id))
    await worker_outcome(container, uow, accepted)
    return {"data": {"id": contract_id}}


async def _contract(container: Container, principal: Principal, customer_id: str,
                    contract_id: str) -> use_cases.StoredContract:
    authorize_customer(principal, customer_id)
    found: use_cases.StoredContract = await run_in_threadpool(use_cases.contract, container.engine, customer_id,
                                                              contract_id)
    return found


@router.post("/v1/contracts/get", responses=PROBLEM_RESPONSES, summary="Metronome: a contract (v1 shape)")
async def get_contract(body: ContractRef, principal: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> dict[str, Any]:
    return {"data": contract_v1(_facts(await _contract(container, principal, body.customer_id, body.contract_id)))}


@router.post("/v2/contracts/get", responses=PROBLEM_RESPONSES, summary="Metronome: a contract (v2 shape)")
async def get_contract_v2(body: ContractRef, principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> dict[str, Any]:
    return {"data": contract_v2(_facts(await _contract(container, principal, body.customer_id, body.contract_id)))}


async def _list(body: ContractList, principal: Principal, container: Container, shape: Any) -> dict[str, Any]:
    body.refuse_unknown()
    authorize_customer(principal, body.customer_id)
    size = min(pages.limit_of(body.limit), MAX_CONTRACTS_PAGE) if body.limit is not None else MAX_CONTRACTS_PAGE
    found = await run_in_threadpool(lambda: use_cases.contracts_page(
        container.engine, body.customer_id, pages.after_of(body.cursor), size,
        include_archived=bool(body.include_archived)))
    shown = pages.page(found, size, lambda c: str(c.seq), lambda c: shape(_facts(c)))
    return {"data": shown["data"], "cursor": shown["next_page"]}


@router.post("/v1/contracts/list", responses=PROBLEM_RESPONSES,
             summary="Metronome: a customer's contracts (v1 shape), a page (`cursor`)")
async def list_contracts(body: ContractList, principal: Principal = Depends(require(Scope.READ)),
                         container: Container = Depends(get_container)) -> dict[str, Any]:
    return await _list(body, principal, container, contract_v1)


@router.post("/v2/contracts/list", responses=PROBLEM_RESPONSES,
             summary="Metronome: a customer's contracts (v2 shape), a page (`cursor`)")
async def list_contracts_v2(body: ContractList, principal: Principal = Depends(require(Scope.READ)),
                            container: Container = Depends(get_container)) -> dict[str, Any]:
    return await _list(body, principal, container, contract_v2)


async def _apply(request: Request, principal: Principal, container: Container, uow: UnitOfWorkFactory,
                 customer_id: str, contract_id: str, change: use_cases.Edit) -> None:
    """Plan the edit, send its commands one after the other (each waits for the worker: a refusal stops
    the edit with 409), then record the contract's new terms."""
    authorize_customer(principal, customer_id)
    write = await catalog_write(request, principal, container)
    planned = await run_in_threadpool(lambda: use_cases.plan_edit(
        container.engine, _plan_ensurer(container, write), customer_id, contract_id, change, now=write.at))
    for step in planned.steps:
        accepted = await run_in_threadpool(partial(use_cases.send_step, uow, planned, step, principal=principal,
                                                   now=write.at, request_id=write.request_id))
        await worker_outcome(container, uow, accepted)
    await run_in_threadpool(use_cases.record_edit, container.engine, planned, write.at)


def _updates(items: list[RecurringCreditUpdate] | None) -> list[RecurringCreditUpdate]:
    for index, item in enumerate(items or ()):
        item.refuse_unknown(f"update_recurring_credits[{index}].")
    return list(items or ())


@router.post("/v2/contracts/edit", responses=PROBLEM_RESPONSES,
             summary="Metronome: edit a contract (upgrade or downgrade, seats, overrides, credits, end date)")
async def edit_contract(body: ContractEdit, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container),
                        uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    updates = []
    for index, update in enumerate(body.update_subscriptions or ()):
        update.refuse_unknown(f"update_subscriptions[{index}].")
        updates.append(update.model_dump(exclude_none=True) | (
            {"ending_before": update.ending_before} if update.ending_before is not None else {}))
    change = use_cases.Edit(
        add_subscriptions=_entries(body.add_subscriptions, "add_subscriptions"), update_subscriptions=updates,
        add_overrides=_entries(body.add_overrides, "add_overrides"),
        remove_override_ids=[r.id for r in body.remove_overrides or ()],
        add_recurring_credits=_entries(body.add_recurring_credits, "add_recurring_credits"),
        end_recurring_credit_ids=[c.recurring_credit_id for c in _updates(body.update_recurring_credits)],
        end_date_given="update_contract_end_date" in body.model_fields_set,
        ending_before=body.update_contract_end_date, name=body.update_contract_name)
    await _apply(request, principal, container, uow, body.customer_id, body.contract_id, change)
    return {"data": {"id": str(uuid.uuid4())}}


@router.post("/v1/contracts/amend", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: amend a contract (overrides; other amendments are not supported)")
async def amend_contract(body: Amend, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container),
                         uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    change = use_cases.Edit(add_overrides=_entries(body.overrides, "overrides"))
    await _apply(request, principal, container, uow, body.customer_id, body.contract_id, change)
    return {"data": {"id": str(uuid.uuid4())}}


@router.post("/v1/contracts/updateEndDate", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: end a contract (now or at the current period's end), or make it open-ended")
async def update_end_date(body: EndDate, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container),
                          uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    change = use_cases.Edit(end_date_given=True, ending_before=body.ending_before)
    await _apply(request, principal, container, uow, body.customer_id, body.contract_id, change)
    return {"data": {"id": body.contract_id}}
