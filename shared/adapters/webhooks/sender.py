"""The HTTP sender of outgoing webhooks: one signed POST with a bounded timeout, its outcome as data.

No exception leaves `send`: a refused connection, a timeout or a 5xx is a failed `SendResult` the
dispatcher schedules again; only a 2xx is delivered. Redirects are not followed (a receiver answers at the
URL it registered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from shared.adapters.webhooks.signing import HEADER, sign

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class SendResult:
    succeeded: bool
    status_code: int | None
    error: str | None
    duration_ms: int


class HttpSender:
    """POSTs signed JSON bodies; thread-safe (one pooled httpx client), so a dispatcher's threads share it."""

    def __init__(self, timeout_seconds: float = 10.0, *, wall_clock: Callable[[], float] = time.time,
                 user_agent: str = "OpenLedger-Webhooks/1") -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_seconds), follow_redirects=False,
                                    headers={"User-Agent": user_agent})
        self._wall_clock = wall_clock

    def send(self, url: str, body: bytes, secrets: Sequence[str]) -> SendResult:
        # NOTE: signed with the wall clock, not the billing clock: receivers check the age against theirs.
        started = time.monotonic()
        headers = {"Content-Type": "application/json", HEADER: sign(body, secrets, int(self._wall_clock()))}
        try:
            response = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return SendResult(False, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH], _ms(started))
        ok = 200 <= response.status_code < 300
        error = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
        return SendResult(ok, response.status_code, error, _ms(started))

    def close(self) -> None:
        self._client.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
