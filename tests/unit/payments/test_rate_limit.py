"""Pacing provider calls at the rate limit (issue 17): the token bucket on an injected clock, the paced
gateway's handling of 429s (sent again, never a decline), the simulated provider's own limit, and how the
Stripe adapter reads Stripe's 429 (Retry-After, Stripe-Should-Retry)."""

from __future__ import annotations

import json

import pytest
import stripe

from shared.adapters.payments.port import ChargeStatus, ProviderRateLimited
from shared.adapters.payments.rate_limit import RateLimitedGateway, TokenBucket, client_bucket
from shared.adapters.payments.simulated import InMemoryProviderRecord, SimulatedGateway
from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client
from tests.unit.payments.gateway_contract import request_for

pytestmark = pytest.mark.unit


class FakeTime:
    """A monotonic clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_bucket_gives_its_burst_at_once_then_paces_takers_at_the_rate_in_the_order_they_asked() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=10, monotonic=t.monotonic, sleep=lambda s: None)
    assert [bucket.take(2) for _ in range(5)] == [0.0] * 5  # 10 tokens of burst
    # without time passing, each taker reserves behind the previous one: 2 tokens = 20 ms each
    assert [round(bucket.take(2), 6) for _ in range(3)] == [0.02, 0.04, 0.06]


def test_a_bucket_refills_at_its_rate_and_never_above_its_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=10, monotonic=t.monotonic, sleep=t.sleep)
    bucket.take(10)
    t.now += 0.05  # 5 tokens back
    assert bucket.try_take(5) and not bucket.try_take(1)
    t.now += 60.0  # an idle minute saves only the burst
    assert bucket.try_take(10) and not bucket.try_take(1)
    assert round(bucket.retry_after(3), 6) == 0.03


def test_a_bucket_that_waits_sleeps_until_its_tokens_are_earned() -> None:
    t = FakeTime()
    bucket = TokenBucket(50, burst=2, monotonic=t.monotonic, sleep=t.sleep)
    for _ in range(6):
        bucket.take(2)
    assert t.slept == [0.04, 0.04, 0.04, 0.04, 0.04]  # 2 calls at 50/s: one charge every 40 ms
    assert round(t.now - 100.0, 6) == 0.2


def test_a_pause_holds_every_taker_back() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=10, monotonic=t.monotonic, sleep=t.sleep)
    bucket.pause(0.5)
    assert round(bucket.take(1), 6) == 0.51


def test_the_client_bucket_bursts_a_tenth_of_a_second_and_at_least_one_charge() -> None:
    assert client_bucket(1000).burst == 100
    assert client_bucket(5).burst == 2


def paced(gateway: SimulatedGateway, t: FakeTime, **options: int) -> RateLimitedGateway:
    return RateLimitedGateway(gateway, TokenBucket(1000, monotonic=t.monotonic, sleep=t.sleep),
                              calls_for_charge=gateway.calls_for_charge, sleep=t.sleep, jitter=lambda: 1.0,
                              **options)


def test_a_429_then_success_is_one_charge_sent_twice_with_the_same_key_and_never_a_decline() -> None:
    t = FakeTime()
    simulated = SimulatedGateway(InMemoryProviderRecord())
    gateway = paced(simulated, t)
    request = request_for("pm_sim_rate_limited_once")
    outcome = gateway.charge(request)
    assert outcome.status is ChargeStatus.SUCCEEDED
    assert (simulated.rate_limited_answers, gateway.rate_limited_answers) == (1, 1)
    assert 0.05 in t.slept  # the provider's Retry-After was honoured
    record = simulated.record
    assert isinstance(record, InMemoryProviderRecord)
    assert [(c.idempotency_key, c.succeeded) for c in record.charges()] == [(request.idempotency_key, True)]


def test_a_provider_that_keeps_answering_429_makes_the_call_fail_as_retryable_with_nothing_charged() -> None:
    t = FakeTime()
    simulated = SimulatedGateway(InMemoryProviderRecord(), rate_limit_per_s=2)  # one charge, then refusals
    simulated.charge(request_for())
    gateway = paced(simulated, t, max_rate_limited_retries=3)
    with pytest.raises(ProviderRateLimited) as refused:
        gateway.charge(request_for())
    assert refused.value.retryable
    assert gateway.rate_limited_answers == 4  # the first answer and three retries
    record = simulated.record
    assert isinstance(record, InMemoryProviderRecord)
    assert len(record.charges()) == 1


def test_the_simulated_provider_counts_a_charge_as_create_plus_confirm_against_its_limit() -> None:
    simulated = SimulatedGateway(InMemoryProviderRecord(), rate_limit_per_s=5)  # 5 calls of burst
    assert simulated.charge(request_for()).status is ChargeStatus.SUCCEEDED  # 2
    assert simulated.charge(request_for()).status is ChargeStatus.SUCCEEDED  # 4
    with pytest.raises(ProviderRateLimited) as refused:
        simulated.charge(request_for())  # needs 2, 1 left
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    assert simulated.lookup(invoice_id="in_none") is None  # 1 call: the last token
    assert SimulatedGateway.calls_for_charge(request_for(provider_ref="pi_x")) == 1


class Stripe429(stripe.HTTPClient):
    """Answers every request with Stripe's 429 body and the given headers."""

    name = "stripe429"

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self._headers = headers
        self.requests = 0

    def request(self, method, url, headers, post_data=None):  # type: ignore[no-untyped-def]
        self.requests += 1
        body = {"error": {"type": "invalid_request_error", "code": "rate_limit",
                          "message": "Too many requests hit the API too quickly."}}
        return json.dumps(body), 429, {"Request-Id": "req_429", **self._headers}

    def close(self) -> None:
        pass


def test_stripe_429_is_rate_limited_with_its_retry_after_not_an_unknown_outcome_or_a_decline() -> None:
    transport = Stripe429({"Retry-After": "2"})
    gateway = StripeGateway(make_stripe_client("sk_test_x", "http://stripe.invalid", http_client=transport))
    with pytest.raises(ProviderRateLimited) as refused:
        gateway.charge(request_for())
    assert (refused.value.retry_after_s, refused.value.should_retry) == (2.0, True)
    assert transport.requests == 1  # the create was refused: no confirm was sent
    with pytest.raises(ProviderRateLimited):
        gateway.lookup(invoice_id="in_1", provider_ref="pi_1")


def test_stripe_should_retry_false_on_a_429_is_not_retried_in_place() -> None:
    transport = Stripe429({"Stripe-Should-Retry": "false"})
    stripe_gateway = StripeGateway(make_stripe_client("sk_test_x", "http://stripe.invalid", http_client=transport))
    t = FakeTime()
    gateway = RateLimitedGateway(stripe_gateway, TokenBucket(100, monotonic=t.monotonic, sleep=t.sleep),
                                 calls_for_charge=StripeGateway.calls_for_charge, sleep=t.sleep)
    with pytest.raises(ProviderRateLimited) as refused:
        gateway.charge(request_for())
    assert refused.value.should_retry is False
    assert transport.requests == 1 and t.slept == []
    assert StripeGateway.calls_for_charge(request_for()) == 2


def test_a_charging_process_paces_its_share_of_the_account_limit_and_zero_means_unpaced() -> None:
    from shared.bootstrap import build_paced_gateway
    from shared.config import Settings

    shared_by_two = build_paced_gateway(Settings(payment_rate_limit_per_s=100, payment_executor_processes=2,
                                                 simulated_gateway_rate_limit_per_s=100))
    assert isinstance(shared_by_two, RateLimitedGateway) and isinstance(shared_by_two.inner, SimulatedGateway)
    assert (shared_by_two.bucket.rate_per_s, shared_by_two.bucket.burst) == (50, 5)
    assert shared_by_two._calls_for_charge(request_for()) == 2
    assert isinstance(build_paced_gateway(Settings(payment_rate_limit_per_s=0)), SimulatedGateway)
