"""One domain error base carrying its HTTP status; one handler renders every error the same way.

Each subclass names its ``status_code``, ``code`` and a one-line ``description``; the OpenAPI document's error
responses are generated from these classes (``app/api/contract.py``), so a new error is documented where it is declared.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException


class DomainError(Exception):
    """Base for errors the API answers with; subclasses set ``status_code``, ``code`` and ``description``."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    description: ClassVar[str] = "the request could not be parsed (malformed body or multipart stream)"
    retryable: ClassVar[bool] = False  # answers carry Retry-After and details.retry_after_ms

    def __init__(self, message: str, *, details: Any = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        if self.retry_after_s is None:
            return None
        return {"Retry-After": str(retry_after_header(self.retry_after_s))}

    def body(self) -> dict[str, Any]:
        details = self.details
        if self.retry_after_s is not None:
            details = {**(details if isinstance(details, dict) else {}), "retry_after_ms": math.ceil(self.retry_after_s * 1000)}
        return error_body(self.code, self.message, details)


class BadRequest(DomainError):
    pass


class InvalidInput(DomainError):
    status_code = 422
    code = "invalid_input"
    description = "a parameter, field or the metadata is missing or invalid; details name each one"


class InvalidImage(DomainError):
    status_code = 422
    code = "invalid_image"
    description = "an image is empty, corrupt or not decodable; nothing was stored"


class UnsupportedMediaType(DomainError):
    status_code = 415
    code = "unsupported_media_type"
    description = "an upload is not JPEG, PNG or WebP"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "payload_too_large"
    description = "the body, an image (bytes or pixels) or the batch exceeds its limit"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"
    description = "the key is missing, unknown or revoked"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"
    description = "the admin key is wrong"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"
    description = "no such resource (for this tenant)"


class MethodNotAllowed(DomainError):
    status_code = 405
    code = "method_not_allowed"
    description = "the path exists but not with this method; the Allow header lists the methods it has"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"
    description = "the request conflicts with the current state (a duplicate name, no privacy policy yet)"


class PrivacyBudgetExceeded(DomainError):
    status_code = 409
    code = "privacy_budget_exceeded"
    description = "enrollment would exceed a subject's privacy budget; nothing was stored"


class ModelMismatch(DomainError):
    status_code = 409
    code = "model_mismatch"
    description = "the tenant's gallery was enrolled with another encoder (checkpoint or embedding size differ)"


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limited"
    description = "this key's request rate is exceeded; retry after Retry-After seconds"
    retryable = True


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "unavailable"
    description = "the service is starting or a dependency is down"


class Overloaded(DomainError):
    status_code = 503
    code = "overloaded"
    description = "the encoder queue is full; retry after Retry-After seconds"
    retryable = True


class DatabaseBusy(DomainError):
    status_code = 503
    code = "database_busy"
    description = (
        "no database connection came free in time; a read can be retried after Retry-After seconds, a write may have "
        "taken effect (check before sending it again)"
    )
    retryable = True


class InternalError(DomainError):
    status_code = 500
    code = "internal"
    description = "an unexpected error (a bug): nothing is claimed about the request's effect; the log has the trace"


def retry_after_header(seconds: float) -> int:
    """Whole seconds for the Retry-After header (RFC 9110), at least 1."""
    return max(1, math.ceil(seconds))


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


FORM_FIELD_TOO_LARGE = re.compile(r"(Part|Field) exceeded maximum size of")
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route fully matches for this path (Starlette's own Allow names only the first route's)."""
    from starlette.routing import Match

    return [
        method
        for method in PROBED_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.router.routes)
    ]


def _field_path(loc: Any) -> list[str]:
    """The field path of a validation error, without pydantic's union-member tags (``function-before[…]``, ``literal['inf']``)."""
    return [str(part) for part in loc if not (isinstance(part, str) and ("[" in part or part in {"float", "int", "str"}))]


def install_error_handlers(app: FastAPI) -> None:
    """Render domain, validation and HTTP errors as ``{"error": {code, message, details}}``."""

    def render(exc: DomainError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _pool_timeout(_: Request, exc: SQLAlchemyTimeoutError) -> JSONResponse:
        return render(DatabaseBusy("no database connection came free in time; a write may or may not have taken effect", retry_after_s=1.0))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # the server logs the trace; the body says nothing of it
        return render(InternalError("unexpected error"))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": _field_path(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        problems = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
        return JSONResponse(error_body("invalid_input", f"invalid request: {problems}", details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        status = exc.status_code
        if status == 405:
            allow = allowed_methods(request)
            headers["Allow"] = ", ".join(allow)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allow)}"
        elif status == 400 and FORM_FIELD_TOO_LARGE.search(message):  # Starlette's form parser: a text field over 1 MiB
            status = 413
            message = (
                f"a form text field (such as metadata) is larger than the 1 MiB each may have ({message}); nothing was stored: "
                "send fewer crops per request"
            )
        code = HTTP_CODES.get(status, f"http_{status}")
        return JSONResponse(error_body(code, message), status_code=status, headers=headers or None)
