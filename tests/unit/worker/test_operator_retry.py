"""An operator's payment retry (`payment.retry` with reason `manual`, no attempt number) beside dunning's
scheduled retries, on the worker's handler with the fake unit of work: the worker numbers the attempts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.contracts.messages import MarkInvoiceUncollectible, PaymentSucceeded, RetryPayment
from shared.domain.ids import attempt_id_for
from tests.unit.worker.test_handlers import JAN_1, Worker, failed, first_invoice

DAY = timedelta(days=1)


@pytest.fixture
def worker() -> Worker:
    return Worker()


def manual(sub: str, invoice_id: str, **extra: str) -> RetryPayment:
    return RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice_id, reason="manual",
                        **extra)


def test_an_operator_retry_then_dunnings_retry_with_the_same_number_are_both_attempts(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)  # attempt 1 declined: dunning will retry with attempt 2

    by_operator = worker.send(manual(sub, invoice.id), JAN_1 + DAY)
    worker.send(failed(sub, invoice, attempt_no=2), JAN_1 + DAY)
    # dunning decided its retry before it heard of the operator's: it asks for number 2 too
    by_dunning = worker.send(RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id,
                                          attempt_no=2), JAN_1 + 3 * DAY)

    assert worker.result(by_operator)["attempt_no"] == 2
    assert (worker.result(by_dunning)["attempt_no"], worker.result(by_dunning)["requested_attempt_no"]) == (3, 2)
    assert [(a["attempt_no"], a["reason"], a["status"]) for a in worker.attempts(invoice.id)] == [
        (1, "initial", "declined"), (2, "manual", "declined"), (3, "scheduled", "pending")]
    assert worker.attempts(invoice.id)[2]["attempt_id"] == attempt_id_for(invoice.id, 3)


def test_dunnings_retry_with_a_free_number_keeps_it(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)

    retry = worker.send(RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id,
                                     attempt_no=5), JAN_1 + DAY)

    assert worker.result(retry)["attempt_no"] == 5


def test_an_operator_retry_while_an_attempt_is_unsettled_is_refused(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)  # its first attempt is pending (not sent yet)

    refused = worker.send(manual(sub, invoice.id), JAN_1)

    assert worker.outcome(refused) == ("rejected", "payment_in_flight")
    assert len(worker.attempts(invoice.id)) == 1


def test_two_operator_retries_in_one_batch_charge_once(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)

    first, second = worker.send_batch([manual(sub, invoice.id), manual(sub, invoice.id)], JAN_1 + DAY)

    assert worker.outcome(first) == ("applied", None)
    assert worker.outcome(second) == ("rejected", "payment_in_flight")
    assert [a["attempt_no"] for a in worker.attempts(invoice.id)] == [1, 2]


def test_an_operator_retry_of_a_paid_invoice_is_refused_as_not_collectible(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id, attempt_id=attempt_id_for(invoice.id, 1),
                                 provider_ref="pi_1", amount_minor=900, currency="USD", paid_at=JAN_1), JAN_1)

    refused = worker.send(manual(sub, invoice.id), JAN_1 + DAY)

    assert worker.outcome(refused) == ("rejected", "invoice_not_collectible")


def test_an_operator_retry_with_a_new_card_saves_it_and_charges_the_uncollectible_invoice_with_it(
        worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)
    worker.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id),
                JAN_1 + DAY)

    retry = worker.send(manual(sub, invoice.id, payment_method_id="pm_card_mastercard"), JAN_1 + 2 * DAY)

    assert worker.outcome(retry) == ("applied", None)
    assert worker.store.subscriptions[sub].subscription.payment_method_id == "pm_card_mastercard"
    [_, again] = worker.attempts(invoice.id)
    assert (again["attempt_no"], again["payment_method_id"], again["amount_minor"], again["status"]) == (
        2, "pm_card_mastercard", 900, "pending")
    assert [e.payload["payment_method_id"] for e in worker.store.events("payment_method.updated")] == [
        "pm_card_mastercard"]


def test_an_operator_retry_after_a_successful_charge_not_yet_reported_is_refused(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.store.attempts[attempt_id_for(invoice.id, 1)]["status"] = "succeeded"  # the executor's own record

    refused = worker.send(manual(sub, invoice.id), JAN_1)

    assert worker.outcome(refused) == ("rejected", "invoice_not_collectible")
    assert len(worker.attempts(invoice.id)) == 1


def test_an_operator_retry_is_numbered_apart_from_a_credit_notes_reduction_attempt(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)
    reduction = dict(worker.store.attempts[attempt_id_for(invoice.id, 1)], attempt_no=1000, status="declined",
                     attempt_id=attempt_id_for(invoice.id, 1000), reason="credit_note")
    worker.store.attempts[reduction["attempt_id"]] = reduction  # the first note's reduction attempt, declined

    retry = worker.send(manual(sub, invoice.id), JAN_1 + DAY)

    # 2, not 1001: the invoice's second credit note will ask for 1001
    assert worker.result(retry)["attempt_no"] == 2


def test_dunnings_retry_numbered_after_a_failed_reduction_attempt_takes_a_retry_number(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(failed(sub, invoice), JAN_1)
    reduction = dict(worker.store.attempts[attempt_id_for(invoice.id, 1)], attempt_no=1000, status="declined",
                     attempt_id=attempt_id_for(invoice.id, 1000), reason="credit_note")
    worker.store.attempts[reduction["attempt_id"]] = reduction

    # dunning saw attempt 1000 fail and asks for 1001, the number the invoice's second credit note will take
    retry = worker.send(RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id,
                                     attempt_no=1001), JAN_1 + DAY)

    assert worker.result(retry)["attempt_no"] == 2
