"""Tables of the billing area (owned by that area; registered on the shared metadata)."""

from .base import metadata  # noqa: F401
