"""Kept for callers not yet moved: the one notifier factory is `shared.bootstrap.build_notifier`."""

from __future__ import annotations

from shared.bootstrap import build_notifier

__all__ = ["build_notifier"]
