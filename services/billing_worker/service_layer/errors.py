"""How a use case says no: refused for good (`Refused`, any `DomainError`), no longer applies (`Ignored`), or
cannot be applied at all, whatever the retries (`MessageRejected`: the message goes to the DLQ)."""

from __future__ import annotations

import re
from typing import ClassVar

from shared.domain.errors import DomainError


class MessageRejected(Exception):
    """A handler refuses this message for good (it cannot be applied, whatever the retries): DLQ."""

    retryable: ClassVar[bool] = False

    def __init__(self, reason: str, *, code: str = "rejected") -> None:
        super().__init__(reason)
        self.code = code


class Refused(DomainError):
    """A command that cannot apply for a reason outside the aggregates (unknown subscription, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Ignored(Exception):
    """The command no longer applies (already done, stale): acknowledged, stored `ignored`."""


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_code(error: BaseException) -> str:
    """A stable snake_case code for a domain refusal (`InvalidTransitionError` -> `invalid_transition`)."""
    code = getattr(error, "code", None)
    if isinstance(code, str) and code:
        return code
    return snake_case(type(error).__name__.removesuffix("Error"))
