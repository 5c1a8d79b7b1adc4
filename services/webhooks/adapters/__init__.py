"""PostgreSQL adapter of the webhook ports."""
