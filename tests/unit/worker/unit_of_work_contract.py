"""What every `BillingUnitOfWork` must do, written once and run against the fake (tests/unit/worker/
test_fake_unit_of_work.py) and against PostgreSQL (tests/integration/worker/test_sql_unit_of_work.py), so the
fake the handler unit tests rely on cannot drift from the real adapter.

A subclass provides `new_uow()` (a fresh unit of work over the same store or transaction) and
`record_usage(...)` (usage as the usage materialiser stores it).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.billing_worker.bootstrap import billing_handlers, message_bus
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, ClosePeriod, CreateSubscription, Payload, PaymentSucceeded
from shared.domain.calendar import Period
from shared.domain.customer_balance import InsufficientBalanceError
from shared.domain.ids import SubscriptionId, attempt_id_for, invoice_id_for
from shared.domain.invoice import InvoiceKey, InvoiceReason, InvoiceStatus
from shared.domain.money import Money
from shared.domain.payment_attempt import PaymentAttempt

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
BUS = message_bus(billing_handlers())


class UnitOfWorkContract:
    def new_uow(self) -> BillingUnitOfWork:
        raise NotImplementedError

    def record_usage(self, subscription_id: str, customer_id: str, cost_usd_micros: int, at: datetime) -> None:
        raise NotImplementedError

    # --- helpers: state is made by the real use cases, then read back through the port

    def send(self, payload: Payload, at: datetime) -> Envelope:
        envelope = new_envelope(TYPE_OF[type(payload)], payload.model_dump(mode="json"), producer="test",
                                occurred_at=at)
        BUS.handle(self.new_uow(), [(envelope, payload)], at)
        return envelope

    def subscribe(self) -> tuple[str, str, str]:
        """A Pro subscription with a card on file; returns (subscription id, customer id, first invoice id)."""
        sub, cus = f"sub_{uuid.uuid4().hex[:12]}", f"cus_{uuid.uuid4().hex[:12]}"
        self.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                     payment_method_id="pm_card_visa", tax_rate_bps=500), JAN_1)
        uow = self.started()
        [invoice_id] = uow.open_invoices_of(sub)
        return sub, cus, invoice_id

    def started(self, at: datetime = JAN_16) -> BillingUnitOfWork:
        uow = self.new_uow()
        uow.begin(at)
        return uow

    # --- the contract

    def test_a_committed_subscription_is_loaded_back_with_its_billing_state(self) -> None:
        sub, cus, _ = self.subscribe()
        uow = self.started()
        state = uow.subscription(sub)
        assert (state.subscription.customer_id, state.currency, state.tax_rate_bps, state.timezone) == (
            cus, "USD", 500, "UTC")
        assert state.stored_version == state.subscription.version
        assert state.subscription.payment_method_id == "pm_card_visa"

        state.subscription.carry_credit(120)
        state.subscription.pause(at=JAN_16)
        uow.touch(state)
        uow.commit()

        again = self.started().subscription(sub).subscription
        assert (again.carried_credit_minor, again.paused_at, again.status.value) == (120, JAN_16, "paused")

    def test_an_unknown_subscription_or_invoice_is_not_found(self) -> None:
        uow = self.started()
        uow.load(["sub_nowhere"])
        assert "sub_nowhere" not in uow.states
        assert uow.invoice("in_nowhere") is None

    def test_the_first_invoice_is_numbered_open_unpaid_and_has_one_pending_attempt(self) -> None:
        sub, _, invoice_id = self.subscribe()
        found = self.started().invoice(invoice_id)
        assert found is not None
        invoice, row = found
        assert (invoice.status, invoice.subscription_id, invoice.total.amount_minor) == (InvoiceStatus.OPEN, sub, 945)
        assert invoice.number and row.amount_paid_minor == 0
        uow = self.started()
        assert uow.attempt_no(attempt_id_for(invoice_id, 1)) == 1
        assert uow.attempt_no(attempt_id_for(invoice_id, 7)) is None and uow.attempt_no(None) is None

    def test_invoice_numbers_follow_each_other_and_are_never_reused(self) -> None:
        numbers: list[str] = []
        for _ in range(3):
            _, _, invoice_id = self.subscribe()
            found = self.started().invoice(invoice_id)
            assert found is not None and found[0].number is not None
            numbers.append(found[0].number)
        assert len(set(numbers)) == 3 and numbers == sorted(numbers)

    def test_a_reported_outcome_settles_an_open_attempt_once_and_an_invoice_succeeds_once(self) -> None:
        sub, cus, invoice_id = self.subscribe()
        first = attempt_id_for(invoice_id, 1)
        uow = self.started()
        assert uow.settle_attempt(first, "declined", "pi_1", "card_declined", False, JAN_16) is True
        assert uow.settle_attempt(first, "declined", "pi_1", "card_declined", False, JAN_16) is False
        # a success reported after a decline (the customer paid on the provider's page) is accepted
        assert uow.settle_attempt(first, "succeeded", "pi_1", None, False, JAN_16) is True

        uow = self.started()
        uow.add_attempt(PaymentAttempt.request(attempt_id=attempt_id_for(invoice_id, 2), invoice_id=invoice_id,
                                               attempt_no=2, subscription_id=sub, customer_id=cus,
                                               amount=Money(945, "USD"), payment_method_id="pm_card_visa",
                                               requested_at=JAN_16))
        uow.commit()
        assert self.started().settle_attempt(attempt_id_for(invoice_id, 2), "succeeded", "pi_2", None, False,
                                             JAN_16) is False

    def test_pending_attempts_lose_their_payment_method_and_are_cancelled_when_given_up(self) -> None:
        sub, _, invoice_id = self.subscribe()
        uow = self.started()
        assert uow.detach_pending_payment_method(sub) == 1
        assert uow.detach_pending_payment_method(sub) == 0
        uow.cancel_pending_attempts(invoice_id, JAN_16)
        assert uow.settle_attempt(attempt_id_for(invoice_id, 1), "declined", None, None, False, JAN_16) is False

    def test_a_savepoint_undoes_immediate_writes_when_its_block_raises(self) -> None:
        sub, _, _ = self.subscribe()
        uow = self.started()
        with pytest.raises(RuntimeError), uow.savepoint():
            assert uow.detach_pending_payment_method(sub) == 1
            raise RuntimeError("refused")
        assert uow.detach_pending_payment_method(sub) == 1

    def test_a_paid_invoice_is_stored_paid_with_its_provider_reference_and_no_longer_open(self) -> None:
        sub, _, invoice_id = self.subscribe()
        self.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice_id, provider_ref="pi_9", amount_minor=945,
                                   currency="USD", paid_at=JAN_16), JAN_16)
        uow = self.started()
        found = uow.invoice(invoice_id)
        assert found is not None
        invoice, row = found
        assert (invoice.status, row.amount_paid_minor, row.provider_ref) == (InvoiceStatus.PAID, 945, "pi_9")
        assert uow.open_invoices_of(sub) == []

    def test_a_command_with_a_stored_outcome_is_answered(self) -> None:
        sub, cus = f"sub_{uuid.uuid4().hex[:12]}", f"cus_{uuid.uuid4().hex[:12]}"
        envelope = self.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD"),
                             JAN_1)
        other = uuid.uuid4()
        assert self.started().answered_commands([envelope.event_id, other]) == {envelope.event_id}

    def test_a_usage_close_bills_each_hour_once_and_a_replayed_close_answers_the_same(self) -> None:
        sub, cus, _ = self.subscribe()
        self.record_usage(sub, cus, 1_000_000, JAN_1 + timedelta(days=3))
        self.record_usage(sub, cus, 500_000, JAN_16)
        self.record_usage(sub, cus, 250_000, JAN_1 - timedelta(days=2))  # an earlier period's, never billed
        uow = self.started(FEB_1)

        first = uow.close_usages([(sub, JAN_1, FEB_1)])[sub]
        replayed = uow.close_usages([(sub, JAN_1, FEB_1)])[sub]
        february = uow.close_usages([(sub, FEB_1, MAR_1)])[sub]

        assert first.period_end == FEB_1
        assert {m: Decimal(q) for m, q in first.totals.items() if q} == {"inference": Decimal(1_500_000)}
        assert [(late.meter_id, Decimal(late.quantity)) for late in first.late] == [("inference", Decimal(250_000))]
        # idempotent per (subscription, period end): a replayed close answers the same
        assert ({m: Decimal(q) for m, q in replayed.totals.items() if q}, len(replayed.late)) == (
            {"inference": Decimal(1_500_000)}, 1)
        # and what a close billed is never billed again
        assert ({m: q for m, q in february.totals.items() if q}, list(february.late)) == ({}, [])

    def test_billed_usage_counts_what_the_closes_billed_of_a_period(self) -> None:
        """The position late units of a tiered price start at (issue 15, item 2)."""
        sub, cus, _ = self.subscribe()
        self.record_usage(sub, cus, 1_000_000, JAN_1 + timedelta(days=3))
        self.record_usage(sub, cus, 500_000, JAN_16)
        uow = self.started(FEB_1)
        assert uow.billed_usage(sub, ["inference", "storage"], JAN_1, FEB_1) == {
            "inference": Decimal(0), "storage": Decimal(0)}
        uow.close_usages([(sub, JAN_1, FEB_1)])
        assert uow.billed_usage(sub, ["inference"], JAN_1, FEB_1) == {"inference": Decimal(1_500_000)}
        self.record_usage(sub, cus, 200_000, JAN_16 + timedelta(days=4))  # late: not billed until a close takes it
        self.record_usage(sub, cus, 300_000, FEB_1 + timedelta(days=2))
        uow = self.started(MAR_1)
        assert uow.billed_usage(sub, ["inference"], JAN_1, FEB_1) == {"inference": Decimal(1_500_000)}
        uow.close_usages([(sub, FEB_1, MAR_1)])
        assert uow.billed_usage(sub, ["inference"], JAN_1, FEB_1) == {"inference": Decimal(1_700_000)}
        assert uow.billed_usage(sub, ["inference"], FEB_1, MAR_1) == {"inference": Decimal(300_000)}

    def test_coupon_attachments_are_counted_per_subscription(self) -> None:
        coupon = f"TEST_{uuid.uuid4().hex[:8]}"
        uow = self.started()
        uow.attach_coupon(coupon, "sub_a", JAN_1)
        uow.attach_coupon(coupon, "sub_a", JAN_1)
        assert uow.coupon_times_redeemed(coupon) == 1
        uow.attach_coupon(coupon, "sub_b", JAN_1)
        assert uow.coupon_times_redeemed(coupon) == 2

    def test_the_customer_balance_moves_once_per_entry_and_never_below_zero(self) -> None:
        cus = f"cus_{uuid.uuid4().hex[:12]}"
        uow = self.started()
        assert uow.lock_customer_balances([(cus, "USD")]) == {(cus, "USD"): 0}

        assert uow.credit_customer_balance(cus, "USD", 1_500, "adjustment", entry_id=f"e1-{cus}",
                                           description="goodwill", at=JAN_1) is True
        # the same entry id again (a replay) writes nothing
        assert uow.credit_customer_balance(cus, "USD", 1_500, "adjustment", entry_id=f"e1-{cus}",
                                           description="goodwill", at=JAN_1) is False
        assert uow.debit_customer_balance(cus, "USD", 400, "invoice_draw", entry_id=f"e2-{cus}",
                                          invoice_id="in_x", description="drawn", at=JAN_16) is True
        with pytest.raises(InsufficientBalanceError):
            uow.debit_customer_balance(cus, "USD", 1_101, "invoice_draw", entry_id=f"e3-{cus}",
                                       description="too much", at=JAN_16)

        assert uow.lock_customer_balances([(cus, "USD"), (cus, "EUR")]) == {(cus, "USD"): 1_100, (cus, "EUR"): 0}

    def test_a_billing_run_of_250_closes_advances_each_numbers_them_in_order_and_draws_a_shared_balance(
            self) -> None:
        # More closes than the adapter's COPY threshold (200): the run's set-based writes, as a billing run does.
        tag = uuid.uuid4().hex[:8]
        subs = [(f"sub_{tag}_{i:03d}", f"cus_{tag}_{i:03d}" if i > 1 else f"cus_{tag}_shared") for i in range(250)]
        creates = [CreateSubscription(subscription_id=s, customer_id=c, plan_id="pro", currency="USD",
                                      payment_method_id="pm_card_visa", tax_rate_bps=500) for s, c in subs]
        BUS.handle(self.new_uow(), [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="test",
                                                  occurred_at=JAN_1), p) for p in creates], JAN_1)
        shared = f"cus_{tag}_shared"
        uow = self.started()
        assert uow.credit_customer_balance(shared, "USD", 1_500, "adjustment", entry_id=f"e-{tag}",
                                           description="goodwill", at=JAN_16) is True
        closes = [ClosePeriod(subscription_id=s, customer_id=c, period_end=FEB_1) for s, c in subs]
        BUS.handle(self.new_uow(), [(new_envelope("period.close", p.model_dump(mode="json"), producer="test",
                                                  occurred_at=FEB_1), p) for p in closes], FEB_1)

        uow = self.started(FEB_1)
        numbers = []
        for sub, _ in subs:
            assert uow.subscription(sub).subscription.current_period == Period(FEB_1, MAR_1)
            found = uow.invoice(invoice_id_for(InvoiceKey(SubscriptionId(sub), InvoiceReason.PERIOD_CLOSE,
                                                          Period(JAN_1, FEB_1))))
            assert found is not None and found[0].number is not None
            numbers.append(int(found[0].number.rsplit("-", 1)[1]))
        # one range for the run, in finalisation (message) order: gapless
        assert numbers == list(range(numbers[0], numbers[0] + 250))
        # the next period's fee 900 + 5 % tax = 945 each; the shared 1,500 pays the first, and 555 of the second
        dues = [uow.invoice(invoice_id_for(InvoiceKey(SubscriptionId(s), InvoiceReason.PERIOD_CLOSE,
                                                      Period(JAN_1, FEB_1))))[0].amount_due.amount_minor  # type: ignore[index]
                for s, _ in subs[:3]]
        assert dues == [0, 390, 945]
        assert uow.lock_customer_balances([(shared, "USD")]) == {(shared, "USD"): 0}
