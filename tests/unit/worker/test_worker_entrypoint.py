"""The worker's entrypoint tunes the cyclic collector for batches (issue 17): a billing run's batch keeps its
ledgers, invoices and events alive until commit, and the default thresholds walked them over and over (a sixth
to a third of a close's CPU)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from shared import runtime
from shared.runtime import BATCH_COLLECTOR_THRESHOLDS

pytestmark = pytest.mark.unit


def test_the_worker_runs_with_the_batch_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.billing_worker import __main__ as entrypoint
    from services.billing_worker import bootstrap

    seen: dict[str, Any] = {}

    class _Worker:
        def run(self, stop: Any) -> None:
            seen["thresholds"] = gc.get_threshold()

    monkeypatch.setattr(bootstrap, "build_worker_when_reachable", lambda *a, **k: _Worker())
    monkeypatch.setattr(runtime, "freeze_startup_heap", lambda: 0)  # never freeze the test process's heap
    monkeypatch.setattr(entrypoint.signal, "signal", lambda *a: None)  # keep pytest's own handlers
    before = gc.get_threshold()
    try:
        entrypoint.main([])
    finally:
        gc.set_threshold(*before)
    assert seen["thresholds"] == BATCH_COLLECTOR_THRESHOLDS
