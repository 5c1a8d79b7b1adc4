"""Errors of the Metronome-compatible surface.

Metronome answers `{"message": ...}`; the SDK turns the status into its exception (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
UnprocessableEntityError, 429 RateLimitError, 5xx InternalServerError) and keeps the parsed body in `e.body`.
Under `/metronome` every problem document also carries `message` (its detail, or title), so a caller
catching the SDK's exception sees both Metronome's field and ours (`type`, `title`, `code`, `detail`,
`errors[{field, reason}]`). The rewriting itself is `services.ingest.problems.MetronomeProblemMiddleware`.
"""

from __future__ import annotations

from services.ingest.problems import FieldError, ProblemError

PREFIX = "/metronome"


def not_supported(field: str, feature: str) -> ProblemError:
    """A clear refusal (400, code `not_supported`) of a Metronome field or feature this engine does not
    implement: never a silent wrong answer."""
    return ProblemError(400, "Not supported", f"{feature} is not supported by this engine", slug="not-supported",
                        errors=[FieldError(field=field, reason=f"not supported: {feature}")])


def not_found(what: str, ident: str, field: str = "id") -> ProblemError:
    return ProblemError(404, f"Unknown {what}", f"no {what} {ident!r}", slug="not-found",
                        errors=[FieldError(field=field, reason=f"unknown {what}")])
