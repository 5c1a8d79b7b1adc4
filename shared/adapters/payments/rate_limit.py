"""Calling the payment provider at its rate limit, never above it, and never mistaking a 429 for a decline.

A provider limits operations per second per account (Stripe: 100/s in live mode, 25/s in test mode; every API
request is one operation, so a charge that creates and confirms a PaymentIntent is two). `RateLimitedGateway`
wraps any `PaymentGateway` and takes, before each call, as many tokens as the call makes requests
(`calls_for_charge`, 1 for a lookup or a refund) from one `TokenBucket` that every thread of the process
shares (the payment executor's pool and the refund executor). The bucket's burst is a tenth of a second of
budget, so the provider's own per-second window is not exceeded by a burst after an idle spell.

A rate-limited answer (`ProviderRateLimited`: HTTP 429, nothing was done) is retried after the provider's
`Retry-After` when it gave one, else after an exponential back-off with jitter, the same request with the same
idempotency key, up to `max_rate_limited_retries` times; after that the `ProviderRateLimited` error reaches the
caller, which releases the payment attempt for a later round: a rate limit is never recorded as a decline.

# NOTE: the bucket is per process. With several worker processes charging one provider account, each one
# gets `rate_limit_per_s / processes` (BILLING_PAYMENT_EXECUTOR_PROCESSES); a process that still exceeds the
# account's limit (a process count set too low) is answered 429s, which this wrapper absorbs with back-off.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from shared.adapters.payments.port import (
    ChargeOutcome,
    ChargeRequest,
    PaymentGateway,
    ProviderRateLimited,
    RefundOutcome,
    RefundRequest,
)

T = TypeVar("T")


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved; thread-safe.

    `take(n)` waits (with the injected `sleep`) until `n` tokens are there and takes them; waiters are served
    in the order they asked, so no thread starves. `try_take(n)` never waits (a provider's own limiter).
    The clock is injected (`monotonic`, `sleep`) so the arithmetic is tested without real time passing.
    """

    def __init__(self, rate_per_s: float, burst: float | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"a token bucket needs a positive rate, got {rate_per_s}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst) if burst is not None else self.rate_per_s
        if self.burst <= 0:
            raise ValueError(f"a token bucket needs a positive burst, got {burst}")
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._at = monotonic()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens, waiting as long as needed; returns the seconds waited.

        The tokens are reserved at once (the bucket may go into debt) and the taker sleeps until they are
        earned, so takers are served in the order they asked."""
        with self._lock:
            self._refill(self._monotonic())
            self._tokens -= n
            wait = max(0.0, -self._tokens / self.rate_per_s)
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_take(self, n: float = 1.0) -> bool:
        """Take `n` tokens if they are there now; False (nothing taken) otherwise."""
        with self._lock:
            self._refill(self._monotonic())
            if self._tokens + 1e-9 < n:
                return False
            self._tokens -= n
            return True

    def retry_after(self, n: float = 1.0) -> float:
        """Seconds until `n` tokens will be there (what a provider puts in Retry-After)."""
        with self._lock:
            self._refill(self._monotonic())
            return max(0.0, (n - self._tokens) / self.rate_per_s)

    def pause(self, seconds: float) -> None:
        """Spend the next `seconds` of budget: after a 429 every thread of the process holds back, not only
        the one that was refused."""
        with self._lock:
            self._refill(self._monotonic())
            self._tokens = min(self._tokens, 0.0) - seconds * self.rate_per_s


class RateLimitedGateway:
    """A `PaymentGateway` paced by a shared `TokenBucket`, retrying rate-limited requests with back-off."""

    def __init__(self, gateway: PaymentGateway, bucket: TokenBucket, *,
                 calls_for_charge: Callable[[ChargeRequest], int],
                 max_rate_limited_retries: int = 6, base_backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random) -> None:
        self.name = gateway.name
        self.inner = gateway
        self.bucket = bucket
        self._calls_for_charge = calls_for_charge
        self._max_retries = max_rate_limited_retries
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._jitter = jitter
        self._lock = threading.Lock()
        self.rate_limited_answers = 0
        """How many 429s the provider answered this process (a figure for benchmarks and logs)."""

    def _paced(self, calls: int, call: Callable[[], T]) -> T:
        retries = 0
        while True:
            self.bucket.take(calls)
            try:
                return call()
            except ProviderRateLimited as limited:
                with self._lock:
                    self.rate_limited_answers += 1
                if retries >= self._max_retries or not limited.should_retry:
                    raise
                retries += 1
                backoff = min(self._max_backoff_s, self._base_backoff_s * 2 ** (retries - 1))
                wait = limited.retry_after_s if limited.retry_after_s is not None else \
                    backoff * (0.5 + self._jitter() / 2)
                self.bucket.pause(min(wait, self._max_backoff_s) / 2)
                self._sleep(wait)

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return self._paced(self._calls_for_charge(request), lambda: self.inner.charge(request))

    def lookup(self, *, idempotency_key: str | None = None, invoice_id: str,
               provider_ref: str | None = None) -> ChargeOutcome | None:
        return self._paced(1, lambda: self.inner.lookup(idempotency_key=idempotency_key, invoice_id=invoice_id,
                                                        provider_ref=provider_ref))

    def refund(self, request: RefundRequest) -> RefundOutcome:
        return self._paced(1, lambda: self.inner.refund(request))


def client_bucket(rate_per_s: float, *, monotonic: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> TokenBucket:
    """The caller's bucket for an account limit: a tenth of a second of burst (at least one charge of two
    calls), so the provider's one-second window never sees more than the limit."""
    return TokenBucket(rate_per_s, max(2.0, rate_per_s / 10), monotonic=monotonic, sleep=sleep)
