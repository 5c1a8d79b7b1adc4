"""All tables, registered on one MetaData (the Alembic baseline creates them)."""

from . import alerts, billing, catalog, contract_pricing, core, dunning, edge, quota, usage, webhooks  # noqa: F401  (registers the tables)
from .base import metadata

__all__ = ["metadata"]
