"""The service layer's `Sender` port over the shared HTTP sender."""

from __future__ import annotations

from collections.abc import Sequence

from services.webhooks.service_layer.model import AttemptResult
from shared.adapters.webhooks.sender import HttpSender


class SignedHttpSender:
    def __init__(self, http: HttpSender) -> None:
        self._http = http

    def send(self, url: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        r = self._http.send(url, body, secrets)
        return AttemptResult(r.succeeded, r.status_code, r.error, r.duration_ms)

    def close(self) -> None:
        self._http.close()
