"""All tables, registered on one MetaData (the Alembic baseline creates them)."""

from . import alerts, billing, core, dunning, edge, quota, usage  # noqa: F401  (registers the tables)
from . import webhooks  # noqa: F401  (outgoing webhooks' tables)
from . import catalog  # noqa: F401  (the catalog managed through the API)
from .base import metadata

__all__ = ["metadata"]
