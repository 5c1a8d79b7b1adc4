"""How a use case says no: refused for good (`Refused`, any `DomainError`), no longer applies (`Ignored`), or
cannot be applied at all, whatever the retries (`MessageRejected`: the message goes to the DLQ). The refusals
are terminal errors under the project's root (`shared.errors`); their machine-readable code is
`shared.errors.refusal_code`'s."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from shared.domain.errors import DomainError
from shared.errors import RefusedError, refusal_code


class MessageRejected(RefusedError):
    """A handler refuses this message for good (it cannot be applied, whatever the retries): DLQ."""

    def __init__(self, reason: str, *, code: str = "rejected") -> None:
        super().__init__(reason, code=code)


class Refused(DomainError):
    """A command that cannot apply for a reason outside the aggregates (unknown subscription, ...): stored
    `rejected` with its code, like a domain refusal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Ignored(Exception):
    """The command no longer applies (already done, stale): acknowledged, stored `ignored`.

    `audit`: rows (the unit of work's ``add_audit`` arguments) that must outlive the refusal, e.g. a second
    charge of a paid invoice: the message bus writes them after rolling back what the use case did."""

    def __init__(self, reason: str, *, audit: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(reason)
        self.audit = tuple(dict(row) for row in audit)


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_code(error: BaseException) -> str:
    """A stable snake_case code for a refusal (`InvalidTransitionError` -> `invalid_transition`)."""
    return refusal_code(error)
