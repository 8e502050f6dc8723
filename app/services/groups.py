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
_LOG_LIMIT = 50_000  # more of the tenant's changes than this since the last sync: read the ids instead of the log


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
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # each record's group: an index into ``names``
    names: list[str] = field(default_factory=list)  # group keys by code (append-only between compactions)
    code_of: dict[str, int] = field(default_factory=dict)
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    cameras: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # µs since the epoch
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # each record's noise σ
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # min(1, C): a unit feature's norm after clipping
    features: np.ndarray | None = None  # [N, D] float32, the released (noisy) features as stored
    version: int = 0  # bumped whenever the arrays change
    synced_seq: int | None = None  # the tenant's change-log head when the arrays last matched SQL
    grouped: tuple[int, TrackScorer | None, bool, Grouped] | None = None  # all records grouped, with what it was built from
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the arrays (sync and snapshot)
    build_lock: threading.Lock = field(default_factory=threading.Lock)  # guards ``grouped`` (its build and replacement)

    def sync(self, session: Session, tenant_id: int, group_by: GroupBy) -> None:
        """Make the arrays hold exactly SQL's records of this tenant that have a ``group_by`` key.

        Every write to a tenant's items appends to its change log and moves its head's ``seq`` in the same transaction
        (tenant ids are never reused), so an unchanged ``seq`` means unchanged records (one primary-key read), and the
        log since the last sync says what changed. Without a usable log (first use, a head that went backwards, a log
        pruned past the last sync, even while it was being read, or more than ``_LOG_LIMIT`` changes) the tenant's
        grouped ids are read instead."""
        seq, pruned = self._head(session, tenant_id)
        if seq is not None and seq == self.synced_seq:
            return
        changes = None
        if seq is not None and self.synced_seq is not None and self.synced_seq < seq and pruned <= self.synced_seq:
            # the changes after the last sync, up to the head read above (written in the same transactions as it)
            changes = session.execute(
                select(GalleryChange.item_id, GalleryChange.op)
                .where(GalleryChange.tenant_id == tenant_id, GalleryChange.seq > self.synced_seq, GalleryChange.seq <= seq)
                .limit(_LOG_LIMIT + 1)
            ).all()
            # a prune that committed before the log was read has removed rows of it: then its pruned_seq shows it
            if len(changes) > _LOG_LIMIT or self._head(session, tenant_id)[1] > self.synced_seq:
                changes = None
        if changes is None:
            column = getattr(GalleryItem, group_by)
            current = np.array(
                session.scalars(select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id, column.is_not(None))).all(), dtype=np.int64
            )
            self._drop(~np.isin(self.ids, current))
            self._load(session, tenant_id, group_by, np.setdiff1d(current, self.ids, assume_unique=True))
        else:
            removed = np.array([item for item, op in changes if op == "del"], dtype=np.int64)
            added = np.array([item for item, op in changes if op == "add"], dtype=np.int64)
            self._drop(np.isin(self.ids, removed))
            self._load(session, tenant_id, group_by, np.setdiff1d(added, np.concatenate([self.ids, removed])))
        self.synced_seq = seq  # read before the records: a write in between only means one more sync

    @staticmethod
    def _head(session: Session, tenant_id: int) -> tuple[int | None, int]:
        """The tenant's change-log head: (seq, pruned_seq); (None, 0) before its first write."""
        head = session.execute(select(GalleryHead.seq, GalleryHead.pruned_seq).where(GalleryHead.tenant_id == tenant_id)).first()
        return (int(head[0]), int(head[1])) if head is not None else (None, 0)

    def _code(self, key: str) -> int:
        code = self.code_of.get(key)
        if code is None:
            code = self.code_of[key] = len(self.names)
            self.names.append(key)
        return code

    def _drop(self, gone: np.ndarray) -> None:
        if not gone.any():
            return
        keep = ~gone
        self.ids, self.codes, self.subjects = self.ids[keep], self.codes[keep], self.subjects[keep]
        self.cameras, self.times, self.sigmas, self.scales = self.cameras[keep], self.times[keep], self.sigmas[keep], self.scales[keep]
        self.features = None if self.features is None or not keep.any() else self.features[keep]
        self.version += 1
        live = np.unique(self.codes)
        if len(self.names) > 2 * live.size + 1024:  # renumber once most codes belong to groups that are gone
            renumber = np.full(len(self.names), -1, dtype=np.int64)
            renumber[live] = np.arange(live.size)
            names = [self.names[int(c)] for c in live]
            self.codes, self.names, self.code_of = renumber[self.codes], names, {name: i for i, name in enumerate(names)}

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
        codes = np.concatenate([self.codes, np.array([self._code(str(r[1])) for r in rows], dtype=np.int64)])
        subjects = np.concatenate([self.subjects, np.array([r[2] for r in rows], dtype=object)])
        cameras = np.concatenate([self.cameras, np.array([r[3] for r in rows], dtype=object)])
        times = np.concatenate([self.times, np.array([_micros(r[4]) for r in rows], dtype=np.int64)])
        sigmas = np.concatenate([self.sigmas, np.array([r[6] for r in rows], dtype=np.float64)])
        scales = np.concatenate([self.scales, np.minimum(1.0, np.array([r[7] for r in rows], dtype=np.float64))])
        all_features = features if self.features is None else np.concatenate([self.features, features])
        self.ids, self.codes, self.subjects, self.cameras, self.times, self.sigmas = ids, codes, subjects, cameras, times, sigmas
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
            ids, codes, subjects, cameras, times, features = entry.ids, entry.codes, entry.subjects, entry.cameras, entry.times, entry.features
            sigmas, scales, version, names = entry.sigmas, entry.scales, entry.version, entry.names
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
            stale: Grouped | None = None
            with entry.build_lock:  # one build per change: concurrent searches wait for it and share it
                cached = entry.grouped
                same_kind = cached is not None and cached[1] is used and cached[2] == split_sign
                if cached is not None and same_kind and cached[0] == version:
                    grouped = cached[3]
                elif cached is not None and same_kind and cached[0] > version:
                    stale = cached[3]  # this search's snapshot is older than the cached grouping: built below, not kept
                else:  # the previous grouping's prepared tracks are reused for groups whose records did not change
                    previous = cached[3] if cached is not None and same_kind else None
                    grouped = Grouped.of(codes, names, features, sigmas, scales, used, split_sign, previous=previous)
                    entry.grouped = (version, used, split_sign, grouped)
            if stale is not None:
                grouped = Grouped.of(codes, names, features, sigmas, scales, used, split_sign, previous=stale)
        else:
            ids, codes, cameras, times = ids[mask], codes[mask], cameras[mask], times[mask]
            grouped = Grouped.of(codes, names, features[mask], sigmas[mask], scales[mask], scorer if likelihood else None, split_sign)
        scores = grouped.scores(np.asarray(query, dtype=np.float64).reshape(-1))
        group_names = grouped.names
        candidates = np.arange(len(group_names))
        if filters.min_score is not None:
            candidates = candidates[scores >= filters.min_score]
        if candidates.size > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        # best first; ties by group key for a stable answer
        ranked = sorted(candidates.tolist(), key=lambda g: (-scores[g], group_names[g]))
        hits = []
        for g in ranked:
            members = np.flatnonzero(grouped.group_of == g)
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

    names: np.ndarray  # [G] group keys
    group_of: np.ndarray  # [N] each record's group
    live: np.ndarray  # [G] each group's code (sorted)
    prepared: PreparedTracks | None  # likelihood scoring
    centroids: np.ndarray | None  # [G, D] cosine scoring: unit means (signed form for split-sign features)
    split_sign: bool
    track_sums: np.ndarray | None = None  # likelihood: [G, D] what each prepared row was computed from, with
    track_counts: np.ndarray | None = None  # the counts and noise variances (a later grouping reuses equal rows)
    track_noise: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        codes: np.ndarray,
        names: list[str],
        features: np.ndarray,
        sigmas: np.ndarray,
        scales: np.ndarray,
        scorer: TrackScorer | None,
        split_sign: bool,
        previous: Grouped | None = None,
    ) -> Grouped:
        """Group records by their ``codes`` (indices into ``names``); with a ``scorer``, features (and σ) are first
        rescaled by ``scales``: the scorer's model is of unit features, so a clipping norm C < 1 is undone.

        A prepared track depends only on its mean and noise variance, so rows of ``previous`` (an earlier grouping with
        the same scorer) whose sums, counts and noise are equal are copied instead of computed again."""
        from scipy.sparse import csr_matrix

        live, group_of = np.unique(codes, return_inverse=True)
        group_names = np.array([names[int(c)] for c in live], dtype=object)
        if scorer is not None:
            features, sigmas = features / scales[:, None], sigmas / scales
        else:
            features = features.astype(np.float64)
        membership = csr_matrix((np.ones(codes.size), (group_of, np.arange(codes.size))), shape=(live.size, codes.size))
        sums = np.asarray(membership @ features)
        if scorer is not None:
            counts = np.bincount(group_of, minlength=live.size).astype(np.float64)
            noise = track_noise_variance(sigmas, group_of, live.size)
            prepared = _prepare_reusing(scorer, live, sums, counts, noise, previous)
            return cls(group_names, group_of, live, prepared, None, split_sign, sums, counts, noise)
        if split_sign:  # compare the signed features f = f⁺ − f⁻ (the split is for the noise, not for the cosine)
            sums = signed_features(sums)
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return cls(group_names, group_of, live, None, centroids, split_sign)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """One score per group for a clean query (float64)."""
        if self.prepared is not None:
            return self.prepared.scores(query)[0].astype(np.float64)
        assert self.centroids is not None
        if self.split_sign:
            query = signed_features(query)
        return self.centroids @ (query / max(float(np.linalg.norm(query)), 1e-12))


def _prepare_reusing(
    scorer: TrackScorer, live: np.ndarray, sums: np.ndarray, counts: np.ndarray, noise: np.ndarray, previous: Grouped | None
) -> PreparedTracks:
    """``scorer.prepare`` of every group's mean (float32), copying the rows of ``previous`` whose inputs are equal."""
    reuse = np.zeros(live.size, dtype=bool)
    source = np.zeros(live.size, dtype=np.int64)
    old = previous.prepared if previous is not None else None
    if previous is not None and old is not None and previous.track_sums is not None and previous.live.size:
        assert previous.track_counts is not None and previous.track_noise is not None
        source = np.minimum(np.searchsorted(previous.live, live), previous.live.size - 1)
        reuse = (previous.live[source] == live) & (previous.track_counts[source] == counts) & (previous.track_noise[source] == noise)
        reuse[reuse] &= (previous.track_sums[source[reuse]] == sums[reuse]).all(axis=1)
    fresh = ~reuse
    computed = scorer.prepare(sums[fresh] / counts[fresh, None], noise[fresh], dtype=np.float32)
    if old is None or not reuse.any():
        return computed
    weighted = np.empty((live.size, computed.weighted.shape[1]), dtype=np.float32)
    inverse_variance = np.empty_like(weighted)
    offset = np.empty(live.size, dtype=np.float32)
    for target, new_rows, old_rows in (
        (weighted, computed.weighted, old.weighted),
        (inverse_variance, computed.inverse_variance, old.inverse_variance),
        (offset, computed.offset, old.offset),
    ):
        target[fresh], target[reuse] = new_rows, old_rows[source[reuse]]
    return PreparedTracks(computed.mean, computed.expectation, weighted, inverse_variance, offset)
