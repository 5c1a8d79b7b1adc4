"""One error root: every error we raise on purpose is a BillingError, retryable or terminal, and a refusal
has a machine-readable code (what dead letters, command outcomes and problem documents carry)."""

from __future__ import annotations

import pytest

from shared.adapters.notify.port import NotificationDeliveryError
from shared.adapters.payments.port import PaymentGatewayError
from shared.adapters.retry_policy import is_retryable
from shared.domain.errors import CurrencyMismatchError, DomainError, InvalidTransitionError, UnknownPlanError
from shared.errors import (
    BillingError,
    DatabaseUnavailableError,
    DataRejectedError,
    DeliveryError,
    FencedError,
    InfrastructureError,
    RefusedError,
    RetryableError,
    TerminalError,
    refusal_code,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("family", [InfrastructureError, DeliveryError, DatabaseUnavailableError,
                                    PaymentGatewayError, NotificationDeliveryError])
def test_infrastructure_failures_are_the_retryable_family(family):
    assert issubclass(family, RetryableError) and issubclass(family, BillingError)
    assert family.retryable is True
    assert is_retryable(family("down"))


@pytest.mark.parametrize("error", [CurrencyMismatchError("EUR", "USD"), InvalidTransitionError("s", "a", "b"),
                                   UnknownPlanError("nope"),
                                   DataRejectedError("too long", code="string_data_right_truncation")])
def test_refusals_are_the_terminal_family(error):
    assert isinstance(error, TerminalError) and isinstance(error, BillingError)
    assert error.retryable is False
    assert not is_retryable(error)


def test_the_domain_root_is_under_the_project_root_and_keeps_its_python_families():
    assert issubclass(DomainError, TerminalError)
    assert issubclass(UnknownPlanError, KeyError)  # callers catching KeyError still do


def test_a_fenced_instance_is_neither_retried_nor_a_refusal():
    assert issubclass(FencedError, BillingError)
    assert not issubclass(FencedError, RetryableError | TerminalError)
    assert not is_retryable(FencedError("partition taken over"))


def test_a_refusal_carries_its_code_and_other_errors_have_none():
    refused = DataRejectedError("index row too large", code="program_limit_exceeded", sqlstate="54000")
    assert (refused.code, refused.sqlstate) == ("program_limit_exceeded", "54000")
    assert isinstance(RefusedError("no", code="not_due"), TerminalError)
    # no code of its own: a dead letter of it keeps the reason "unprocessable" it had before the root
    assert InvalidTransitionError("subscription", "cancelled", "active").code is None


def test_the_code_of_a_refusal_is_its_own_else_its_class_name():
    assert refusal_code(RefusedError("no", code="not_due")) == "not_due"
    assert refusal_code(InvalidTransitionError("subscription", "cancelled", "active")) == "invalid_transition"
    assert refusal_code(CurrencyMismatchError("EUR", "USD")) == "currency_mismatch"


def test_the_refusals_of_adapters_and_contracts_are_terminal_and_keep_their_python_families():
    from shared.adapters.clock import ClockRefusedError
    from shared.adapters.kafka.dlq import DeadLetter
    from shared.adapters.notify.port import NotificationRejectedError
    from shared.contracts.envelope import EnvelopeError

    for family in (ClockRefusedError, NotificationRejectedError, EnvelopeError):
        assert issubclass(family, TerminalError)
        assert not is_retryable(family("refused"))
    assert issubclass(EnvelopeError, ValueError)
    # no code of its own: its dead letter's reason is still the one the DLQ gives an undecodable envelope
    assert DeadLetter.of("usage.v1", 0, 1, None, b"{", EnvelopeError("not json")).reason == "invalid_envelope"
