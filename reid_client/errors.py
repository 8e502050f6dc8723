"""Typed errors raised from the service's error envelope ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any, ClassVar


class ReidError(Exception):
    """An error answer of the service (or a transport failure, with ``status`` 0)."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, status: int, code: str | None = None, details: Any = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code or self.code}: {message}")
        self.message = message
        self.status = status
        self.error_code = code or self.code
        self.details = details
        self.retry_after = retry_after  # seconds the service asked us to wait (429/503), when it said


class BadRequest(ReidError):
    code = "bad_request"


class InvalidInput(ReidError):
    code = "invalid_input"


class InvalidImage(ReidError):
    code = "invalid_image"


class UnsupportedMediaType(ReidError):
    code = "unsupported_media_type"


class PayloadTooLarge(ReidError):
    code = "payload_too_large"


class Unauthorized(ReidError):
    code = "unauthorized"


class Forbidden(ReidError):
    code = "forbidden"


class NotFound(ReidError):
    code = "not_found"


class MethodNotAllowed(ReidError):
    code = "method_not_allowed"


class Conflict(ReidError):
    code = "conflict"


class PrivacyBudgetExceeded(Conflict):
    code = "privacy_budget_exceeded"


class ModelMismatch(Conflict):
    code = "model_mismatch"


class RateLimited(ReidError):
    code = "rate_limited"


class Unavailable(ReidError):
    code = "unavailable"


class Overloaded(Unavailable):
    code = "overloaded"


class TransportError(ReidError):
    """The service could not be reached (connection refused, timeout, …)."""

    code = "transport_error"


BY_CODE: dict[str, type[ReidError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidInput,
        InvalidImage,
        UnsupportedMediaType,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PrivacyBudgetExceeded,
        ModelMismatch,
        RateLimited,
        Unavailable,
        Overloaded,
    )
}
BY_STATUS: dict[int, type[ReidError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
    429: RateLimited,
    503: Unavailable,
}


def error_from_response(status: int, body: Any, retry_after: float | None) -> ReidError:
    """The typed error for an answer: by its envelope's code, else by status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        cls = BY_CODE.get(code) or BY_STATUS.get(status, ReidError)
        return cls(str(error.get("message", "")), status=status, code=code, details=error.get("details"), retry_after=retry_after)
    cls = BY_STATUS.get(status, ReidError)
    return cls(str(body)[:500] if body else f"HTTP {status}", status=status, retry_after=retry_after)
