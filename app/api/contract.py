"""The OpenAPI side of the contract: error responses generated from the ``DomainError`` classes, security schemes.

A route declares the errors it can raise (``responses=errors(NotFound, *ADMIN_AUTH, ...)``); each status gets the error
envelope schema, a description naming every code it can carry, one example per code, and the ``Retry-After`` header
where the error is retryable. Error classes added later document themselves by being listed here or at a route.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import Header
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import (
    BadRequest,
    DatabaseBusy,
    DomainError,
    Forbidden,
    InvalidImage,
    InvalidInput,
    ModelMismatch,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)

# One scheme per route: a second, alternative scheme makes each header "optional" to schema-driven tools. The same keys
# are also accepted as `Authorization: Bearer …` (said in the descriptions; read by ``bearer_token``).
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    auto_error=False,
    description="an integrator key (`rk_…`), issued by an operator per tenant; `Authorization: Bearer rk_…` works too",
)
admin_key_scheme = APIKeyHeader(
    name="X-Admin-Key",
    scheme_name="AdminKey",
    auto_error=False,
    description="the operator key (REID_ADMIN_KEY); on /metrics `Authorization: Bearer <admin key>` works too (for scrapers)",
)
AuthorizationHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if that is what was sent."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code; the status description lists the codes it can carry")
    message: str = Field(description="what went wrong, for people")
    details: Any = Field(None, description="structured specifics (failing fields or items, retry_after_ms, …) or null")


class ErrorEnvelope(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [error_body("not_found", "gallery item 42 not found")]},
    )
    error: ErrorDetail


RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "whole seconds (>= 1) to wait before retrying; details.retry_after_ms has the same in milliseconds",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_EXAMPLE_DETAILS: dict[str, Any] = {
    "invalid_input": [{"loc": ["body", "epsilon"], "msg": "Input should be a finite number", "type": "finite_number"}],
    "rate_limited": {"retry_after_ms": 1000},
    "overloaded": {"retry_after_ms": 250},
    "database_busy": {"retry_after_ms": 1000},
}

# Sets routes combine.
TENANT_AUTH: tuple[type[DomainError], ...] = (Unauthorized,)
ADMIN_AUTH: tuple[type[DomainError], ...] = (Unauthorized, Forbidden)
LIMITED: tuple[type[DomainError], ...] = (RateLimited,)  # per-key rate limits (integrator routes)
ENCODER: tuple[type[DomainError], ...] = (Overloaded, ModelMismatch)  # routes that run the encoder on the tenant's gallery
ALWAYS: tuple[type[DomainError], ...] = (ServiceUnavailable, DatabaseBusy, PayloadTooLarge)  # starting up; no connection; any body over the limit
PARAMS: tuple[type[DomainError], ...] = (InvalidInput,)
JSON_BODY: tuple[type[DomainError], ...] = (BadRequest, InvalidInput)
UPLOAD: tuple[type[DomainError], ...] = (BadRequest, InvalidInput, InvalidImage, UnsupportedMediaType, PayloadTooLarge)


def errors(*classes: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these errors (plus ``ALWAYS``), grouped by status."""
    by_status: dict[int, list[type[DomainError]]] = defaultdict(list)
    for cls in (*classes, *ALWAYS):
        if cls not in by_status[cls.status_code]:
            by_status[cls.status_code].append(cls)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        examples = {
            cls.code: {"summary": cls.description, "value": error_body(cls.code, cls.description, _EXAMPLE_DETAILS.get(cls.code))} for cls in group
        }
        response: dict[str, Any] = {
            "model": ErrorEnvelope,
            "description": "; ".join(f"`{cls.code}`: {cls.description}" for cls in group),
            "content": {"application/json": {"examples": examples}},
        }
        if any(cls.retryable for cls in group):
            response["headers"] = RETRY_AFTER_HEADER
        responses[status] = response
    return responses
