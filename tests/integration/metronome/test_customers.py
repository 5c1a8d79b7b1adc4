"""Metronome's customer calls through the official SDK against the real edge (and worker): create with a Stripe
billing config, aliases and custom fields, retrieve, list with its filters across pages, set name and ingest
aliases, archive; refusals raise the SDK's own exceptions with our problem detail."""

from __future__ import annotations

import uuid

import httpx
import metronome
import pytest

pytestmark = pytest.mark.integration


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _create(client: metronome.Metronome, **fields: object) -> metronome.types.v1.CustomerCreateResponse:
    return client.v1.customers.create(name=str(fields.pop("name", "Acme")), **fields)  # type: ignore[arg-type]


def test_a_customer_created_with_a_stripe_billing_config_reads_back_in_metronomes_shape(
        metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    created = metronome_client.v1.customers.create(
        name="Hugging Org", external_id=f"hf-org-{tag}", ingest_aliases=[f"org-{tag}", f"team-{tag}"],
        billing_config={"billing_provider_customer_id": f"cus_{tag}", "billing_provider_type": "stripe",
                        "stripe_collection_method": "charge_automatically"},
        custom_fields={"tier": "pro", "email": "billing@hf.test"}).data
    assert created.id.startswith("cust_")
    assert (created.name, created.external_id, sorted(created.ingest_aliases), created.custom_fields) == (
        "Hugging Org", f"hf-org-{tag}", [f"org-{tag}", f"team-{tag}"], {"tier": "pro", "email": "billing@hf.test"})

    detail = metronome_client.v1.customers.retrieve(customer_id=created.id).data
    assert (detail.id, detail.external_id, detail.archived_at) == (created.id, f"hf-org-{tag}", None)
    assert detail.created_at is not None and detail.updated_at >= detail.created_at
    assert detail.current_billable_status is not None and detail.current_billable_status.value == "billable"


def test_the_list_follows_next_page_and_takes_metronomes_filters(metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    ids = [_create(metronome_client, name=f"List {i}", external_id=f"list-{tag}-{i}",
                   ingest_aliases=[f"alias-{tag}-{i}"]).data.id for i in range(5)]

    first = metronome_client.v1.customers.list(customer_ids=ids, limit=2)
    assert len(first.data) == 2 and first.next_page
    seen = [c.id for c in metronome_client.v1.customers.list(customer_ids=ids, limit=2)]  # auto-paginates
    assert seen == sorted(ids)

    [aliased] = metronome_client.v1.customers.list(ingest_alias=f"alias-{tag}-3").data
    assert aliased.id == ids[3]


def test_set_name_and_set_ingest_aliases_replace_what_the_customer_had(metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    cid = _create(metronome_client, external_id=f"ren-{tag}", ingest_aliases=[f"old-{tag}"]).data.id

    renamed = metronome_client.v1.customers.set_name(customer_id=cid, name="Renamed Org").data
    assert renamed.name == "Renamed Org"
    metronome_client.v1.customers.set_ingest_aliases(customer_id=cid, ingest_aliases=[f"new-{tag}", f"two-{tag}"])
    detail = metronome_client.v1.customers.retrieve(customer_id=cid).data
    assert (detail.name, sorted(detail.ingest_aliases)) == ("Renamed Org", [f"new-{tag}", f"two-{tag}"])
    assert metronome_client.v1.customers.list(ingest_alias=f"old-{tag}").data == []


def test_an_archived_customer_is_listed_only_among_the_archived(metronome_client: metronome.Metronome) -> None:
    cid = _create(metronome_client, external_id=f"arch-{_tag()}").data.id
    assert metronome_client.v1.customers.archive(id=cid).data.id == cid

    assert metronome_client.v1.customers.list(customer_ids=[cid]).data == []
    [archived] = metronome_client.v1.customers.list(customer_ids=[cid], only_archived=True).data
    assert archived.id == cid and archived.archived_at is not None
    assert metronome_client.v1.customers.retrieve(customer_id=cid).data.archived_at is not None


def test_an_unknown_customer_is_the_sdks_not_found_error_with_our_problem(
        metronome_client: metronome.Metronome) -> None:
    with pytest.raises(metronome.NotFoundError) as caught:
        metronome_client.v1.customers.retrieve(customer_id="cust_nobody")
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["errors"][0]["field"]) == ("not_found", "customer_id")
    assert "cust_nobody" in body["message"]


def test_a_billing_provider_other_than_stripe_is_refused_as_not_supported(
        metronome_client: metronome.Metronome) -> None:
    with pytest.raises(metronome.BadRequestError) as caught:
        metronome_client.v1.customers.create(
            name="Marketplace", billing_config={"billing_provider_customer_id": "aws-1",
                                                "billing_provider_type": "aws_marketplace"})
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["errors"][0]["field"]) == ("not_supported", "billing_config.billing_provider_type")


def test_an_alias_of_another_customer_is_a_conflict(metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    _create(metronome_client, external_id=f"own-{tag}", ingest_aliases=[f"shared-{tag}"])
    other = _create(metronome_client, external_id=f"other-{tag}").data.id
    with pytest.raises(metronome.ConflictError) as caught:
        metronome_client.v1.customers.set_ingest_aliases(customer_id=other, ingest_aliases=[f"shared-{tag}"])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "alias_taken"


def test_a_customer_still_billed_by_a_live_subscription_is_not_archived(metronome_client: metronome.Metronome,
                                                                         native: httpx.Client) -> None:
    cid = _create(metronome_client, external_id=f"live-{_tag()}").data.id
    subscribed = native.post("/v1/subscriptions", json={"customer_id": cid, "plan_id": "basic_monthly"})
    assert subscribed.status_code == 201, subscribed.text
    with pytest.raises(metronome.ConflictError) as caught:
        metronome_client.v1.customers.archive(id=cid)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "customer_has_live_subscription"
    assert metronome_client.v1.customers.retrieve(customer_id=cid).data.archived_at is None
