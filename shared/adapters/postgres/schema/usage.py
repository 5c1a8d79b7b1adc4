"""Tables of the usage area (owned by that area; registered on the shared metadata)."""

from .base import metadata  # noqa: F401
