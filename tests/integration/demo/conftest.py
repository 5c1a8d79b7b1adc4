"""The demo's tests need only a migrated schema (no topics, no stack services): an engine bound to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.engine import make_engine
from shared.config import Settings


@pytest.fixture(scope="module")
def demo_engine(database_url: str, db_schema: str) -> Iterator[sa.Engine]:
    engine = make_engine(Settings(database_url=database_url, database_schema=db_schema), pool_size=2)
    yield engine
    engine.dispose()
