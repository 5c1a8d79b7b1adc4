"""Outgoing webhooks: fan billing events out to registered endpoints and deliver them, signed, with retries.

  entrypoints/   the Kafka fan-out consumer of billing-events.v1 and the dispatcher loop
  service_layer/ use cases (fan_out, dispatch) over ports; the retry schedule and the ordering rule
  adapters/      the PostgreSQL store of deliveries
  bootstrap.py   composition root
"""
