"""Errors of the Metronome-compatible surface.

Metronome answers `{"message": ...}`; the SDK turns the status into its exception (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
UnprocessableEntityError, 429 RateLimitError, 5xx InternalServerError) and keeps the parsed body in `e.body`.
Under `/metronome` every problem document also carries `message` (its detail, or title), so a caller
catching the SDK's exception sees both Metronome's field and ours (`type`, `title`, `code`, `detail`,
`errors[{field, reason}]`). The rewriting itself is `services.ingest.problems.MetronomeProblemMiddleware`.
"""

from __future__ import annotations

PREFIX = "/metronome"
