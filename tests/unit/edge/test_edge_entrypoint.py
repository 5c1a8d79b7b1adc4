"""`python -m services.ingest`'s wrapping of the served app: the heap is frozen again once the lifespan has
built what it builds (pools, producers, catalogs), and HTTP goes through untouched."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest import __main__ as entrypoint

pytestmark = pytest.mark.unit


async def test_the_heap_is_frozen_once_the_lifespan_has_started_and_http_passes_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    def freeze() -> int:
        events.append("frozen")
        return 0

    monkeypatch.setattr(entrypoint, "freeze_startup_heap", freeze)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            events.append("lifespan built its objects")
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    served = entrypoint.frozen_after_startup(app)
    await served({"type": "lifespan"}, receive, send)
    await served({"type": "http"}, receive, send)

    assert events == ["lifespan built its objects", "frozen"]
    assert [message["type"] for message in sent] == ["lifespan.startup.complete", "http.response.start"]
