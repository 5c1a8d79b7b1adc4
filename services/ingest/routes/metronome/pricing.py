"""Metronome's contract pricing: products (create, get, list, archive) and rate cards (create, get, list,
addRate, addRates, getRates). Decode, call `services.ingest.service_layer.metronome_pricing`, answer Metronome's
shape (`services.ingest.metronome.pricing_shapes`). A field we do not implement is refused with
`not_supported` naming it (`extra` fields of a body included), never ignored."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.metronome import pages
from services.ingest.metronome.customers import not_supported
from services.ingest.metronome.pricing_shapes import product_json, rate_card_json, rate_json, rate_list_item
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import metronome_pricing as use_cases

router = APIRouter(tags=["metronome"])
BASE = "/v1/contract-pricing"


class MetronomeBody(BaseModel):
    """A Metronome request body: fields we do not model are kept so they can be refused by name."""

    model_config = ConfigDict(extra="allow")

    def refuse_unknown(self, path: str = "") -> None:
        for key, value in (self.model_extra or {}).items():
            if value not in (None, [], {}):
                raise not_supported(f"{path}{key}", key)


class IdBody(BaseModel):
    id: str


class IdData(BaseModel):
    data: IdBody


def _id(ident: str) -> dict[str, Any]:
    return {"data": {"id": ident}}


# --- products -----------------------------------------------------------------------------------------------


class ProductCreate(MetronomeBody):
    name: str = Field(min_length=1, max_length=200)
    type: Literal["FIXED", "USAGE", "COMPOSITE", "SUBSCRIPTION", "PROFESSIONAL_SERVICE", "PRO_SERVICE"]
    billable_metric_id: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = Field(default=None, max_length=50)
    custom_fields: dict[str, str] | None = None
    composite_product_ids: list[str] | None = None
    composite_tags: list[str] | None = None
    pricing_group_key: list[str] | None = None
    presentation_group_key: list[str] | None = None
    quantity_conversion: dict[str, Any] | None = None
    quantity_rounding: dict[str, Any] | None = None


class ProductGet(BaseModel):
    id: str = Field(min_length=1, max_length=200)


class ProductList(BaseModel):
    archive_filter: Literal["ARCHIVED", "NOT_ARCHIVED", "ALL"] = "NOT_ARCHIVED"


class ProductArchive(BaseModel):
    product_id: str = Field(min_length=1, max_length=200)


@router.post(f"{BASE}/products/create", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: create a product (USAGE on a billable metric, SUBSCRIPTION or FIXED)")
async def create_product(body: ProductCreate, _: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> dict[str, Any]:
    body.refuse_unknown()
    meters = set((await run_in_threadpool(container.current_catalog)).meters)
    if body.billable_metric_id is not None and body.billable_metric_id not in meters \
            and container.catalog_provider is not None:  # a metric just created (on another replica too)
        meters = set((await run_in_threadpool(container.catalog_provider.refresh)).meters)
    created = await run_in_threadpool(use_cases.create_product, container.engine,
                                      body.model_dump(exclude_none=True), meters)
    return _id(created)


@router.post(f"{BASE}/products/get", responses=PROBLEM_RESPONSES, summary="Metronome: a product")
async def get_product(body: ProductGet, _: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> dict[str, Any]:
    found = await run_in_threadpool(use_cases.product, container.engine, body.id)
    return {"data": product_json(found.product, found.tags, found.custom_fields, found.created_at,
                                 found.archived_at)}


@router.post(f"{BASE}/products/list", responses=PROBLEM_RESPONSES, summary="Metronome: products, a page")
async def list_products(body: ProductList | None = None, limit: int | None = None, next_page: str | None = None,
                        _: Principal = Depends(require(Scope.READ)),
                        container: Container = Depends(get_container)) -> dict[str, Any]:
    size = pages.limit_of(limit)
    found = await run_in_threadpool(use_cases.products_page, container.engine, pages.after_of(next_page), size,
                                    (body or ProductList()).archive_filter)
    return pages.page(found, size, lambda p: str(p.seq),
                      lambda p: product_json(p.product, p.tags, p.custom_fields, p.created_at, p.archived_at))


@router.post(f"{BASE}/products/archive", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: archive a product (kept for what names it)")
async def archive_product(body: ProductArchive, _: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container)) -> dict[str, Any]:
    now = await run_in_threadpool(container.clock.now)
    return _id(await run_in_threadpool(use_cases.archive_product, container.engine, body.product_id, now))


# --- rate cards ---------------------------------------------------------------------------------------------


class Alias(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    starting_at: AwareDatetime | None = None
    ending_before: AwareDatetime | None = None


class RateCardCreate(MetronomeBody):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    aliases: list[Alias] | None = Field(default=None, max_length=20)
    custom_fields: dict[str, str] | None = None
    fiat_credit_type_id: str | None = None
    credit_type_conversions: list[dict[str, Any]] | None = None


class RateCardGet(BaseModel):
    id: str = Field(min_length=1, max_length=200)


class TierIn(BaseModel):
    price: Decimal = Field(ge=0, allow_inf_nan=False)
    size: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)


class RateIn(MetronomeBody):
    product_id: str = Field(min_length=1, max_length=200)
    entitled: bool
    rate_type: Literal["FLAT", "PERCENTAGE", "SUBSCRIPTION", "TIERED", "TIERED_PERCENTAGE", "CUSTOM"]
    starting_at: AwareDatetime
    ending_before: AwareDatetime | None = None
    price: Decimal | None = Field(default=None, allow_inf_nan=False)
    tiers: list[TierIn] | None = Field(default=None, max_length=50)
    billing_frequency: Literal["MONTHLY", "QUARTERLY", "ANNUAL", "WEEKLY"] | None = None
    credit_type_id: str | None = None
    is_prorated: bool | None = None
    pricing_group_values: dict[str, str] | None = None
    custom_rate: dict[str, Any] | None = None
    commit_rate: dict[str, Any] | None = None
    quantity: Decimal | None = Field(default=None, allow_inf_nan=False)


class RateAdd(RateIn):
    rate_card_id: str = Field(min_length=1, max_length=200)


class RatesAdd(BaseModel):
    rate_card_id: str = Field(min_length=1, max_length=200)
    rates: list[RateIn] = Field(min_length=1, max_length=500)


class Selector(MetronomeBody):
    product_id: str | None = None


class RatesGet(BaseModel):
    rate_card_id: str = Field(min_length=1, max_length=200)
    at: AwareDatetime
    selectors: list[Selector] | None = Field(default=None, max_length=100)


def _rate_input(rate: RateIn, path: str) -> dict[str, Any]:
    rate.refuse_unknown(path)
    return rate.model_dump(exclude_none=True)


@router.post(f"{BASE}/rate-cards/create", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: create a rate card (USD cents)")
async def create_rate_card(body: RateCardCreate, _: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container)) -> dict[str, Any]:
    body.refuse_unknown()
    return _id(await run_in_threadpool(use_cases.create_rate_card, container.engine,
                                       body.model_dump(mode="json", exclude_none=True)))


def _card_json(card: use_cases.StoredRateCard) -> dict[str, Any]:
    return rate_card_json(card.card.rate_card_id, card.card.name, card.description, card.aliases,
                          card.custom_fields, card.created_at)


@router.post(f"{BASE}/rate-cards/get", responses=PROBLEM_RESPONSES, summary="Metronome: a rate card")
async def get_rate_card(body: RateCardGet, _: Principal = Depends(require(Scope.READ)),
                        container: Container = Depends(get_container)) -> dict[str, Any]:
    return {"data": _card_json(await run_in_threadpool(use_cases.rate_card, container.engine, body.id))}


@router.post(f"{BASE}/rate-cards/list", responses=PROBLEM_RESPONSES, summary="Metronome: rate cards, a page")
async def list_rate_cards(limit: int | None = None, next_page: str | None = None,
                          _: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> dict[str, Any]:
    size = pages.limit_of(limit)
    found = await run_in_threadpool(use_cases.rate_cards_page, container.engine, pages.after_of(next_page), size)
    return pages.page(found, size, lambda c: str(c.seq), _card_json)


@router.post(f"{BASE}/rate-cards/addRate", responses=PROBLEM_RESPONSES,
             summary="Metronome: add a rate to a rate card (FLAT, SUBSCRIPTION or TIERED, USD cents)")
async def add_rate(body: RateAdd, _: Principal = Depends(require(Scope.ADMIN)),
                   container: Container = Depends(get_container)) -> dict[str, Any]:
    rate = _rate_input(body, "")
    rate.pop("rate_card_id", None)
    stored = await run_in_threadpool(use_cases.add_rates, container.engine, body.rate_card_id, [rate], "")
    return {"data": rate_json(stored[0])}


@router.post(f"{BASE}/rate-cards/addRates", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: add several rates to a rate card (one transaction)")
async def add_rates(body: RatesAdd, _: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> dict[str, Any]:
    rates = [_rate_input(rate, f"rates[{index}].") for index, rate in enumerate(body.rates)]
    await run_in_threadpool(use_cases.add_rates, container.engine, body.rate_card_id, rates)
    return _id(body.rate_card_id)


@router.post(f"{BASE}/rate-cards/getRates", responses=PROBLEM_RESPONSES,
             summary="Metronome: the rates of a rate card in force at an instant, a page")
async def get_rates(body: RatesGet, limit: int | None = None, next_page: str | None = None,
                    _: Principal = Depends(require(Scope.READ)),
                    container: Container = Depends(get_container)) -> dict[str, Any]:
    product_ids: set[str] | None = None
    for index, selector in enumerate(body.selectors or ()):
        selector.refuse_unknown(f"selectors[{index}].")
        if selector.product_id is not None:
            product_ids = (product_ids or set()) | {selector.product_id}
    size = pages.limit_of(limit)
    at: datetime = body.at
    found = await run_in_threadpool(use_cases.rates_at, container.engine, body.rate_card_id, at, product_ids,
                                    pages.after_of(next_page), size)
    return pages.page(found, size, lambda r: str(r.seq), lambda r: rate_list_item(r.row, r.product))
