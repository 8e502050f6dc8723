"""Grouped search (``group_by=track_ref|subject_ref``): hits are tracks or subjects, not single records.

The released (noisy) features of one group's records are averaged. With the encoder's noise-aware scorer
(``models.evaluation.likelihood``, fitted on the public training split) and noisy records, a query's score against a
group is the log-likelihood ratio "same person vs someone else" given the mean and its noise variance (Σσᵢ²/n² from
the records' stored σ); otherwise (no scorer, or no noisy grouped record in the tenant) it is the cosine to the normalised
mean (of the signed features, for split-sign encoders). Averaging released records and scoring them is
post-processing: it costs no privacy, and the noise in a mean of n records has 1/√n of a record's standard deviation
(``models/evaluation/tracks.py`` is the offline counterpart). Filters (cameras, capture time, subject) select the records that go into each centroid;
``min_score`` applies to the group's score. A group none of whose records pass the filters is not a hit.

SQL stays the truth: every search reads the tenant's change-log head (one row); when it has moved since the cache was
filled, the search reads the log since then (or, without a usable log, the ids of the tenant's grouped records), drops
cached records that are gone (erasures, retention, other replicas' deletions) and loads the rows it has not seen
(records never change once written, so a cached row is valid while its id exists). Only new rows are read.
A search without record filters reuses the tenant's grouping (group sums, and the scorer's query-free track terms)
until a sync changes the records; filtered searches group the records they keep on each call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import GalleryChange, GalleryHead, GalleryItem
from models.evaluation.likelihood import PreparedTracks, TrackScorer, signed_features, track_noise_variance

GroupBy = Literal["track_ref", "subject_ref"]
GROUP_KEYS: tuple[GroupBy, ...] = ("track_ref", "subject_ref")
_CHUNK = 5000  # keep IN lists within every backend's parameter limit
_LOG_LIMIT = 50_000  # more changes than this since the last sync: read the ids instead of the log


@dataclass(frozen=True)
class GroupFilters:
    camera_ids: list[str] | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    min_score: float | None = None
    subject_ref: str | None = None


Scoring = Literal["likelihood", "cosine"]


@dataclass(frozen=True)
class GroupHit:
    key: str
    score: float
    item_ids: list[int]
    cameras: list[str]
    first_seen: datetime
    last_seen: datetime


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    """Microseconds since the epoch (exact); SQLite hands back naive datetimes, which are UTC here."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return (aware - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


@dataclass
class _Records:
    """A tenant's grouped records (one grouping): parallel arrays, in no particular order."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    cameras: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # µs since the epoch
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # each record's noise σ
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # min(1, C): a unit feature's norm after clipping
    features: np.ndarray | None = None  # [N, D] float32, the released (noisy) features as stored
    version: int = 0  # bumped whenever the arrays change
    synced_seq: int | None = None  # the tenant's change-log head when the arrays last matched SQL
    grouped: tuple[int, TrackScorer | None, bool, Grouped] | None = None  # all records grouped, with what it was built from
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, session: Session, tenant_id: int, group_by: GroupBy) -> None:
        """Make the arrays hold exactly SQL's records of this tenant that have a ``group_by`` key.

        Every write to a tenant's items appends to its change log and moves its head's ``seq`` in the same transaction
        (tenant ids are never reused), so an unchanged ``seq`` means unchanged records (one primary-key read), and the
        log since the last sync says what changed. Without a usable log (first use, pruned past it, too long) the
        tenant's grouped ids are read instead."""
        head = session.execute(select(GalleryHead.seq, GalleryHead.pruned_seq).where(GalleryHead.tenant_id == tenant_id)).first()
        seq, pruned = (int(head[0]), int(head[1])) if head is not None else (None, 0)
        if seq is not None and seq == self.synced_seq:
            return
        if seq is None or self.synced_seq is None or pruned > self.synced_seq or seq - self.synced_seq > _LOG_LIMIT:
            column = getattr(GalleryItem, group_by)
            current = np.array(
                session.scalars(select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id, column.is_not(None))).all(), dtype=np.int64
            )
            self._drop(~np.isin(self.ids, current))
            self._load(session, tenant_id, group_by, np.setdiff1d(current, self.ids, assume_unique=True))
        else:  # the changes after the last sync, up to the head read above (written in the same transactions as it)
            changes = session.execute(
                select(GalleryChange.item_id, GalleryChange.op).where(
                    GalleryChange.tenant_id == tenant_id, GalleryChange.seq > self.synced_seq, GalleryChange.seq <= seq
                )
            ).all()
            removed = np.array([item for item, op in changes if op == "del"], dtype=np.int64)
            added = np.array([item for item, op in changes if op == "add"], dtype=np.int64)
            self._drop(np.isin(self.ids, removed))
            self._load(session, tenant_id, group_by, np.setdiff1d(added, np.concatenate([self.ids, removed])))
        self.synced_seq = seq  # read before the records: a write in between only means one more sync

    def _drop(self, gone: np.ndarray) -> None:
        if not gone.any():
            return
        keep = ~gone
        self.ids, self.keys, self.subjects = self.ids[keep], self.keys[keep], self.subjects[keep]
        self.cameras, self.times, self.sigmas, self.scales = self.cameras[keep], self.times[keep], self.sigmas[keep], self.scales[keep]
        self.features = None if self.features is None or not keep.any() else self.features[keep]
        self.version += 1

    def _load(self, session: Session, tenant_id: int, group_by: GroupBy, item_ids: np.ndarray) -> None:
        """Append the rows of ``item_ids`` that exist and have a ``group_by`` key."""
        if item_ids.size == 0:
            return
        column = getattr(GalleryItem, group_by)
        columns = (
            GalleryItem.id,
            column,
            GalleryItem.subject_ref,
            GalleryItem.camera_id,
            GalleryItem.captured_at,
            GalleryItem.feature,
            GalleryItem.sigma,
            GalleryItem.clip_norm,
        )
        rows: list[Any] = []
        for start in range(0, item_ids.size, _CHUNK):
            chunk = [int(i) for i in item_ids[start : start + _CHUNK]]
            where = (GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(chunk), column.is_not(None))
            rows.extend(session.execute(select(*columns).where(*where)).all())
        if not rows:
            return
        features = np.stack([np.frombuffer(r[5], dtype="<f4") for r in rows]).astype(np.float32)
        if self.features is not None and self.features.shape[1] != features.shape[1]:
            raise ValueError("records of different embedding sizes in one gallery")
        # every new array is built before any is assigned, so a failure leaves the cache as it was (aligned)
        ids = np.concatenate([self.ids, np.array([r[0] for r in rows], dtype=np.int64)])
        keys = np.concatenate([self.keys, np.array([r[1] for r in rows], dtype=object)])
        subjects = np.concatenate([self.subjects, np.array([r[2] for r in rows], dtype=object)])
        cameras = np.concatenate([self.cameras, np.array([r[3] for r in rows], dtype=object)])
        times = np.concatenate([self.times, np.array([_micros(r[4]) for r in rows], dtype=np.int64)])
        sigmas = np.concatenate([self.sigmas, np.array([r[6] for r in rows], dtype=np.float64)])
        scales = np.concatenate([self.scales, np.minimum(1.0, np.array([r[7] for r in rows], dtype=np.float64))])
        all_features = features if self.features is None else np.concatenate([self.features, features])
        self.ids, self.keys, self.subjects, self.cameras, self.times, self.sigmas = ids, keys, subjects, cameras, times, sigmas
        self.scales = scales
        self.features = all_features
        self.version += 1


@dataclass
class GroupSearch:
    """Per-tenant, per-grouping record caches and the grouped search over them (blocking; run in a worker thread)."""

    _records: dict[tuple[int, str], _Records] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def _entry(self, tenant_id: int, group_by: GroupBy) -> _Records:
        with self._guard:
            return self._records.setdefault((tenant_id, group_by), _Records())

    def forget(self, tenant_id: int) -> None:
        with self._guard:
            for key in [k for k in self._records if k[0] == tenant_id]:
                del self._records[key]

    def search(
        self,
        sessions: sessionmaker[Session],
        tenant_id: int,
        group_by: GroupBy,
        query: np.ndarray,
        k: int,
        filters: GroupFilters,
        *,
        scorer: TrackScorer | None = None,
        split_sign: bool = False,
    ) -> tuple[list[GroupHit], Scoring]:
        """Top-k groups and how they were scored: by the scorer's likelihood ratio when there is one and the tenant's
        grouped records include noisy ones (whatever the filters keep, so a tenant's scores keep one scale), else cosine."""
        if group_by not in GROUP_KEYS:
            raise ValueError(f"group_by must be one of {GROUP_KEYS}")
        entry = self._entry(tenant_id, group_by)
        with entry.lock:
            with sessions() as session:
                entry.sync(session, tenant_id, group_by)
            ids, keys, subjects, cameras, times, features = entry.ids, entry.keys, entry.subjects, entry.cameras, entry.times, entry.features
            sigmas, scales, version = entry.sigmas, entry.scales, entry.version
        # the scorer's dimension was checked at start-up (app.main.track_scorer_for)
        scoring: Scoring = "likelihood" if scorer is not None and (sigmas > 0).any() else "cosine"
        if features is None or ids.size == 0:
            return [], scoring
        mask = np.ones(ids.size, dtype=bool)
        if filters.camera_ids is not None:
            mask &= np.isin(cameras, np.array(filters.camera_ids, dtype=object))
        if filters.subject_ref is not None:
            mask &= subjects == filters.subject_ref
        if filters.captured_from is not None:
            mask &= times >= _micros(filters.captured_from)
        if filters.captured_to is not None:
            mask &= times <= _micros(filters.captured_to)
        if not mask.any():
            return [], scoring
        likelihood = scoring == "likelihood"
        if mask.all():  # no record filter: the tenant's grouping is reused until its records change
            used = scorer if likelihood else None
            cached = entry.grouped
            if cached is not None and cached[0] == version and cached[1] is used and cached[2] == split_sign:
                grouped = cached[3]
            else:
                grouped = Grouped.of(keys, features, sigmas, scales, used, split_sign)
                entry.grouped = (version, used, split_sign, grouped)
        else:
            ids, keys, cameras, times = ids[mask], keys[mask], cameras[mask], times[mask]
            grouped = Grouped.of(keys, features[mask], sigmas[mask], scales[mask], scorer if likelihood else None, split_sign)
        scores = grouped.scores(np.asarray(query, dtype=np.float64).reshape(-1))
        group_names, order, starts = grouped.names, grouped.order, grouped.starts
        candidates = np.arange(len(group_names))
        if filters.min_score is not None:
            candidates = candidates[scores >= filters.min_score]
        if candidates.size > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        # best first; ties by group key for a stable answer
        ranked = sorted(candidates.tolist(), key=lambda g: (-scores[g], group_names[g]))
        bounds = np.r_[starts, order.size]
        hits = []
        for g in ranked:
            members = order[bounds[g] : bounds[g + 1]]
            member_times = times[members]
            hits.append(
                GroupHit(
                    key=str(group_names[g]),
                    score=float(scores[g]),
                    item_ids=sorted(int(i) for i in ids[members]),
                    cameras=sorted({str(c) for c in cameras[members]}),
                    first_seen=_from_micros(member_times.min()),
                    last_seen=_from_micros(member_times.max()),
                )
            )
        return hits, scoring


@dataclass(frozen=True)
class Grouped:
    """Records grouped by key and ready to score: the track side of the scorer, or the normalised centroids."""

    names: np.ndarray  # [G] group keys, sorted
    order: np.ndarray  # record indices sorted by group
    starts: np.ndarray  # [G] where each group begins in ``order``
    prepared: PreparedTracks | None  # likelihood scoring
    centroids: np.ndarray | None  # [G, D] cosine scoring: unit means (signed form for split-sign features)
    split_sign: bool

    @classmethod
    def of(
        cls, keys: np.ndarray, features: np.ndarray, sigmas: np.ndarray, scales: np.ndarray, scorer: TrackScorer | None, split_sign: bool
    ) -> Grouped:
        """Group records by ``keys``; with a ``scorer``, features (and σ) are first rescaled by ``scales``: the
        scorer's model is of unit features, so a clipping norm C < 1 is undone."""
        names, inverse = np.unique(keys.astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        if scorer is not None:
            features, sigmas = features / scales[:, None], sigmas / scales
        sums = np.add.reduceat(features[order].astype(np.float64), starts, axis=0)
        if scorer is not None:
            counts = np.bincount(inverse, minlength=len(names)).astype(np.float64)
            prepared = scorer.prepare(sums / counts[:, None], track_noise_variance(sigmas, inverse, len(names)), dtype=np.float32)
            return cls(names, order, starts, prepared, None, split_sign)
        if split_sign:  # compare the signed features f = f⁺ − f⁻ (the split is for the noise, not for the cosine)
            sums = signed_features(sums)
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return cls(names, order, starts, None, centroids, split_sign)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """One score per group for a clean query (float64)."""
        if self.prepared is not None:
            return self.prepared.scores(query)[0].astype(np.float64)
        assert self.centroids is not None
        if self.split_sign:
            query = signed_features(query)
        return self.centroids @ (query / max(float(np.linalg.norm(query)), 1e-12))
