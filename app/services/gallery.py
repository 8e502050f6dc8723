"""The enroll, search, list and erase flows, and the index follower (blocking; called from worker threads).

Writes to a tenant's gallery run in one SQL transaction under the tenant's write lock (a PostgreSQL advisory lock, so
across replicas): items, subject budgets (one atomic upsert, checked in the same transaction) and one change-log row
per item added or deleted, with the tenant's head sequence. Every replica's FAISS index follows that log: the writer
applies its own change at once; ``follow()`` (polled) applies everyone else's.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, defer, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from app.core.errors import Conflict, ModelMismatch, PrivacyBudgetExceeded, Unauthorized
from app.db.session import LOCK_RETENTION, TenantWriteLocks, run_once_lock
from app.db.tables import TRACK_BUDGET_PREFIX, GalleryChange, GalleryHead, GalleryItem, PrivacyPolicyRow, ServiceJob, SubjectBudget, Tenant
from app.index.faiss_store import IndexRegistry, TenantIndex
from app.services.groups import GroupBy, GroupFilters, GroupHit, GroupSearch, Scoring
from app.services.privacy import BudgetCheck, TenantPolicy, release_mu_squared
from models.evaluation.likelihood import TrackScorer, signed_features
from models.privacy.mechanism import GaussianMechanism, NoiseParameters

log = logging.getLogger("reid.gallery")
IN_CHUNK = 5000  # keep IN lists within every backend's parameter limit
UNTRAINED = "untrained"

__all__ = ["EnrollResult", "GalleryService", "Hit", "ItemInput", "PooledRelease", "SearchFilters"]


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
            return TRACK_BUDGET_PREFIX + self.track_ref
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

    @property
    def narrows(self) -> bool:
        """Filters on stored metadata (answered by SQL before FAISS), as opposed to ``min_score`` alone."""
        return any(v is not None for v in (self.camera_ids, self.captured_from, self.captured_to, self.subject_ref))


@dataclass(frozen=True)
class PooledRelease:
    """The crops of one track in one enrollment, released as one noisy mean."""

    item_ids: list[int]
    track_ref: str
    subject_ref: str | None
    params: NoiseParameters


@dataclass
class EnrollResult:
    ids: list[int]
    params: NoiseParameters  # of the records released alone
    max_subject_mu_squared: float | None = None  # largest composed μ² of any subject of the tenant
    pooled: list[PooledRelease] = field(default_factory=list)


def plan_releases(items: list[ItemInput], pool_tracks: bool, max_pool: int = 16) -> list[list[int]]:
    """The releases of one enrollment, as lists of item positions: the crops of one (track_ref, subject_ref) pair, when
    there are at least two and ``pool_tracks``, are one pooled release; every other crop is released alone.

    A pool holds at most ``max_pool`` crops (a larger track is split into balanced pools): the mean of n copies of one
    crop (or of near-identical video frames) would be released at σ/n, so the cap bounds what such a flood reveals —
    the whole track's μ is then √(n·max_pool)·Δ/σ instead of n·Δ/σ."""
    if not pool_tracks:
        return [[i] for i in range(len(items))]
    by_track: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    releases: list[list[int]] = []
    for i, item in enumerate(items):
        if item.track_ref:
            by_track[(item.track_ref, item.subject_ref)].append(i)
        else:
            releases.append([i])
    for members in by_track.values():
        parts = -(-len(members) // max_pool)  # ceil: the fewest pools within the cap, sizes within one of each other
        for part in np.array_split(np.asarray(members), parts):
            releases.extend([part.tolist()] if len(part) > 1 else [[int(m)] for m in part])
    return sorted(releases)


@dataclass
class Hit:
    item: GalleryItem
    score: float


@dataclass(frozen=True)
class EncoderIdentity:
    sha256: str
    dim: int

    def describe(self) -> str:
        return f"{'an untrained fallback encoder' if self.sha256 == UNTRAINED else 'checkpoint sha256 ' + self.sha256[:12]}, {self.dim}-d"


def load_policy(session: Session, tenant_id: int, domain: str = "signed") -> TenantPolicy:
    row = session.get(PrivacyPolicyRow, tenant_id)
    if row is None and session.get(Tenant, tenant_id) is None:  # deleted while the request was in flight
        raise Unauthorized("this API key's tenant has been deleted; nothing was stored")
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
        domain=domain,
        pool_tracks=bool(row.pool_tracks),
    )


@dataclass
class GalleryService:
    """Owns the tenant write locks, the noise mechanism and the path from SQL to every replica's FAISS index."""

    engine: Engine
    sessions: sessionmaker[Session]
    indexes: IndexRegistry
    mechanism: GaussianMechanism
    encoder: EncoderIdentity
    change_log_days: float = 7.0
    locks: TenantWriteLocks = field(init=False)
    mismatched: dict[int, EncoderIdentity] = field(default_factory=dict)  # tenants whose gallery another encoder made
    groups: GroupSearch = field(default_factory=GroupSearch)  # grouped search's record cache (app/services/groups.py)
    feature_domain: str = "signed"  # the encoder's: "nonnegative" releases with sensitivity √2·C
    split_sign: bool = False  # features are [f⁺, f⁻]: per-record search compares the signed f⁺ − f⁻ (its cosine)
    track_scorer: TrackScorer | None = None  # noise-aware scoring of grouped search (None: cosine)
    pool_max_crops: int = 16  # most crops in one pooled track release (REID_POOL_MAX_CROPS)

    def __post_init__(self) -> None:
        self.locks = TenantWriteLocks(self.engine)

    @property
    def model_sha256(self) -> str | None:
        return None if self.encoder.sha256 == UNTRAINED else self.encoder.sha256

    # -- the encoder a gallery was made with -----------------------------------------------------
    def check_encoder(self, tenant_id: int) -> None:
        """409 model_mismatch when the tenant's gallery was enrolled with another encoder than the one serving."""
        recorded = self.mismatched.get(tenant_id)
        if recorded is not None:
            raise self._mismatch(tenant_id, recorded)

    def _mismatch(self, tenant_id: int, recorded: EncoderIdentity) -> ModelMismatch:
        return ModelMismatch(
            f"tenant {tenant_id}'s gallery was enrolled with {recorded.describe()}, but this service runs {self.encoder.describe()}: "
            "its stored features cannot be compared with this encoder's. Either serve the matching checkpoint (REID_CHECKPOINT), "
            'or erase the gallery (POST /v1/gallery/erase {"before": "9999-12-31T00:00:00Z"}) and enroll the crops again.',
            details={"recorded": {"checkpoint_sha256": recorded.sha256, "embedding_dim": recorded.dim}},
        )

    def _note_head(self, tenant_id: int, sha: str | None, dim: int | None) -> bool:
        """Record whether the tenant's gallery matches the serving encoder; True when it does (or is empty)."""
        if sha is None or dim is None or (sha == self.encoder.sha256 and dim == self.encoder.dim):
            self.mismatched.pop(tenant_id, None)
            return True
        self.mismatched[tenant_id] = EncoderIdentity(sha, dim)
        return False

    # -- enroll ---------------------------------------------------------------------------
    def precheck_enroll(self, tenant_id: int, items: list[ItemInput]) -> None:
        """Before the encoder pass (refused requests cost no encoding): policy set, encoder matches, budgets left.

        The write transaction checks all of it again (another request may have spent the budget meanwhile)."""
        with self.sessions() as session:
            policy = load_policy(session, tenant_id, self.feature_domain)
            head = session.get(GalleryHead, tenant_id)
            if head is not None and not self._note_head(tenant_id, head.encoder_sha256, head.encoder_dim):
                raise self._mismatch(tenant_id, self.mismatched[tenant_id])
            if policy.has_subject_budget:
                per_release = release_mu_squared(policy.record_policy.parameters())
                requested = _requested(items, plan_releases(items, policy.pools, self.pool_max_crops))
                if requested:
                    rows = session.execute(
                        select(SubjectBudget.subject_ref, SubjectBudget.mu_squared).where(
                            SubjectBudget.tenant_id == tenant_id, SubjectBudget.subject_ref.in_(list(requested))
                        )
                    ).all()
                    spent = {ref: mu for ref, mu in rows}
                    _refuse_over_budget(policy, [(key, spent.get(key, 0.0), units * per_release) for key, (units, _) in requested.items()])

    def enroll(self, tenant_id: int, items: list[ItemInput], features: np.ndarray) -> EnrollResult:
        """Charge budgets, add noise, commit items and their change-log rows, then apply them to this replica's index.

        Crops of one track sent together are one pooled release when the policy says so (``plan_releases``): each of
        them stores the release, and ``release_id`` ties them together so that erasing one erases all."""
        with self.sessions() as session, self.locks.hold(session, tenant_id):
            policy = load_policy(session, tenant_id, self.feature_domain)
            params = policy.record_policy.parameters()
            head = self._head(session, tenant_id)
            if head.encoder_sha256 is not None and (head.encoder_sha256, head.encoder_dim) != (self.encoder.sha256, self.encoder.dim):
                self._note_head(tenant_id, head.encoder_sha256, head.encoder_dim)
                raise self._mismatch(tenant_id, EncoderIdentity(head.encoder_sha256, head.encoder_dim or 0))
            releases = plan_releases(items, policy.pools, self.pool_max_crops)
            max_mu_squared = None
            if policy.has_subject_budget:
                charge_subject_budgets(session, tenant_id, policy, items, release_mu_squared(params), releases)
                max_mu_squared = session.scalar(select(func.max(SubjectBudget.mu_squared)).where(SubjectBudget.tenant_id == tenant_id))
            noisy_np = np.empty(features.shape, dtype=np.float32)
            released_with = [params] * len(items)
            alone = [members[0] for members in releases if len(members) == 1]
            if alone:
                noisy, _ = self.mechanism.release(torch.from_numpy(features[alone]), policy.record_policy)
                noisy_np[alone] = noisy.numpy()
            pools = [members for members in releases if len(members) > 1]
            for members in pools:
                mean, pooled_params = self.mechanism.release_pooled(torch.from_numpy(features[members]), policy.record_policy)
                noisy_np[members] = mean.numpy()
                for i in members:
                    released_with[i] = pooled_params
            features_le = noisy_np.astype("<f4", copy=False)
            rows = [
                {
                    "tenant_id": tenant_id,
                    "camera_id": item.camera_id,
                    "captured_at": item.captured_at,
                    "subject_ref": item.subject_ref,
                    "track_ref": item.track_ref,
                    "external_id": item.external_id,
                    "attributes": item.attributes,
                    "feature": features_le[i].tobytes(),
                    **_noise_columns(released_with[i], self.model_sha256),
                }
                for i, item in enumerate(items)
            ]
            # One multi-row INSERT … RETURNING (no ORM unit of work: a third of the service's per-crop SQL cost).
            ids = np.array(session.scalars(insert(GalleryItem).returning(GalleryItem.id, sort_by_parameter_order=True), rows).all(), dtype=np.int64)
            if pools:  # every member of a pooled release names its first item
                session.execute(update(GalleryItem), [{"id": int(ids[i]), "release_id": int(ids[members[0]])} for members in pools for i in members])
            previous, last = self._log(session, head, "add", ids)
            head.encoder_sha256, head.encoder_dim = self.encoder.sha256, self.encoder.dim
            session.commit()
        self.mismatched.pop(tenant_id, None)
        # SQL is committed: this replica's index follows at once (the others within a poll).
        self._apply_own(tenant_id, previous, last, add_ids=ids, add_features=index_vectors(noisy_np, self.split_sign), remove_ids=[])
        return EnrollResult(
            ids=[int(i) for i in ids],
            params=params,
            max_subject_mu_squared=max_mu_squared,
            pooled=[
                PooledRelease(
                    [int(ids[i]) for i in members], items[members[0]].track_ref or "", items[members[0]].subject_ref, released_with[members[0]]
                )
                for members in pools
            ],
        )

    def _head(self, session: Session, tenant_id: int) -> GalleryHead:
        """The tenant's head row (created on its first write; callers hold the tenant's write lock)."""
        head = session.get(GalleryHead, tenant_id)
        if head is None:
            head = GalleryHead(tenant_id=tenant_id, seq=0, pruned_seq=0)
            session.add(head)
            session.flush()
        return head

    def _log(self, session: Session, head: GalleryHead, op: str, item_ids: np.ndarray | list[int]) -> tuple[int, int]:
        """Append one change per item; returns (the head's previous seq, its new seq)."""
        previous = int(head.seq)
        if len(item_ids) == 0:
            return previous, previous
        now = datetime.now(UTC)
        seqs = session.scalars(
            insert(GalleryChange).returning(GalleryChange.seq, sort_by_parameter_order=True),
            [{"tenant_id": head.tenant_id, "item_id": int(i), "op": op, "at": now} for i in item_ids],
        ).all()
        head.seq = max(previous, *seqs)
        return previous, int(head.seq)

    # -- search ---------------------------------------------------------------------------
    def search(self, tenant_id: int, query: np.ndarray, k: int, filters: SearchFilters) -> list[Hit]:
        """Top-k by cosine; metadata filters are answered by SQL (ids only) and handed to FAISS as an IDSelector, so
        nothing is over-fetched and no feature column is read; hits below ``min_score`` end the list."""
        self.check_encoder(tenant_id)
        index = self.indexes.get(tenant_id)
        if index.size == 0:
            return []
        only_ids = None
        if filters.narrows:
            only_ids = self._matching_ids(tenant_id, filters)
            if only_ids.size == 0:
                return []
        vector = signed_features(query.reshape(1, -1)) if self.split_sign else query.reshape(1, -1)
        scores, ids = index.search(vector, k, only_ids)
        pairs = []
        for item_id, score in zip(ids[0], scores[0], strict=True):
            if item_id < 0 or (filters.min_score is not None and float(score) < filters.min_score):
                break  # scores come sorted: nothing after this qualifies
            pairs.append((int(item_id), float(score)))
        return self._hydrate(tenant_id, pairs)

    def search_groups(self, tenant_id: int, query: np.ndarray, k: int, group_by: GroupBy, filters: SearchFilters) -> tuple[list[GroupHit], Scoring]:
        """Top-k tracks or subjects: each group's released records averaged and scored (app/services/groups.py)."""
        self.check_encoder(tenant_id)
        group_filters = GroupFilters(
            camera_ids=filters.camera_ids,
            captured_from=filters.captured_from,
            captured_to=filters.captured_to,
            min_score=filters.min_score,
            subject_ref=filters.subject_ref,
        )
        return self.groups.search(self.sessions, tenant_id, group_by, query, k, group_filters, scorer=self.track_scorer, split_sign=self.split_sign)

    def _matching_ids(self, tenant_id: int, f: SearchFilters) -> np.ndarray:
        query = select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id)
        if f.camera_ids is not None:
            query = query.where(GalleryItem.camera_id.in_(f.camera_ids))
        if f.subject_ref is not None:
            query = query.where(GalleryItem.subject_ref == f.subject_ref)
        if f.captured_from is not None:
            query = query.where(GalleryItem.captured_at >= f.captured_from)
        if f.captured_to is not None:
            query = query.where(GalleryItem.captured_at <= f.captured_to)
        with self.sessions() as session:
            return np.fromiter(session.scalars(query), dtype=np.int64)

    def _hydrate(self, tenant_id: int, pairs: list[tuple[int, float]]) -> list[Hit]:
        if not pairs:
            return []
        by_id: dict[int, GalleryItem] = {}
        with self.sessions() as session:
            query = (
                select(GalleryItem)
                .options(defer(GalleryItem.feature))
                .where(GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_([i for i, _ in pairs]))
            )
            by_id.update((row.id, row) for row in session.scalars(query))
        return [Hit(by_id[item_id], score) for item_id, score in pairs if item_id in by_id]

    # -- erase ----------------------------------------------------------------------------
    def delete_items(self, tenant_id: int, ids: list[int]) -> int:
        """Delete rows and log them (commit), then remove them from this replica's index; returns rows deleted."""
        if not ids:
            return 0
        with self.sessions() as session, self.locks.hold(session, tenant_id):
            # a pooled release is stored on each of its items and holds every one of them: it goes as a whole
            releases = session.scalars(
                select(GalleryItem.release_id).where(GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(ids), GalleryItem.release_id.is_not(None))
            ).all()
            chosen: ColumnElement[bool] = GalleryItem.id.in_(ids)
            if releases:
                chosen = or_(chosen, GalleryItem.release_id.in_(sorted(set(releases))))
            deleted = list(session.scalars(delete(GalleryItem).where(GalleryItem.tenant_id == tenant_id, chosen).returning(GalleryItem.id)).all())
            if not deleted:
                session.rollback()
                return 0
            head = self._head(session, tenant_id)
            previous, last = self._log(session, head, "del", deleted)
            if session.scalar(select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id).limit(1)) is None:
                head.encoder_sha256 = head.encoder_dim = None  # empty: the next enrollment records the serving encoder
            session.commit()
            emptied = head.encoder_sha256 is None
        if emptied:
            self.mismatched.pop(tenant_id, None)
        no_vectors = np.zeros((0, self.indexes.config.dim), np.float32)
        self._apply_own(tenant_id, previous, last, add_ids=np.zeros(0, np.int64), add_features=no_vectors, remove_ids=deleted)
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
        for start in range(0, len(ids), IN_CHUNK):
            total += self.delete_items(tenant_id, ids[start : start + IN_CHUNK])
        return total

    def purge_expired(self, now: datetime | None = None, *, min_interval_s: float = 0.0) -> dict[int, int]:
        """Retention: erase items captured more than ``retention_days`` ago, per tenant; prune the change log.

        Runs once across replicas: under an advisory lock (a replica that cannot take it skips), and not again within
        ``min_interval_s`` of the last run by any replica."""
        now = now or datetime.now(UTC)
        purged: dict[int, int] = {}
        with run_once_lock(self.engine, LOCK_RETENTION, wait=False) as acquired:
            if not acquired:
                return purged
            with self.sessions() as session:
                job = session.get(ServiceJob, "retention")
                if job is not None and min_interval_s > 0 and (now - job.last_run_at).total_seconds() < min_interval_s:
                    return purged
                tenants = session.execute(select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))).all()
            for tenant_id, days in tenants:
                assert days is not None
                count = self.erase(tenant_id, subject_ref=None, before=now - timedelta(days=days))
                if count:
                    purged[tenant_id] = count
            self.prune_change_log(now - timedelta(days=self.change_log_days))
            with self.sessions() as session:
                job = session.get(ServiceJob, "retention")
                if job is None:
                    session.add(ServiceJob(name="retention", last_run_at=now))
                else:
                    job.last_run_at = now
                session.commit()
        return purged

    def prune_change_log(self, cutoff: datetime) -> None:
        """Drop log rows older than ``cutoff``; a replica whose cursor is behind ``pruned_seq`` rebuilds from SQL."""
        with self.sessions() as session:
            tenant_ids = list(session.scalars(select(GalleryHead.tenant_id)).all())
        for tenant_id in tenant_ids:
            with self.sessions() as session, self.locks.hold(session, tenant_id):
                last = session.scalar(select(func.max(GalleryChange.seq)).where(GalleryChange.tenant_id == tenant_id, GalleryChange.at < cutoff))
                head = session.get(GalleryHead, tenant_id)
                if last is None or head is None:
                    continue
                session.execute(delete(GalleryChange).where(GalleryChange.tenant_id == tenant_id, GalleryChange.seq <= last))
                head.pruned_seq = max(int(head.pruned_seq), int(last))
                session.commit()

    # -- following SQL ----------------------------------------------------------------------
    def _apply_own(self, tenant_id: int, previous: int, last: int, *, add_ids: np.ndarray, add_features: np.ndarray, remove_ids: list[int]) -> None:
        """Apply a change this process just committed: directly when the index is exactly at ``previous``, else by
        catching up from the log (another replica's changes came first)."""
        index = self.indexes.get(tenant_id)
        with index.sync_lock:
            if index.loaded and index.cursor == previous:
                index.apply(add_ids=add_ids, add_features=add_features, remove_ids=remove_ids, cursor=last)
                return
        self.catch_up(tenant_id)

    def follow(self) -> dict[int, str]:
        """One poll: apply every tenant's new changes, drop indexes of deleted tenants; returns what was done."""
        with self.sessions() as session:
            rows = session.execute(
                select(Tenant.id, GalleryHead.seq, GalleryHead.pruned_seq, GalleryHead.encoder_sha256, GalleryHead.encoder_dim).outerjoin(
                    GalleryHead, GalleryHead.tenant_id == Tenant.id
                )
            ).all()
        actions: dict[int, str] = {}
        live = {row[0] for row in rows}
        for tenant_id in self.indexes.tenant_ids():
            if tenant_id not in live:
                self.forget_tenant(tenant_id)
                actions[tenant_id] = "dropped"
        for tenant_id, seq, _pruned, sha, dim in rows:
            if seq is None:
                continue  # never written: nothing to index
            if not self._note_head(tenant_id, sha, dim):
                index = self.indexes.peek(tenant_id)
                if index is not None and index.size:
                    index.replace(index.new_index(), 0)
                    index.loaded = False
                actions[tenant_id] = "encoder mismatch"
                continue
            index = self.indexes.get(tenant_id)
            if not index.loaded or index.cursor < seq:
                actions[tenant_id] = self.catch_up(tenant_id)
        return actions

    def forget_tenant(self, tenant_id: int) -> None:
        self.indexes.drop(tenant_id)
        self.groups.forget(tenant_id)
        self.mismatched.pop(tenant_id, None)

    def catch_up(self, tenant_id: int) -> str:
        """Bring this replica's index of the tenant up to SQL: load the saved file on first use, apply the log after
        its cursor, or rebuild from the items when there is no usable file or the log was pruned past its cursor."""
        index = self.indexes.get(tenant_id)
        with index.sync_lock:
            first = not index.loaded
            action = "caught up"
            if first:
                action = "loaded" if index.load() else "built"
            if action == "built":
                self._rebuild_and_apply(index)
            elif not self._apply_log(index, set()):  # the log was pruned past the cursor (before or while it was read)
                self._rebuild_and_apply(index)
                action = "rebuilt"
            if first:
                index.loaded = True
                if index.size != self.count(tenant_id):  # a file that does not match SQL (or a write raced this check): start over
                    self._rebuild_and_apply(index)
                    action = "rebuilt"
            return action

    def _rebuild_and_apply(self, index: TenantIndex) -> None:
        """Refill from the items, then apply what was logged meanwhile (a rebuild starts at the head, past any prune)."""
        while not self._apply_log(index, self._rebuild(index)):
            pass

    def _rebuild(self, index: TenantIndex) -> set[int]:
        """Refill from the items table; returns the ids loaded (changes logged meanwhile must not add them twice)."""
        tenant_id = index.tenant_id
        with self.sessions() as session:
            head = session.get(GalleryHead, tenant_id)
            start = int(head.seq) if head is not None else 0
        index.replace(index.new_index(), start)
        loaded: set[int] = set()
        last = 0
        while True:
            with self.sessions() as session:
                rows = session.execute(
                    select(GalleryItem.id, GalleryItem.feature)
                    .where(GalleryItem.tenant_id == tenant_id, GalleryItem.id > last)
                    .order_by(GalleryItem.id)
                    .limit(10000)
                ).all()
            if not rows:
                return loaded
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            feats = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
            index.apply(add_ids=ids, add_features=index_vectors(feats, self.split_sign), remove_ids=(), cursor=start)
            loaded.update(int(i) for i in ids)
            last = int(ids[-1])

    def _apply_log(self, index: TenantIndex, skip: set[int]) -> bool:
        """Apply the tenant's changes after the index's cursor, in order (callers hold ``index.sync_lock``); False when
        the log was pruned past the cursor (a prune may commit while the log is read): the index needs a rebuild."""
        tenant_id = index.tenant_id
        while True:
            with self.sessions() as session:
                changes = session.execute(
                    select(GalleryChange.seq, GalleryChange.item_id, GalleryChange.op)
                    .where(GalleryChange.tenant_id == tenant_id, GalleryChange.seq > index.cursor)
                    .order_by(GalleryChange.seq)
                    .limit(IN_CHUNK)
                ).all()
                # read after the log: a prune that removed rows of it had committed, and shows in pruned_seq
                if int(session.scalar(select(GalleryHead.pruned_seq).where(GalleryHead.tenant_id == tenant_id)) or 0) > index.cursor:
                    return False
                if not changes:
                    return True
                removed = {int(item) for _, item, op in changes if op == "del"}
                wanted = [int(item) for _, item, op in changes if op == "add" and int(item) not in removed and int(item) not in skip]
                rows = (
                    session.execute(
                        select(GalleryItem.id, GalleryItem.feature).where(GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(wanted))
                    ).all()
                    if wanted
                    else []
                )
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            if rows:
                vectors = index_vectors(np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]), self.split_sign)
            else:
                vectors = np.zeros((0, index.config.dim), np.float32)
            index.apply(add_ids=ids, add_features=vectors, remove_ids=removed, cursor=int(changes[-1][0]))

    def sync_indexes(self) -> dict[int, str]:
        """Start-up: delete index files of tenants that are gone, then bring every tenant's index up to SQL."""
        with self.sessions() as session:
            tenant_ids = list(session.scalars(select(Tenant.id)).all())
        self.indexes.remove_stray_files(tenant_ids)
        return self.follow()

    def count(self, tenant_id: int) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.tenant_id == tenant_id)) or 0)


def _requested(items: list[ItemInput], releases: list[list[int]]) -> dict[str, tuple[int, int]]:
    """Per budget key: (μ² in units of one record's μ², releases). A release of the mean of n of a subject's crops has
    n times one record's μ for that subject (its noise is n times smaller): n² units; n separate releases are n units."""
    requested: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for members in releases:
        per_key: dict[str, int] = defaultdict(int)
        for i in members:
            key = items[i].budget_key
            if key:
                per_key[key] += 1
        for key, count in per_key.items():
            requested[key][0] += count * count
            requested[key][1] += 1
    return {key: (units, count) for key, (units, count) in requested.items()}


def _refuse_over_budget(policy: TenantPolicy, charges: list[tuple[str, float, float]]) -> None:
    """Raise if any (subject, spent μ², requested μ²) would pass the subject budget."""
    limit = policy.subject_mu_budget()
    checks = [BudgetCheck(key, spent, requested, limit) for key, spent, requested in charges]
    refused = [check.as_dict(policy.subject_delta or policy.delta) for check in checks if not check.allowed]
    if refused:
        raise PrivacyBudgetExceeded(
            f"enrollment would exceed the per-subject privacy budget for {len(refused)} subject(s); nothing was stored",
            details={"subjects": refused},
        )


def charge_subject_budgets(
    session: Session, tenant_id: int, policy: TenantPolicy, items: list[ItemInput], per_release: float, releases: list[list[int]]
) -> None:
    """Charge μ² per release in one atomic statement (INSERT … ON CONFLICT DO UPDATE … RETURNING) and check the totals
    it returns in the same transaction: over budget raises, and the caller's rollback undoes the charge. ``per_release``
    is one record's μ²; ``releases`` groups items into releases (``plan_releases``)."""
    requested = _requested(items, releases)
    if not requested:
        return
    if math.isinf(per_release):  # no noise: no finite budget can pay for it
        _refuse_over_budget(policy, [(key, 0.0, math.inf) for key in requested])
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    now = datetime.now(UTC)
    stmt = upsert(SubjectBudget).values(
        [
            {"tenant_id": tenant_id, "subject_ref": key, "mu_squared": units * per_release, "releases": count, "updated_at": now}
            for key, (units, count) in requested.items()
        ]
    )
    statement = stmt.on_conflict_do_update(
        index_elements=[SubjectBudget.tenant_id, SubjectBudget.subject_ref],
        set_={
            "mu_squared": SubjectBudget.mu_squared + stmt.excluded.mu_squared,
            "releases": SubjectBudget.releases + stmt.excluded.releases,
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(SubjectBudget.subject_ref, SubjectBudget.mu_squared)
    totals = {ref: float(total) for ref, total in session.execute(statement).all()}
    charges = [(key, totals[key] - units * per_release, units * per_release) for key, (units, _) in requested.items()]
    _refuse_over_budget(policy, charges)


def _noise_columns(params: NoiseParameters, model_sha256: str | None) -> dict[str, Any]:
    """The noise columns of a record released with ``params``."""
    return {
        "mechanism": params.mechanism,
        "epsilon": None if math.isinf(params.epsilon) else params.epsilon,
        "delta": params.delta,
        "sensitivity": params.sensitivity,
        "sigma": params.sigma,
        "clip_norm": params.clip_norm,
        "noise_library": params.library,
        "model_sha256": model_sha256,
        "pooled": params.pooled,
    }


def index_vectors(noisy: np.ndarray, split_sign: bool = False) -> np.ndarray:
    """Index holds unit-length copies of the noisy features (post-processing): scores are cosines. For split-sign
    encoders it holds their signed form f⁺ − f⁻ (half the coordinates), which queries compare with their own f."""
    if split_sign:
        noisy = signed_features(noisy)
    norms = np.linalg.norm(noisy, axis=1, keepdims=True)
    return (noisy / np.maximum(norms, 1e-12)).astype(np.float32)
