"""The dispatcher loop: a round of `dispatch_due` every `interval` seconds (at once again after a full one).

Sending runs on a thread pool (`concurrency` per dispatcher); each HTTP call is bounded by the sender's
timeout and a round takes at most `per_endpoint` deliveries of one endpoint, so a slow or failing endpoint
costs a bounded share of a round and never holds a database transaction. The lease outlasts a whole round
(`lease_for`), so no other dispatcher takes a delivery that is still being sent.
Several dispatchers may run: the claim's SKIP LOCKED and leases keep each delivery to one of them.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.webhooks.service_layer.dispatch import dispatch_due
from services.webhooks.service_layer.model import ClaimedDelivery
from services.webhooks.service_layer.ports import DeliveryStoreFactory, Sender
from shared.domain.clock import Clock

_log = logging.getLogger("services.webhooks.dispatcher")
T = TypeVar("T")


class ThreadPool:
    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook-send")

    def map(self, fn: Callable[[ClaimedDelivery], T], items: Sequence[ClaimedDelivery]) -> list[T]:
        return list(self._executor.map(fn, items))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def lease_for(http_timeout: float, batch_size: int, concurrency: int) -> float:
    """Seconds a round may take at worst (every call timing out), with a margin."""
    return 2 * http_timeout * math.ceil(batch_size / concurrency) + 30


class Dispatcher:
    def __init__(self, stores: DeliveryStoreFactory, sender: Sender, clock: Clock, *, concurrency: int = 8,
                 batch_size: int = 100, per_endpoint: int = 25, lease_seconds: float = 60.0,
                 interval: float = 1.0, jitter: Callable[[], float] = random.random) -> None:
        self._stores = stores
        self._sender = sender
        self._clock = clock
        self._pool = ThreadPool(concurrency)
        self._batch_size = batch_size
        self._per_endpoint = per_endpoint
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._jitter = jitter

    def run_once(self) -> list[tuple[ClaimedDelivery, str]]:
        return dispatch_due(self._stores, self._sender, self._pool, self._clock.now(), limit=self._batch_size,
                            per_endpoint=self._per_endpoint, lease_seconds=self._lease_seconds, jitter=self._jitter)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    done = self.run_once()
                except Exception:
                    _log.warning("dispatch round failed; tried again", exc_info=True)
                    done = []
                if not done:  # more may be due at once (a capped endpoint, a backlog): only idle rounds wait
                    stop.wait(self._interval)
        finally:
            self._pool.close()
