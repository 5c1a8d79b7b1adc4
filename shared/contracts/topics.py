"""Logical topic names (physical name = settings.topic_prefix + name). deploy/topics.yaml declares them."""

from typing import Final

USAGE: Final = "usage.v1"
COMMANDS: Final = "commands.v1"
PAYMENTS: Final = "payments.v1"
BILLING_EVENTS: Final = "billing-events.v1"
USAGE_UNMATCHED: Final = "usage.unmatched.v1"
DLQ_SUFFIX: Final = ".dlq"

ALL: Final = (USAGE, COMMANDS, PAYMENTS, BILLING_EVENTS, USAGE_UNMATCHED)
WITH_DLQ: Final = (USAGE, COMMANDS, PAYMENTS, BILLING_EVENTS)


def dlq(topic: str) -> str:
    return topic + DLQ_SUFFIX
