"""The edge's outbox relay: publishes the outbox rows the edge's transactions wrote (lifecycle commands,
webhook translations, parked usage) without waiting for a billing worker's relay to do it.

# NOTE: the edge answers a command after the worker applied it, so the command must reach Kafka at once
# whether or not a worker's relay runs on this schema. Relays take an advisory lock per round, so the
# edge's and the worker's (and several edge processes') never publish the same rows concurrently.
"""

from __future__ import annotations

from services.ingest.container import Container
from shared.adapters.kafka.outbox_relay import OutboxRelay
from shared.adapters.kafka.producer import KafkaProducer

RELAY_CLIENT_ID = "ingest-relay"


def build_relay(container: Container) -> OutboxRelay:
    """A relay with a producer of its own (the relay waits on its producer's flush, which must not wait for
    the request path's messages too); `start()` it, and `stop()` it to flush and close."""
    return OutboxRelay(container.engine, KafkaProducer(container.settings, client_id=RELAY_CLIENT_ID))
