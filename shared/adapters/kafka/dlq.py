"""Dead-letter queue: a message that cannot be decoded or applied goes to `<topic>.dlq`, never dropped.

The DLQ copy keeps the original key and bytes and says why in its headers (`reason`, a machine-readable code
such as `invalid_envelope`, `program_limit_exceeded` or `retries_exhausted`; `error`, the human-readable
message; `error_class`; the original topic/partition/offset and `original_value_bytes`), so an operator can
inspect it and replay it after a fix. Publishing is
synchronous: the consumer moves its offset past a poison message only after the DLQ acknowledged it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.contracts.envelope import EnvelopeError
from shared.contracts.topics import dlq

_MAX_ERROR_BYTES = 4000
# NOTE: librdkafka refuses to produce a message over 1,000,000 bytes (message.max.bytes) while the broker takes
# up to 1 MiB, so a message near the limit consumed from another producer would not fit back with its headers:
# the produce call raised and the worker stopped on it, again after every restart. Such a copy keeps the first
# 900,000 bytes; the header original_value_bytes says it was cut, and the original stays at its offset.
MAX_VALUE_BYTES = 900_000


@dataclass(frozen=True)
class DeadLetter:
    topic: str  # logical name of the topic the message came from
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str
    error_class: str
    reason: str = "unprocessable"

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
           error: BaseException) -> DeadLetter:
        """The error's `code` attribute is the reason when it has one (``MessageRejected``,
        ``DataRejectedError``); an undecodable envelope is ``invalid_envelope``."""
        code = getattr(error, "code", None)
        if not isinstance(code, str) or not code:
            code = "invalid_envelope" if isinstance(error, EnvelopeError) else "unprocessable"
        return cls(topic, partition, offset, key, value, str(error) or repr(error), type(error).__name__, code)

    def to_outgoing(self) -> OutgoingMessage:
        headers = (
            ("reason", self.reason.encode()),
            ("error", self.error.encode()[:_MAX_ERROR_BYTES]),
            ("error_class", self.error_class.encode()),
            ("original_topic", self.topic.encode()),
            ("original_partition", str(self.partition).encode()),
            ("original_offset", str(self.offset).encode()),
            ("original_value_null", b"true" if self.value is None else b"false"),
            ("original_value_bytes", str(len(self.value or b"")).encode()),
        )
        key = self.key.decode("utf-8", errors="replace")[:10_000] if self.key is not None else ""
        return OutgoingMessage(dlq(self.topic), key, (self.value or b"")[:MAX_VALUE_BYTES], headers)


class DeadLetterPublisher:
    """Sends dead letters and waits for Kafka's acknowledgement (raises DeliveryError otherwise)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer

    def publish(self, letters: Sequence[DeadLetter], timeout: float = 30.0) -> None:
        if letters:
            self._producer.send_and_wait([letter.to_outgoing() for letter in letters], timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._producer.close(timeout)
