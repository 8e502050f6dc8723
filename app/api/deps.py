"""Request dependencies: app state, database session, tenant from API key, admin check."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.contract import AuthorizationHeader, admin_key_scheme, api_key_scheme, bearer_token
from app.core.errors import Forbidden, ServiceUnavailable, Unauthorized
from app.core.security import secret_matches, split_api_key
from app.db.tables import ApiKey, Tenant

if TYPE_CHECKING:
    from app.main import AppState


def get_state(request: Request) -> AppState:
    """The state the lifespan built; 503 while the service is still starting."""
    state: AppState | None = getattr(request.app.state, "reid", None)
    if state is None:
        raise ServiceUnavailable("service is starting")
    return state


def get_session(request: Request) -> Iterator[Session]:
    with get_state(request).sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class TenantContext:
    tenant_id: int
    key_id: int


def tenant_from_key(
    session: SessionDep,
    x_api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    authorization: AuthorizationHeader = None,
) -> TenantContext:
    """The tenant always comes from the key, never from the request."""
    key = x_api_key if x_api_key is not None else bearer_token(authorization)
    if not key:
        raise Unauthorized("missing API key: send X-API-Key or Authorization: Bearer")
    parts = split_api_key(key)
    if parts is None:
        raise Unauthorized("unknown API key")
    prefix, secret = parts
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or not secret_matches(secret, row.secret_hash):
        raise Unauthorized("unknown API key")
    if row.revoked_at is not None:
        raise Unauthorized("API key has been revoked")
    if session.get(Tenant, row.tenant_id) is None:
        raise Unauthorized("unknown API key")
    return TenantContext(tenant_id=row.tenant_id, key_id=row.id)


TenantDep = Annotated[TenantContext, Depends(tenant_from_key)]


def require_admin(request: Request, x_admin_key: Annotated[str | None, Security(admin_key_scheme)] = None) -> str:
    expected: str = get_state(request).admin_key
    if not x_admin_key:
        raise Unauthorized("missing admin key: send X-Admin-Key")
    if not hmac.compare_digest(x_admin_key.encode(), expected.encode()):
        raise Forbidden("invalid admin key")
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]


def utcnow() -> datetime:
    return datetime.now(UTC)
