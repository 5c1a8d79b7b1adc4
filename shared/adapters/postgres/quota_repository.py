"""Moved (issue 13): the report-credit store is ``shared.adapters.postgres.quota_store``, the usage-tier
spend store ``shared.adapters.postgres.spend_store`` and the async pool ``shared.adapters.postgres.pool``.

Kept only for the two importers outside the quota area (``tests/unit/test_settings.py`` and
``bench/bench_quota.py``, which import the pool helpers); delete once they import ``pool``.
"""

from shared.adapters.postgres.pool import make_pool, psycopg_conninfo

__all__ = ["make_pool", "psycopg_conninfo"]
