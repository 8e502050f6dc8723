"""Operator API: tenants, API keys, privacy policies, the utility trade-off, audit log."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.contract import ADMIN_AUTH, JSON_BODY, PARAMS, errors
from app.api.deps import AdminDep, SessionDep, SessionReleasingRouter, get_state
from app.api.schemas import (
    DIGITS,
    INT64_MAX,
    AuditOut,
    Epsilon,
    KeyIn,
    KeyIssued,
    KeyOut,
    PolicyIn,
    PolicyOut,
    RateLimitsIn,
    RateLimitsOut,
    TenantDeleted,
    TenantIn,
    TenantOut,
    TenantPatch,
    TradeoffOut,
    epsilon_out,
)
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.security import new_api_key
from app.db.tables import ApiKey, AuditEntry, GalleryItem, PrivacyPolicyRow, Tenant
from app.index.faiss_store import IndexRegistry
from app.services.calibration import expected_utility
from models.privacy import gaussian_sigma
from models.privacy.mechanism import sensitivity_for

router = SessionReleasingRouter(prefix="/v1/admin", tags=["admin"])  # sync routes close their session when they return

TenantId = Annotated[int, Path(ge=1, le=INT64_MAX, description="tenant id", examples=[3]), DIGITS]
KeyId = Annotated[int, Path(ge=1, le=INT64_MAX, description="API key id", examples=[7]), DIGITS]
NO_NOISE_WARNING = "epsilon is inf: new records are stored WITHOUT differential-privacy noise"


def audit(session: Session, actor: str, action: str, tenant_id: int | None, details: dict[str, Any] | None = None) -> None:
    session.add(AuditEntry(actor=actor, action=action, tenant_id=tenant_id, details=details))


def policy_out(row: PrivacyPolicyRow, domain: str) -> PolicyOut:
    """The policy as new records will be released: the sensitivity follows the serving encoder's feature domain."""
    epsilon = math.inf if row.epsilon is None else row.epsilon
    sensitivity = sensitivity_for(domain, row.clip_norm)
    return PolicyOut(
        epsilon=epsilon_out(row.epsilon),
        delta=row.delta,
        clip_norm=row.clip_norm,
        sensitivity=sensitivity,
        sigma=gaussian_sigma(epsilon, row.delta, sensitivity),
        subject_epsilon=row.subject_epsilon,
        subject_delta=row.subject_delta,
        pool_tracks=row.pool_tracks is not False,
        noise=not math.isinf(epsilon),
        warning=NO_NOISE_WARNING if math.isinf(epsilon) else None,
    )


def _tenant(session: Session, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def _policy(session: Session, tenant_id: int) -> PrivacyPolicyRow:
    row = session.get(PrivacyPolicyRow, tenant_id)
    if row is None:
        raise Conflict(f"tenant {tenant_id} has no privacy policy yet; PUT /v1/admin/tenants/{tenant_id}/privacy")
    return row


def tenant_out(session: Session, tenant: Tenant, indexes: IndexRegistry, domain: str) -> TenantOut:
    size = session.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.tenant_id == tenant.id)) or 0
    policy = session.get(PrivacyPolicyRow, tenant.id)
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        retention_days=tenant.retention_days,
        created_at=tenant.created_at,
        gallery_size=int(size),
        index_size=indexes.get(tenant.id).size,
        privacy=policy_out(policy, domain) if policy is not None else None,
    )


@router.post("/tenants", response_model=TenantOut, status_code=201, responses=errors(*ADMIN_AUTH, *JSON_BODY, Conflict))
def create_tenant(body: TenantIn, request: Request, session: SessionDep, actor: AdminDep) -> TenantOut:
    settings = get_state(request).settings
    tenant = Tenant(name=body.name, retention_days=body.retention_days)
    session.add(tenant)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a tenant named {body.name!r} already exists") from None
    if settings.default_epsilon is not None:
        session.add(
            PrivacyPolicyRow(tenant_id=tenant.id, epsilon=settings.default_epsilon, delta=settings.default_delta, clip_norm=settings.clip_norm)
        )
    audit(session, actor, "tenant.create", tenant.id, {"name": body.name, "retention_days": body.retention_days})
    session.commit()
    return tenant_out(session, tenant, get_state(request).indexes, get_state(request).gallery.feature_domain)


@router.get("/tenants", response_model=list[TenantOut], responses=errors(*ADMIN_AUTH))
def list_tenants(request: Request, session: SessionDep, _: AdminDep) -> list[TenantOut]:
    state = get_state(request)
    return [tenant_out(session, t, state.indexes, state.gallery.feature_domain) for t in session.scalars(select(Tenant).order_by(Tenant.id)).all()]


@router.get("/tenants/{tenant_id}", response_model=TenantOut, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
def get_tenant(tenant_id: TenantId, request: Request, session: SessionDep, _: AdminDep) -> TenantOut:
    return tenant_out(session, _tenant(session, tenant_id), get_state(request).indexes, get_state(request).gallery.feature_domain)


@router.patch("/tenants/{tenant_id}", response_model=TenantOut, responses=errors(*ADMIN_AUTH, *JSON_BODY, NotFound, Conflict))
def update_tenant(tenant_id: TenantId, body: TenantPatch, request: Request, session: SessionDep, actor: AdminDep) -> TenantOut:
    tenant = _tenant(session, tenant_id)
    changes = body.model_dump(exclude_unset=True)
    for key, value in changes.items():
        setattr(tenant, key, value)
    audit(session, actor, "tenant.update", tenant_id, changes)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a tenant named {body.name!r} already exists") from None
    return tenant_out(session, tenant, get_state(request).indexes, get_state(request).gallery.feature_domain)


@router.delete("/tenants/{tenant_id}", response_model=TenantDeleted, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
async def delete_tenant(tenant_id: TenantId, request: Request, actor: AdminDep) -> TenantDeleted:
    """Delete a tenant with its keys, gallery, budgets and index files."""
    state = get_state(request)

    def run() -> int:
        with state.sessions() as session, state.gallery.locks.hold(session, tenant_id):
            tenant = _tenant(session, tenant_id)
            count = session.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.tenant_id == tenant_id)) or 0
            session.delete(tenant)
            audit(session, actor, "tenant.delete", tenant_id, {"items_erased": int(count)})
            session.commit()
        state.gallery.forget_tenant(tenant_id)  # the other replicas drop theirs at their next poll
        return int(count)

    erased = await run_in_threadpool(run)
    state.metrics.forget_tenant(tenant_id)
    return TenantDeleted(deleted=1, items_erased=erased)


@router.post("/tenants/{tenant_id}/keys", response_model=KeyIssued, status_code=201, responses=errors(*ADMIN_AUTH, *JSON_BODY, NotFound))
def issue_key(tenant_id: TenantId, body: KeyIn, session: SessionDep, actor: AdminDep) -> KeyIssued:
    _tenant(session, tenant_id)
    key = new_api_key()
    row = ApiKey(tenant_id=tenant_id, prefix=key.prefix, secret_hash=key.secret_hash, label=body.label)
    session.add(row)
    session.flush()
    audit(session, actor, "key.issue", tenant_id, {"key_id": row.id, "prefix": key.prefix, "label": body.label})
    session.commit()
    return KeyIssued(id=row.id, prefix=row.prefix, label=row.label, created_at=row.created_at, revoked_at=None, api_key=key.plaintext)


@router.get("/tenants/{tenant_id}/keys", response_model=list[KeyOut], responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
def list_keys(tenant_id: TenantId, session: SessionDep, _: AdminDep) -> list[KeyOut]:
    _tenant(session, tenant_id)
    rows = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id)).all()
    return [KeyOut(id=r.id, prefix=r.prefix, label=r.label, created_at=r.created_at, revoked_at=r.revoked_at) for r in rows]


@router.delete("/tenants/{tenant_id}/keys/{key_id}", response_model=KeyOut, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
def revoke_key(tenant_id: TenantId, key_id: KeyId, session: SessionDep, actor: AdminDep) -> KeyOut:
    row = session.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"key {key_id} of tenant {tenant_id} not found")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        audit(session, actor, "key.revoke", tenant_id, {"key_id": key_id, "prefix": row.prefix})
        session.commit()
    return KeyOut(id=row.id, prefix=row.prefix, label=row.label, created_at=row.created_at, revoked_at=row.revoked_at)


@router.get("/tenants/{tenant_id}/privacy", response_model=PolicyOut, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound, Conflict))
def get_privacy(tenant_id: TenantId, request: Request, session: SessionDep, _: AdminDep) -> PolicyOut:
    _tenant(session, tenant_id)
    return policy_out(_policy(session, tenant_id), get_state(request).gallery.feature_domain)


@router.put("/tenants/{tenant_id}/privacy", response_model=PolicyOut, responses=errors(*ADMIN_AUTH, *JSON_BODY, NotFound))
def set_privacy(tenant_id: TenantId, body: PolicyIn, request: Request, session: SessionDep, actor: AdminDep) -> PolicyOut:
    """Applies to new records only: stored records keep the parameters they were released with."""
    _tenant(session, tenant_id)
    if (body.subject_delta is not None) and body.subject_epsilon is None:
        raise InvalidInput("subject_delta needs subject_epsilon")
    row = session.get(PrivacyPolicyRow, tenant_id)
    settings = get_state(request).settings
    domain = get_state(request).gallery.feature_domain
    before = policy_out(row, domain).model_dump(include={"epsilon", "delta", "subject_epsilon", "subject_delta", "pool_tracks"}) if row else None
    if row is None:
        row = PrivacyPolicyRow(tenant_id=tenant_id, clip_norm=settings.clip_norm)
        session.add(row)
    row.epsilon = None if body.epsilon == "inf" else float(body.epsilon)
    row.delta = body.delta
    row.subject_epsilon = body.subject_epsilon
    row.subject_delta = body.subject_delta
    if body.pool_tracks is not None:  # left out: kept (a client written before the switch must not flip it)
        row.pool_tracks = body.pool_tracks
    elif row.pool_tracks is None:
        row.pool_tracks = True  # a new policy row (flushed later, so the column default has not applied yet)
    after = policy_out(row, domain)
    fields = {"epsilon", "delta", "subject_epsilon", "subject_delta", "pool_tracks", "sigma"}
    audit(session, actor, "privacy.update", tenant_id, {"before": before, "after": after.model_dump(include=fields)})
    session.commit()
    return after


@router.get("/tenants/{tenant_id}/privacy/tradeoff", response_model=TradeoffOut, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
def privacy_tradeoff(
    tenant_id: TenantId,
    request: Request,
    session: SessionDep,
    _: AdminDep,
    epsilon: Annotated[list[Epsilon] | None, Query(max_length=64, description="candidate epsilons (default: the calibration grid)")] = None,
) -> TradeoffOut:
    """Expected search quality at candidate ε, from the checkpoint's calibration file."""
    _tenant(session, tenant_id)
    state = get_state(request)
    row = session.get(PrivacyPolicyRow, tenant_id)  # no policy yet: the defaults a new policy would get
    delta, clip_norm = (row.delta, row.clip_norm) if row is not None else (state.settings.default_delta, state.settings.clip_norm)
    utility = expected_utility(state.calibration, epsilon, delta=delta, clip_norm=clip_norm, domain=state.gallery.feature_domain)
    return TradeoffOut.model_validate(utility)


def limits_out(tenant: Tenant, request: Request) -> RateLimitsOut:
    settings = get_state(request).settings
    return RateLimitsOut(
        requests_per_second=settings.rate_requests_per_second if tenant.requests_per_second is None else tenant.requests_per_second,
        crops_per_second=settings.rate_crops_per_second if tenant.crops_per_second is None else tenant.crops_per_second,
        requests_per_second_default=tenant.requests_per_second is None,
        crops_per_second_default=tenant.crops_per_second is None,
    )


@router.get("/tenants/{tenant_id}/limits", response_model=RateLimitsOut, responses=errors(*ADMIN_AUTH, *PARAMS, NotFound))
def get_limits(tenant_id: TenantId, request: Request, session: SessionDep, _: AdminDep) -> RateLimitsOut:
    """The per-key rate limits in force for this tenant's keys."""
    return limits_out(_tenant(session, tenant_id), request)


@router.put("/tenants/{tenant_id}/limits", response_model=RateLimitsOut, responses=errors(*ADMIN_AUTH, *JSON_BODY, NotFound))
def set_limits(tenant_id: TenantId, body: RateLimitsIn, request: Request, session: SessionDep, actor: AdminDep) -> RateLimitsOut:
    """Override the per-key rate limits of this tenant's keys (fields left out: the service defaults; 0: unlimited).
    Each replica counts its own traffic."""
    tenant = _tenant(session, tenant_id)
    before = {"requests_per_second": tenant.requests_per_second, "crops_per_second": tenant.crops_per_second}
    tenant.requests_per_second = body.requests_per_second
    tenant.crops_per_second = body.crops_per_second
    audit(session, actor, "limits.update", tenant_id, {"before": before, "after": body.model_dump()})
    session.commit()
    return limits_out(tenant, request)


@router.get("/audit", response_model=list[AuditOut], summary="Audit log, newest first", responses=errors(*ADMIN_AUTH, *PARAMS))
def list_audit(
    session: SessionDep,
    _: AdminDep,
    tenant_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="only this tenant's entries"), DIGITS] = None,
    limit: Annotated[int, Query(ge=1, le=1000), DIGITS] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="entries older than this id (paging)"), DIGITS] = None,
) -> list[AuditOut]:
    query = select(AuditEntry)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()
    return [AuditOut(id=r.id, at=r.at, actor=r.actor, action=r.action, tenant_id=r.tenant_id, details=r.details) for r in rows]
