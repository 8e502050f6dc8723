"""The enroll, search, list and erase flows (blocking; called from worker threads)."""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import Conflict, PrivacyBudgetExceeded
from app.db.tables import GalleryItem, PrivacyPolicyRow, SubjectBudget, Tenant
from app.index.faiss_store import IndexRegistry
from app.services.groups import GroupBy, GroupFilters, GroupHit, GroupSearch
from app.services.privacy import BudgetCheck, TenantPolicy, release_mu_squared
from models.privacy.mechanism import GaussianMechanism, NoiseParameters


@dataclass(frozen=True)
class ItemInput:
    camera_id: str
    captured_at: datetime
    subject_ref: str | None = None
    track_ref: str | None = None
    external_id: str | None = None
    attributes: dict[str, Any] | None = None

    @property
    def budget_key(self) -> str | None:
        """Releases compose per subject; a track reference stands in when no subject is given."""
        if self.subject_ref:
            return self.subject_ref
        if self.track_ref:
            return f"track:{self.track_ref}"
        return None


@dataclass(frozen=True)
class SearchFilters:
    camera_ids: list[str] | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    min_score: float | None = None
    subject_ref: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.camera_ids, self.captured_from, self.captured_to, self.min_score, self.subject_ref))


@dataclass
class EnrollResult:
    ids: list[int]
    params: NoiseParameters
    max_subject_mu_squared: float | None = None  # largest composed μ² of any subject of the tenant


@dataclass
class Hit:
    item: GalleryItem
    score: float


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_policy(session: Session, tenant_id: int) -> TenantPolicy:
    row = session.get(PrivacyPolicyRow, tenant_id)
    if row is None:
        raise Conflict(
            f"this tenant has no privacy policy yet: an operator must set one (PUT /v1/admin/tenants/{tenant_id}/privacy); nothing was stored"
        )
    return TenantPolicy(
        epsilon=math.inf if row.epsilon is None else row.epsilon,
        delta=row.delta,
        clip_norm=row.clip_norm,
        subject_epsilon=row.subject_epsilon,
        subject_delta=row.subject_delta,
    )


@dataclass
class GalleryService:
    """Owns the tenant write locks, the noise mechanism and the path from SQL to FAISS."""

    sessions: sessionmaker[Session]
    indexes: IndexRegistry
    mechanism: GaussianMechanism
    model_sha256: str | None = None
    groups: GroupSearch = field(default_factory=GroupSearch)  # grouped search's record cache (app/services/groups.py)
    _locks: dict[int, threading.Lock] = field(default_factory=lambda: defaultdict(threading.Lock))
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def tenant_lock(self, tenant_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks[tenant_id]

    # -- enroll ---------------------------------------------------------------------------
    def enroll(self, tenant_id: int, items: list[ItemInput], features: np.ndarray) -> EnrollResult:
        """Check budgets, add noise, commit to SQL, then add to the index; all or nothing."""
        with self.tenant_lock(tenant_id), self.sessions() as session:
            policy = load_policy(session, tenant_id)
            params = policy.record_policy.parameters()
            per_release = release_mu_squared(params)
            if policy.has_subject_budget:
                charge_subject_budgets(session, tenant_id, policy, items, per_release)
            noisy, _ = self.mechanism.release(torch.from_numpy(features), policy.record_policy)
            noisy_np = noisy.numpy().astype(np.float32)
            rows_out = [
                GalleryItem(
                    tenant_id=tenant_id,
                    camera_id=item.camera_id,
                    captured_at=item.captured_at,
                    subject_ref=item.subject_ref,
                    track_ref=item.track_ref,
                    external_id=item.external_id,
                    attributes=item.attributes,
                    feature=noisy_np[i].astype("<f4").tobytes(),
                    mechanism=params.mechanism,
                    epsilon=None if math.isinf(params.epsilon) else params.epsilon,
                    delta=params.delta,
                    sensitivity=params.sensitivity,
                    sigma=params.sigma,
                    clip_norm=params.clip_norm,
                    noise_library=params.library,
                    model_sha256=self.model_sha256,
                )
                for i, item in enumerate(items)
            ]
            session.add_all(rows_out)
            session.flush()
            ids = np.array([row.id for row in rows_out], dtype=np.int64)
            session.commit()
            max_mu_squared = (
                session.scalar(select(func.max(SubjectBudget.mu_squared)).where(SubjectBudget.tenant_id == tenant_id))
                if policy.has_subject_budget
                else None
            )
            # SQL is committed: the index follows (a crash here is repaired at start-up).
            self.indexes.get(tenant_id).add(ids, index_vectors(noisy_np))
            return EnrollResult(ids=[int(i) for i in ids], params=params, max_subject_mu_squared=max_mu_squared)

    # -- search ---------------------------------------------------------------------------
    def search(self, tenant_id: int, query: np.ndarray, k: int, filters: SearchFilters) -> list[Hit]:
        index = self.indexes.get(tenant_id)
        if index.size == 0:
            return []
        fetch = k if not filters.active else min(index.size, max(4 * k, 64))
        while True:
            scores, ids = index.search(query.reshape(1, -1), fetch)
            pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            hits = self._hydrate(tenant_id, pairs, filters)
            if len(hits) >= k or fetch >= index.size:
                return hits[:k]
            fetch = min(index.size, fetch * 4)

    def search_groups(self, tenant_id: int, query: np.ndarray, k: int, group_by: GroupBy, filters: SearchFilters) -> list[GroupHit]:
        """Top-k tracks or subjects: each group's released records averaged, then L2-normalised (app/services/groups.py)."""
        group_filters = GroupFilters(
            camera_ids=filters.camera_ids,
            captured_from=filters.captured_from,
            captured_to=filters.captured_to,
            min_score=filters.min_score,
            subject_ref=filters.subject_ref,
        )
        return self.groups.search(self.sessions, tenant_id, group_by, query, k, group_filters)

    def _hydrate(self, tenant_id: int, pairs: list[tuple[int, float]], filters: SearchFilters) -> list[Hit]:
        if not pairs:
            return []
        ids = [i for i, _ in pairs]
        by_id: dict[int, GalleryItem] = {}
        with self.sessions() as session:
            for start in range(0, len(ids), 5000):  # keep IN lists within every backend's parameter limit
                query = select(GalleryItem).where(GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(ids[start : start + 5000]))
                by_id.update((row.id, row) for row in session.scalars(query))
        hits = []
        for item_id, score in pairs:
            row = by_id.get(item_id)
            if row is None or not _matches(row, score, filters):
                continue
            hits.append(Hit(row, score))
        return hits

    # -- erase ----------------------------------------------------------------------------
    def delete_items(self, tenant_id: int, ids: list[int]) -> int:
        """Delete rows (commit) then remove them from the index; returns rows deleted."""
        if not ids:
            return 0
        with self.tenant_lock(tenant_id), self.sessions() as session:
            deleted = session.scalars(
                delete(GalleryItem).where(GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(ids)).returning(GalleryItem.id)
            ).all()
            session.commit()
            self.indexes.get(tenant_id).remove(deleted)
            return len(deleted)

    def erase(self, tenant_id: int, *, subject_ref: str | None, before: datetime | None) -> int:
        with self.sessions() as session:
            query = select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id)
            if subject_ref is not None:
                query = query.where(GalleryItem.subject_ref == subject_ref)
            if before is not None:
                query = query.where(GalleryItem.captured_at < before)
            ids = list(session.scalars(query).all())
        total = 0
        for start in range(0, len(ids), 5000):
            total += self.delete_items(tenant_id, ids[start : start + 5000])
        return total

    def purge_expired(self, now: datetime | None = None) -> dict[int, int]:
        """Retention: erase items captured more than ``retention_days`` ago, per tenant."""
        now = now or datetime.now(UTC)
        with self.sessions() as session:
            tenants = session.execute(select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))).all()
        purged = {}
        for tenant_id, days in tenants:
            assert days is not None
            cutoff = now.timestamp() - days * 86400
            count = self.erase(tenant_id, subject_ref=None, before=datetime.fromtimestamp(cutoff, UTC))
            if count:
                purged[tenant_id] = count
        return purged

    # -- index sync -----------------------------------------------------------------------
    def sync_indexes(self) -> dict[int, str]:
        """Make every tenant's index hold exactly SQL's ids (start-up)."""
        actions = {}
        with self.sessions() as session:
            tenant_ids = list(session.scalars(select(Tenant.id)).all())
        for tenant_id in tenant_ids:
            with self.sessions() as session:
                sql_ids = np.array(session.scalars(select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id)).all(), dtype=np.int64)
            actions[tenant_id] = self.indexes.get(tenant_id).load_and_sync(sql_ids, self.feature_batches)
        return actions

    def feature_batches(self, tenant_id: int, after_id: int | None, batch: int = 10000):  # type: ignore[no-untyped-def]
        """(ids, index vectors) of a tenant's items with id > after_id, read from SQL in id order."""
        last = after_id or 0
        while True:
            with self.sessions() as session:
                rows = session.execute(
                    select(GalleryItem.id, GalleryItem.feature)
                    .where(GalleryItem.tenant_id == tenant_id, GalleryItem.id > last)
                    .order_by(GalleryItem.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            feats = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
            yield ids, index_vectors(feats)
            last = int(ids[-1])

    def count(self, tenant_id: int) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.tenant_id == tenant_id)) or 0)


def charge_subject_budgets(session: Session, tenant_id: int, policy: TenantPolicy, items: list[ItemInput], per_release: float) -> None:
    """Refuse (raise, nothing charged) if any subject would exceed its budget; else add μ² per release."""
    requested: dict[str, int] = defaultdict(int)
    for item in items:
        if item.budget_key:
            requested[item.budget_key] += 1
    if not requested:
        return
    rows = session.scalars(select(SubjectBudget).where(SubjectBudget.tenant_id == tenant_id, SubjectBudget.subject_ref.in_(list(requested))))
    budgets = {row.subject_ref: row for row in rows}
    limit = policy.subject_mu_budget()
    checks = [BudgetCheck(key, budgets[key].mu_squared if key in budgets else 0.0, count * per_release, limit) for key, count in requested.items()]
    refused = [check.as_dict(policy.subject_delta or policy.delta) for check in checks if not check.allowed]
    if refused:
        raise PrivacyBudgetExceeded(
            f"enrollment would exceed the per-subject privacy budget for {len(refused)} subject(s); nothing was stored",
            details={"subjects": refused},
        )
    for key, count in requested.items():
        row = budgets.get(key)
        if row is None:
            row = SubjectBudget(tenant_id=tenant_id, subject_ref=key, mu_squared=0.0, releases=0)
            session.add(row)
        row.mu_squared += count * per_release
        row.releases += count


def index_vectors(noisy: np.ndarray) -> np.ndarray:
    """Index holds unit-length copies of the noisy features (post-processing): scores are cosines."""
    norms = np.linalg.norm(noisy, axis=1, keepdims=True)
    return (noisy / np.maximum(norms, 1e-12)).astype(np.float32)


def _matches(row: GalleryItem, score: float, f: SearchFilters) -> bool:
    if f.min_score is not None and score < f.min_score:
        return False
    if f.camera_ids is not None and row.camera_id not in f.camera_ids:
        return False
    if f.subject_ref is not None and row.subject_ref != f.subject_ref:
        return False
    captured = as_utc(row.captured_at)
    if f.captured_from is not None and captured < as_utc(f.captured_from):
        return False
    return not (f.captured_to is not None and captured > as_utc(f.captured_to))
