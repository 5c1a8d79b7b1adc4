"""The fault suite (issue 12): `make chaos` runs `python -m chaos`.

On a PRIVATE stack (its own folder under var/chaos and its own ports, never the shared development stack)
it starts the three services as processes, drives load over HTTP and straight to Kafka, and injects each
fault in turn: kill -9 of the worker during a billing run, Kafka stopped under ingest load, PostgreSQL
stopped under mixed load, a poison-message corpus on every consumed topic (last, so that a message that
crash-loops the worker cannot stall the other scenarios), then the OpenAPI fuzz (chaos/openapi_fuzz.py).
After each fault it waits for
the pipeline to go quiet, audits PostgreSQL and prints one table row; the table is also written to
var/chaos/results.json and the exit status is non-zero when an invariant fails.

`tests/integration/chaos/` runs the short version (the corpus and one kill -9) inside `make test`.
"""
