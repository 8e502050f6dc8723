"""Request dependencies: app state, database session, tenant from API key, admin check."""

from __future__ import annotations

import functools
import hmac
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.contract import AuthorizationHeader, admin_key_scheme, api_key_scheme, bearer_token
from app.core.errors import Forbidden, ServiceUnavailable, Unauthorized
from app.core.security import secret_matches, split_api_key
from app.db.tables import ApiKey, Tenant

if TYPE_CHECKING:
    from app.state import AppState


def get_state(request: Request) -> AppState:
    """The state the lifespan built; 503 while the service is still starting."""
    state: AppState | None = getattr(request.app.state, "reid", None)
    if state is None:
        raise ServiceUnavailable("service is starting")
    return state


def get_session(request: Request) -> Iterator[Session]:
    """The request's session, for routes that do their SQL in the request (not across an encoder pass)."""
    with get_state(request).sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def releasing_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` closing the sessions it was given as soon as it returns.

    FastAPI ends a dependency (even ``scope="function"``) only after it has validated the response, which for a sync
    route runs on a worker thread. A session held until then keeps its connection while the request waits for a thread,
    and the threads can all be waiting for a connection: measured, 60 concurrent listings held the pool until it timed
    out. Closed here, a finished request holds no connection."""
    if inspect.iscoroutinefunction(endpoint):
        return endpoint

    @functools.wraps(endpoint)
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return closing


class SessionReleasingRouter(APIRouter):
    """An ``APIRouter`` whose sync routes close their request sessions when they return (``releasing_sessions``)."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, releasing_sessions(endpoint), **kwargs)


@dataclass(frozen=True)
class TenantContext:
    tenant_id: int
    key_id: int
    crops_per_second: int  # this key's crop allowance (0: unlimited)


def tenant_from_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    authorization: AuthorizationHeader = None,
) -> TenantContext:
    """The tenant always comes from the key, never from the request.

    Authenticated in a short session of its own, closed before the route's work starts (an enrollment must not hold a
    connection across its encoder pass); then the key's request rate is counted (429 past its limit)."""
    state = get_state(request)
    key = x_api_key if x_api_key is not None else bearer_token(authorization)  # X-API-Key wins (a gateway may add its own Bearer)
    if not key:
        raise Unauthorized("missing API key: send X-API-Key or Authorization: Bearer")
    parts = split_api_key(key)
    if parts is None:
        raise Unauthorized("unknown API key")
    prefix, secret = parts
    with state.sessions() as session:
        found = session.execute(
            select(ApiKey.id, ApiKey.tenant_id, ApiKey.secret_hash, ApiKey.revoked_at, Tenant.requests_per_second, Tenant.crops_per_second)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.prefix == prefix)
        ).first()
    if found is None or not secret_matches(secret, found.secret_hash):
        raise Unauthorized("unknown API key")
    if found.revoked_at is not None:
        raise Unauthorized("API key has been revoked")
    settings = state.settings
    requests_per_second = settings.rate_requests_per_second if found.requests_per_second is None else found.requests_per_second
    crops_per_second = settings.rate_crops_per_second if found.crops_per_second is None else found.crops_per_second
    state.rate_limiter.requests(found.id, requests_per_second)
    return TenantContext(tenant_id=found.tenant_id, key_id=found.id, crops_per_second=crops_per_second)


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
