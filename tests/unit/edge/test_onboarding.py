"""Customer onboarding without PostgreSQL or Stripe: idempotent by external id, resumable after a payment
provider failure, and its refusals (members of a user, other data for the same external id, a taken alias)."""

from __future__ import annotations

import pytest

from services.ingest.auth import Principal, Scope
from services.ingest.service_layer import customers
from services.ingest.service_layer.unit_of_work import CustomerRecord, Member
from shared.errors import InfrastructureError

from .fakes import FakeDatabase

pytestmark = pytest.mark.unit

ADMIN = Principal(key_id="admin", scopes=frozenset({Scope.ADMIN}))


class FakePaymentCustomers:
    """The provider's side: customers created per idempotency key; `down` fails the next call like an outage."""

    def __init__(self) -> None:
        self.created: dict[str, str] = {}  # idempotency key -> provider id
        self.attached: list[tuple[str, str]] = []
        self.down = False

    def create_customer(self, customer: CustomerRecord, *, idempotency_key: str) -> str:
        if self.down:
            raise InfrastructureError("stripe unavailable")
        return self.created.setdefault(idempotency_key, f"cus_{len(self.created) + 1}")

    def attach_payment_method(self, payment_method_id: str, provider_customer_id: str, *,
                              idempotency_key: str) -> None:
        self.attached.append((payment_method_id, provider_customer_id))


def _request(**fields: object) -> customers.Onboard:
    values: dict[str, object] = {"external_id": "acme", "kind": "org", "name": "Acme", "email": "b@acme.test",
                                 "currency": "USD", **fields}
    return customers.Onboard(**values)  # type: ignore[arg-type]


def _onboard(db: FakeDatabase, stripe: FakePaymentCustomers, **fields: object) -> tuple[CustomerRecord, bool]:
    return customers.onboard(db, stripe, _request(**fields), principal=ADMIN, request_id=None)


def test_onboarding_creates_the_customer_its_provider_customer_and_default_payment_method() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()

    record, created = _onboard(db, stripe, aliases=["acme-hub"], members=[Member("u1")],
                               payment_method_id="pm_card_visa")

    assert created and record.customer_id == customers.customer_id_for("acme")
    assert (record.stripe_customer_id, record.default_payment_method_id) == ("cus_1", "pm_card_visa")
    assert (record.aliases, [m.user_id for m in record.members]) == (["acme-hub"], ["u1"])
    assert [a["action"] for a in db.state.audit] == ["customer.onboard"]


def test_onboarding_again_with_the_same_data_is_the_same_customer_and_no_second_provider_customer() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()
    first, _ = _onboard(db, stripe)

    again, created = _onboard(db, stripe)

    assert not created and again == first and len(stripe.created) == 1 and len(db.state.audit) == 1


def test_an_onboarding_stopped_by_a_provider_outage_resumes_on_retry() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()
    stripe.down = True
    with pytest.raises(InfrastructureError):
        _onboard(db, stripe)
    stripe.down = False

    record, created = _onboard(db, stripe)

    assert not created and record.stripe_customer_id == "cus_1"


def test_the_same_external_id_with_other_data_is_refused_naming_the_fields() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()
    _onboard(db, stripe)

    with pytest.raises(customers.AlreadyOnboarded) as refused:
        _onboard(db, stripe, name="Acme Corp", currency="EUR")

    assert [f for f, _ in refused.value.fields] == ["name", "currency"]


def test_an_alias_of_another_customer_is_refused_and_a_user_has_no_members() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()
    _onboard(db, stripe, aliases=["shared-name"])

    with pytest.raises(customers.AliasTaken):
        _onboard(db, stripe, external_id="other", aliases=["shared-name"])
    with pytest.raises(customers.MembersForOrganisationsOnly):
        _onboard(db, stripe, external_id="solo", kind="user", members=[Member("u1")])

    assert list(db.state.customer_rows) == [customers.customer_id_for("acme")]


def test_customers_are_listed_by_id_a_page_at_a_time() -> None:
    db, stripe = FakeDatabase(), FakePaymentCustomers()
    for external_id in ("a", "b", "c"):
        _onboard(db, stripe, external_id=external_id)

    page, more = customers.customers_page(db, None, 2)
    rest, done = customers.customers_page(db, page[-1].customer_id, 2)

    assert (len(page), more, len(rest), done) == (2, True, 1, False)
