"""Does the Kafka cluster answer? A metadata request through a long-lived admin client, for readiness."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from shared.config import Settings


class KafkaProbe:
    def __init__(self, settings: Settings, *, timeout_s: float = 3.0) -> None:
        # Slower reconnects than librdkafka's 100 ms: a probe need not hammer (and log) a broker that is down.
        self._admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap,
                                   "client.id": "billing-health-probe",
                                   "reconnect.backoff.ms": 500, "reconnect.backoff.max.ms": 2000})
        self._timeout = timeout_s

    def answers(self) -> bool:
        """True when a broker returned cluster metadata within the timeout."""
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException:
            return False
        return bool(metadata.brokers)
