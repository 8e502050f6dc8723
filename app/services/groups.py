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

The cache is incremental: records live in growable arrays (a dropped record is marked dead until the arrays are
compacted), each group knows its records, and the scoring rows of each group (the scorer's query-free track terms, or
the normalised centroid) are kept per group and recomputed only for the groups whose records changed. A search after
a write therefore costs the changed groups plus one pass of scoring, not a regrouping of the tenant. Filtered searches
group the records they keep on each call. One tenant's grouped searches (per grouping) run one at a time in a process;
other tenants' run beside them.

Replicas answer alike: the cached float32 rows only rank the groups; every group within a margin of the k-th score is
rescored in float64 from its exact (integer) sum, one group at a time, and those scores decide and are returned. So a
warm cache with dead rows and a cold one, or two replicas, give the same hits and the same score bits for the same
query feature.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import GalleryChange, GalleryHead, GalleryItem
from models.evaluation.likelihood import TrackScorer, signed_features, track_noise_variance

GroupBy = Literal["track_ref", "subject_ref"]
GROUP_KEYS: tuple[GroupBy, ...] = ("track_ref", "subject_ref")
_CHUNK = 5000  # keep IN lists within every backend's parameter limit
_LOG_LIMIT = 50_000  # more of the tenant's changes than this since the last sync: read the ids instead of the log
_GROWTH = 1.5  # capacity factor of the record and group arrays


@dataclass(frozen=True)
class GroupFilters:
    camera_ids: list[str] | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    min_score: float | None = None
    subject_ref: str | None = None

    @property
    def selects_records(self) -> bool:
        return self.camera_ids is not None or self.captured_from is not None or self.captured_to is not None or self.subject_ref is not None


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


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    """``array`` with room for at least ``needed`` rows (the same array when it has it)."""
    if array.shape[0] >= needed:
        return array
    grown = np.zeros((max(needed, int(array.shape[0] * _GROWTH) + 16), *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class _Scoring:
    """Per-group scoring rows for one way of scoring (a scorer's likelihood ratio, or cosine), indexed by group code.

    Rows are recomputed for the ``dirty`` codes only; a code whose group is empty is not ``valid``."""

    def __init__(self, scorer: TrackScorer | None, split_sign: bool) -> None:
        self.scorer, self.split_sign = scorer, split_sign
        self.dirty: set[int] = set()
        self.all_dirty = True  # every code: a new table, or codes renumbered
        self.valid = np.zeros(0, dtype=bool)  # by code, for the first ``count`` codes: the group has records
        self.count = 0
        self.rows: dict[str, np.ndarray] = {}  # by code (``_GroupSums.rows``): likelihood weighted, inverse_variance, offset; cosine centroids
        self.large: dict[int, tuple[np.ndarray, float, float]] = {}  # by code, groups of ≥ KEPT_SUM_MIN records: exact sum, count, noise var
        self.rows_computed = 0  # groups prepared so far (tests check that unchanged groups are not recomputed)

    def refresh(self, records: _Records) -> None:
        """Recompute the rows of the groups that changed since the last refresh."""
        codes = len(records.names)
        if self.all_dirty:
            todo = np.arange(codes, dtype=np.int64)
            self.valid = np.zeros(codes, dtype=bool)
            self.rows, self.large = {}, {}
        elif self.dirty:
            todo = np.fromiter(self.dirty, dtype=np.int64, count=len(self.dirty))
            self.valid = _grown(self.valid, codes)
        else:
            return
        self.dirty.clear()
        self.all_dirty = False
        self.count = codes
        todo.sort()
        counts = records.group_sizes(todo)
        self.valid[todo] = counts > 0
        for code in todo.tolist():
            self.large.pop(code, None)
        for kept in self.rows.values():  # a group left empty keeps no trace of its erased records
            kept[todo[(counts == 0) & (todo < kept.shape[0])]] = 0
        todo, counts = todo[counts > 0], counts[counts > 0]
        if todo.size == 0:
            return
        sums = records.sums_of(todo, self.scorer is not None)
        for i in np.flatnonzero(counts >= KEPT_SUM_MIN).tolist():
            self.large[int(todo[i])] = (sums.sums[i].copy(), float(sums.counts[i]), float(sums.noise_var[i]))
        new = sums.rows(self.scorer, self.split_sign)
        for name, values in new.items():
            table = self.rows.get(name)
            if table is None:
                table = np.zeros((max(codes, 1), *values.shape[1:]), dtype=values.dtype)
            self.rows[name] = table = _grown(table, codes)
            table[todo] = values
        self.rows_computed += int(todo.size)

    def live_codes(self) -> np.ndarray:
        return np.flatnonzero(self.valid[: self.count])

    def exact_sums(self, records: _Records, codes: np.ndarray) -> _GroupSums:
        """``_GroupSums`` of the groups ``codes`` (ascending): large groups' kept sums, the others summed now."""
        kept = np.array([c in self.large for c in codes.tolist()], dtype=bool)
        summed = records.sums_of(codes[~kept], self.scorer is not None)
        if not kept.any():
            return summed
        sums, counts, noise_var = np.empty((codes.size, summed.sums.shape[1])), np.empty(codes.size), np.empty(codes.size)
        sums[~kept], counts[~kept], noise_var[~kept] = summed.sums, summed.counts, summed.noise_var
        for i in np.flatnonzero(kept).tolist():
            sums[i], counts[i], noise_var[i] = self.large[int(codes[i])]
        return _GroupSums(sums, counts, noise_var)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """One score per group code below ``count`` (meaningless where not ``valid``)."""
        return _group_scores({name: rows[: self.count] for name, rows in self.rows.items()}, self.scorer, self.split_sign, query)


GATHER_CHUNK = 32_768  # records gathered at a time: summing a large selection never copies all of its features at once
PREPARE_CHUNK = 4_096  # groups prepared for the scorer at a time (its temporaries are float64 [groups, D] arrays)
SHORTLIST_TOLERANCE = 1e-3  # relative to 1 + |score|: float32 rows are within a few millionths of float64
SHORTLIST_EXTRA = 1024  # groups rescored beyond k at most
FIXED_POINT = 2.0**30  # group sums are exact integer sums at this resolution: the same bits in any order of the records
KEPT_SUM_MIN = 32  # groups of at least this many records keep their exact sum for rescoring (smaller ones are re-summed)


@dataclass(frozen=True)
class _GroupSums:
    """What a set of groups' scoring rows are made of: each group's feature sum (features first divided by their
    ``scales`` when a scorer will read them), record count and the per-coordinate noise variance of its mean.

    Sums are integer sums of the features rounded to ``FIXED_POINT`` (2⁻³⁰ ≈ 1e-9, far below any score's precision):
    one int64 sum where no overflow is possible, else the high and low 32 bits of each value summed apart and put back
    together exactly. A group's sum then has the same bits however its records were loaded, chunked or grouped with
    others: two replicas (or a warm and a cold cache) holding the same records score them alike."""

    sums: np.ndarray  # [G, D] float64
    counts: np.ndarray  # [G]
    noise_var: np.ndarray  # [G]: Σ(σ/scale)²/n² (with a scorer), else unused

    @classmethod
    def of(
        cls,
        features: np.ndarray,
        rows: np.ndarray,
        group_of: np.ndarray,
        groups: int,
        sigmas: np.ndarray,
        scales: np.ndarray,
        rescale: bool,
        largest: float | None = None,
    ) -> _GroupSums:
        """Sums of ``features[rows[i]]`` into group ``group_of[i]``, gathered ``GATHER_CHUNK`` rows at a time;
        ``sigmas``/``scales`` are those of the selected records, ``largest`` bounds every |feature / scale| among them
        (computed from them when not given)."""
        from scipy.sparse import csr_matrix

        if largest is None:
            largest = float(np.abs(features[rows]).max(initial=0.0)) / float(scales.min(initial=1.0))
        dim = features.shape[1]
        exact = largest < 2.0**32  # else (absurd settings only) float sums, whose last bits depend on the order
        split = exact and largest * FIXED_POINT * rows.size >= 2.0**62  # one int64 sum could overflow: halves
        whole = np.zeros((groups, dim), dtype=np.int64 if exact else np.float64)  # Σ v, or Σ (v mod 2³²) when split
        high = np.zeros((groups, dim), dtype=np.int64) if split else None  # Σ ⌊v / 2³²⌋ when split
        for start in range(0, rows.size, GATHER_CHUNK):
            part = slice(start, start + GATHER_CHUNK)
            gathered = features[rows[part]].astype(np.float64)
            if rescale:
                gathered /= scales[part, None]
            n = gathered.shape[0]
            members = csr_matrix((np.ones(n, dtype=np.int64), (group_of[part], np.arange(n))), shape=(groups, n))
            if not exact:
                whole += members.astype(np.float64) @ gathered
                continue
            fixed = np.rint(np.multiply(gathered, FIXED_POINT, out=gathered), out=gathered).astype(np.int64)
            if high is not None:
                high += members @ (fixed >> 32)
                np.bitwise_and(fixed, 0xFFFFFFFF, out=fixed)
            whole += members @ fixed
        if high is None:
            sums = whole.astype(np.float64)
        else:  # the exact total high·2³² + low in int64 wherever it fits: then the very bits an unsplit sum gives
            approx = high.astype(np.float64) * 2.0**32 + whole
            fits = np.abs(approx) < 2.0**62
            sums = np.where(fits, ((np.where(fits, high, 0) << 32) + np.where(fits, whole, 0)).astype(np.float64), approx)
        if exact:
            sums /= FIXED_POINT
        counts = np.bincount(group_of, minlength=groups).astype(np.float64)
        if not rescale:
            return cls(sums, counts, np.zeros(groups))
        variances = sigmas / scales
        order = np.lexsort((variances, group_of))  # each group's values summed in one order, whatever order they came in
        return cls(sums, counts, track_noise_variance(variances[order], group_of[order], groups))

    def rows(self, scorer: TrackScorer | None, split_sign: bool) -> dict[str, np.ndarray]:
        """The groups' scoring rows: with a ``scorer``, its query-free track terms (features and σ were rescaled by the
        records' scales: the scorer's model is of unit features, so a clipping norm C < 1 is undone), else each group's
        normalised mean (of the signed features, for split-sign ones)."""
        if scorer is not None:  # prepared PREPARE_CHUNK groups at a time: its float64 temporaries stay small
            groups, dim = self.sums.shape
            rows: dict[str, np.ndarray] = {"weighted": np.empty((groups, dim), np.float32), "offset": np.empty(groups, np.float32)}
            rows["inverse_variance"] = np.empty((groups, dim), np.float32)
            for start in range(0, groups, PREPARE_CHUNK):
                part = slice(start, start + PREPARE_CHUNK)
                prepared = scorer.prepare(self.sums[part] / self.counts[part, None], self.noise_var[part], dtype=np.float32)
                for name in rows:
                    rows[name][part] = getattr(prepared, name)
            return rows
        sums = signed_features(self.sums) if split_sign else self.sums  # compare f = f⁺ − f⁻: the split is for the noise
        return {"centroids": sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)}

    def exact_scores(self, scorer: TrackScorer | None, split_sign: bool, query: np.ndarray) -> np.ndarray:
        """Float64 scores of these groups for a clean query, each group computed alone (``scores_one_by_one``; for cosine,
        one dot product per group)."""
        if scorer is not None:
            return scorer.scores_one_by_one(query, self.sums / self.counts[:, None], self.noise_var)
        query = signed_features(query) if split_sign else query
        unit = query / max(float(np.linalg.norm(query)), 1e-12)
        out = np.empty(self.counts.size)
        for i, total in enumerate(self.sums):
            centroid = signed_features(total) if split_sign else total
            out[i] = float(np.dot(centroid / max(float(np.linalg.norm(centroid)), 1e-12), unit))
        return out

    def take(self, index: np.ndarray) -> _GroupSums:
        return _GroupSums(self.sums[index], self.counts[index], self.noise_var[index])


def _group_scores(rows: dict[str, np.ndarray], scorer: TrackScorer | None, split_sign: bool, query: np.ndarray) -> np.ndarray:
    """One score per row of ``_GroupSums.rows`` for a clean query (float64)."""
    if scorer is not None:
        return scorer.tracks(rows["weighted"], rows["inverse_variance"], rows["offset"]).scores(query)[0].astype(np.float64)
    if split_sign:
        query = signed_features(query)
    return rows["centroids"] @ (query / max(float(np.linalg.norm(query)), 1e-12))


@dataclass
class _Records:
    """A tenant's grouped records (one grouping): growable parallel arrays whose first ``size`` rows are in use (rows of
    dropped records are dead until the next compaction), each group's live rows, and the groups' scoring rows."""

    size: int = 0
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # each record's group: an index into ``names``
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    cameras: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # µs since the epoch
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # each record's noise σ
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))  # min(1, C): a unit feature's norm after clipping
    features: np.ndarray | None = None  # [capacity, D] float32, the released (noisy) features as stored
    row_of: dict[int, int] = field(default_factory=dict)  # record id -> row, for live records
    members: list[list[int]] = field(default_factory=list)  # by code: the group's live rows, ascending
    names: list[str] = field(default_factory=list)  # group keys by code (append-only between renumberings)
    code_of: dict[str, int] = field(default_factory=dict)
    noisy: int = 0  # live records released with noise (σ > 0)
    largest: float = 0.0  # a bound on |feature / scale| of every record loaded (never lowered)
    synced_seq: int | None = None  # the tenant's change-log head when the arrays last matched SQL
    scorings: list[_Scoring] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards all of the above (a whole search)

    @property
    def live(self) -> int:
        return len(self.row_of)

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.size])

    def group_sizes(self, codes: np.ndarray) -> np.ndarray:
        return np.array([len(self.members[c]) for c in codes.tolist()], dtype=np.int64)

    def members_of(self, codes: np.ndarray) -> np.ndarray:
        """The live rows of ``codes`` (ascending), group after group, each group's rows ascending."""
        if 4 * codes.size > len(self.names):  # most groups: one pass and one sort instead of one list per group
            rows = self.live_rows()
            rows = rows[np.isin(self.codes[rows], codes)]
            return rows[np.lexsort((rows, self.codes[rows]))]
        return np.fromiter((row for c in codes.tolist() for row in self.members[c]), dtype=np.int64)

    def sums_of(self, codes: np.ndarray, rescale: bool) -> _GroupSums:
        """``_GroupSums`` of the groups ``codes`` (ascending) from their live records."""
        assert self.features is not None
        positions = self.members_of(codes)
        group_of = np.repeat(np.arange(codes.size), self.group_sizes(codes))
        return _GroupSums.of(self.features, positions, group_of, codes.size, self.sigmas[positions], self.scales[positions], rescale, self.largest)

    def scoring(self, scorer: TrackScorer | None, split_sign: bool) -> _Scoring:
        """The (refreshed) scoring rows of every group for this way of scoring."""
        found = next((s for s in self.scorings if s.scorer is scorer and s.split_sign == split_sign), None)
        if found is None:
            found = _Scoring(scorer, split_sign)
            self.scorings = [*self.scorings[-1:], found]  # likelihood and cosine may alternate; older ways are dropped
        found.refresh(self)
        return found

    def _changed(self, codes: Any) -> None:
        for scoring in self.scorings:
            scoring.dirty.update(codes)

    def sync(self, session: Session, tenant_id: int, group_by: GroupBy) -> None:
        """Make the live records exactly SQL's records of this tenant that have a ``group_by`` key.

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
        column = getattr(GalleryItem, group_by)
        if changes is None and self.live == 0:  # nothing cached: one read of every grouped record
            self._append(session.execute(select(*self._columns(group_by)).where(GalleryItem.tenant_id == tenant_id, column.is_not(None))).all())
        elif changes is None:
            current = np.array(
                session.scalars(select(GalleryItem.id).where(GalleryItem.tenant_id == tenant_id, column.is_not(None))).all(), dtype=np.int64
            )
            rows = self.live_rows()
            self._drop(rows[~np.isin(self.ids[rows], current)])
            self._load(session, tenant_id, group_by, [i for i in current.tolist() if i not in self.row_of])
        else:
            removed = {item for item, op in changes if op == "del"}
            self._drop(np.array([self.row_of[i] for i in removed if i in self.row_of], dtype=np.int64))
            self._load(session, tenant_id, group_by, sorted({item for item, op in changes if op == "add"} - removed - self.row_of.keys()))
        self.synced_seq = seq  # read before the records: a write in between only means one more sync

    @staticmethod
    def _head(session: Session, tenant_id: int) -> tuple[int | None, int]:
        """The tenant's change-log head: (seq, pruned_seq); (None, 0) before its first write."""
        head = session.execute(select(GalleryHead.seq, GalleryHead.pruned_seq).where(GalleryHead.tenant_id == tenant_id)).first()
        return (int(head[0]), int(head[1])) if head is not None else (None, 0)

    @staticmethod
    def _columns(group_by: GroupBy) -> tuple[Any, ...]:
        return (
            GalleryItem.id,
            getattr(GalleryItem, group_by),
            GalleryItem.subject_ref,
            GalleryItem.camera_id,
            GalleryItem.captured_at,
            GalleryItem.feature,
            GalleryItem.sigma,
            GalleryItem.clip_norm,
            GalleryItem.pooled,
        )

    def _code(self, key: str) -> int:
        code = self.code_of.get(key)
        if code is None:
            code = self.code_of[key] = len(self.names)
            self.names.append(key)
            self.members.append([])
        return code

    def _drop(self, rows: np.ndarray) -> None:
        """Mark ``rows`` (live) dead and wipe what they held; compact once dead rows outnumber live ones."""
        if rows.size == 0:
            return
        gone = set(rows.tolist())
        changed = {int(c) for c in self.codes[rows]}
        for code in changed:  # one pass per group (erasing a large subject is linear, not quadratic)
            self.members[code] = [row for row in self.members[code] if row not in gone]
        for item_id in self.ids[rows].tolist():
            del self.row_of[item_id]
        self.noisy -= int((self.sigmas[rows] > 0).sum())
        self.alive[rows] = False
        # an erased record leaves nothing behind in memory either: its feature, references and times are cleared now
        assert self.features is not None
        self.features[rows] = 0.0
        self.subjects[rows], self.cameras[rows], self.times[rows], self.sigmas[rows] = None, None, 0, 0.0
        self._changed(changed)
        if self.size - self.live > max(1024, self.live):
            self._compact()

    def _compact(self) -> None:
        """Drop dead rows (keeping the live ones' order, so group sums add up as before); renumber the group codes once
        most belong to groups that are gone."""
        keep = self.live_rows()
        self.size = keep.size
        self.ids, self.codes, self.alive = self.ids[keep], self.codes[keep], np.ones(keep.size, dtype=bool)
        self.subjects, self.cameras, self.times = self.subjects[keep], self.cameras[keep], self.times[keep]
        self.sigmas, self.scales = self.sigmas[keep], self.scales[keep]
        self.features = None if self.features is None or keep.size == 0 else self.features[keep]
        self.row_of = {int(i): row for row, i in enumerate(self.ids.tolist())}
        live_codes = np.unique(self.codes)
        if len(self.names) > 2 * live_codes.size + 1024:
            renumber = np.full(len(self.names), -1, dtype=np.int64)
            renumber[live_codes] = np.arange(live_codes.size)
            self.names = [self.names[int(c)] for c in live_codes]
            self.code_of = {name: i for i, name in enumerate(self.names)}
            self.codes = renumber[self.codes]
            for scoring in self.scorings:
                scoring.all_dirty = True
        self.members = [[] for _ in self.names]
        for row, code in enumerate(self.codes.tolist()):
            self.members[code].append(row)

    def _load(self, session: Session, tenant_id: int, group_by: GroupBy, item_ids: list[int]) -> None:
        """Append the rows of ``item_ids`` that exist and have a ``group_by`` key."""
        column = getattr(GalleryItem, group_by)
        rows: list[Any] = []
        for start in range(0, len(item_ids), _CHUNK):
            where = (GalleryItem.tenant_id == tenant_id, GalleryItem.id.in_(item_ids[start : start + _CHUNK]), column.is_not(None))
            rows.extend(session.execute(select(*self._columns(group_by)).where(*where)).all())
        self._append(rows)

    def _append(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        blobs = [r[5] for r in rows]
        dim = len(blobs[0]) // 4
        if any(len(b) != 4 * dim for b in blobs) or (self.features is not None and self.features.shape[1] != dim):
            raise ValueError("records of different embedding sizes in one gallery")
        features = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(rows), dim)
        # A pooled release (the noisy mean of n crops, noise σ) is stored on its n items: their sum carries n·σ of noise,
        # so each counts as σ·√n in the Σσᵢ² of its group (exact when all n are selected; more noise assumed otherwise).
        sigmas = np.array([r[6] * math.sqrt(r[8]) for r in rows], dtype=np.float64)
        # everything is computed before anything is assigned, so a failure leaves the cache as it was
        new_codes = np.array([self._code(str(r[1])) for r in rows], dtype=np.int64)
        new_times = np.array([_micros(r[4]) for r in rows], dtype=np.int64)
        start, end = self.size, self.size + len(rows)
        self.ids, self.codes, self.alive = _grown(self.ids, end), _grown(self.codes, end), _grown(self.alive, end)
        self.subjects, self.cameras, self.times = _grown(self.subjects, end), _grown(self.cameras, end), _grown(self.times, end)
        self.sigmas, self.scales = _grown(self.sigmas, end), _grown(self.scales, end)
        self.features = _grown(np.zeros((0, dim), dtype=np.float32) if self.features is None else self.features, end)
        self.ids[start:end] = [r[0] for r in rows]
        self.codes[start:end] = new_codes
        self.alive[start:end] = True
        self.subjects[start:end] = [r[2] for r in rows]
        self.cameras[start:end] = [r[3] for r in rows]
        self.times[start:end] = new_times
        self.sigmas[start:end] = sigmas
        self.scales[start:end] = np.minimum(1.0, np.array([r[7] for r in rows], dtype=np.float64))
        self.features[start:end] = features
        self.largest = max(self.largest, float(np.abs(features).max(initial=0.0)) / float(self.scales[start:end].min()))
        self.size = end
        for row, (item_id, code) in enumerate(zip(self.ids[start:end].tolist(), new_codes.tolist(), strict=True), start=start):
            self.row_of[item_id] = row
            self.members[code].append(row)
        self.noisy += int((sigmas > 0).sum())
        self._changed(set(new_codes.tolist()))


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
        query = np.asarray(query, dtype=np.float64).reshape(-1)
        entry = self._entry(tenant_id, group_by)
        with entry.lock:
            with sessions() as session:
                entry.sync(session, tenant_id, group_by)
            # the scorer's dimension was checked at start-up (app.main.track_scorer_for)
            scoring: Scoring = "likelihood" if scorer is not None and entry.noisy > 0 else "cosine"
            used = scorer if scoring == "likelihood" else None
            if entry.live == 0:
                return [], scoring
            if not filters.selects_records:  # the tenant's groups, refreshed where their records changed
                table = entry.scoring(used, split_sign)
                codes = table.live_codes()
                if codes.size == 0:
                    return [], scoring
                shortlist = np.sort(codes[_shortlist(table.scores(query)[codes], k, filters.min_score)])
                exact = table.exact_sums(entry, shortlist).exact_scores(used, split_sign, query)
                top = _top(shortlist, exact, entry.names, k, filters.min_score)
                return [_hit(entry.names[c], s, entry.members[c], entry) for c, s in top], scoring
            if entry.live == entry.size:  # no dead rows: the mask is computed on views, not copies
                rows = np.flatnonzero(_record_mask(entry, slice(0, entry.size), filters))
            else:
                rows = entry.live_rows()
                rows = rows[_record_mask(entry, rows, filters)]
            if rows.size == 0:
                return [], scoring
            selected = _Selection(entry.ids[rows], entry.codes[rows], entry.cameras[rows], entry.times[rows], entry.names)
            assert entry.features is not None
            live, group_of = np.unique(selected.codes, return_inverse=True)
            sums = _GroupSums.of(entry.features, rows, group_of, live.size, entry.sigmas[rows], entry.scales[rows], used is not None, entry.largest)
        # filtered: the kept groups' sums (not their records' features) are scored outside the lock
        grouped = Grouped(live, group_of, sums.rows(used, split_sign), used, split_sign)
        shortlist = _shortlist(grouped.scores(query), k, filters.min_score)
        top = _top(grouped.live[shortlist], sums.take(shortlist).exact_scores(used, split_sign, query), selected.names, k, filters.min_score)
        hits = []
        for code, score in top:
            members = np.flatnonzero(grouped.group_of == np.searchsorted(grouped.live, code))
            hits.append(_hit(selected.names[code], score, members.tolist(), selected))
        return hits, scoring


@dataclass(frozen=True)
class _Selection:
    """The records a filtered search kept (copies of the cache's rows, so the cache may change meanwhile)."""

    ids: np.ndarray
    codes: np.ndarray
    cameras: np.ndarray
    times: np.ndarray
    names: list[str]


def _record_mask(entry: _Records, rows: np.ndarray | slice, filters: GroupFilters) -> np.ndarray:
    mask = np.ones(entry.ids[rows].shape[0], dtype=bool)
    if filters.camera_ids is not None:
        mask &= np.isin(entry.cameras[rows], np.array(filters.camera_ids, dtype=object))
    if filters.subject_ref is not None:
        mask &= entry.subjects[rows] == filters.subject_ref
    if filters.captured_from is not None:
        mask &= entry.times[rows] >= _micros(filters.captured_from)
    if filters.captured_to is not None:
        mask &= entry.times[rows] <= _micros(filters.captured_to)
    return mask


def _tolerance(score: float) -> float:
    """How far a float32-row score may be from its float64 value, with a wide margin (measured: a few millionths)."""
    return SHORTLIST_TOLERANCE * (1.0 + abs(score))


def _shortlist(scores: np.ndarray, k: int, min_score: float | None) -> np.ndarray:
    """Indices of the groups that can be in the top ``k`` (at or above ``min_score``) once scored exactly: the cached
    float32 rows rank every group, and every group within ``_tolerance`` of the k-th score (or of ``min_score``) is
    rescored in float64. At most ``k + SHORTLIST_EXTRA`` groups: where more lie within the margin (thousands of nearly
    equal groups), the float32 order picks them, and replicas may then differ."""
    keep = np.arange(scores.size)
    if min_score is not None:
        keep = keep[scores >= min_score - _tolerance(min_score)]
    if keep.size > k:
        kth = float(-np.partition(-scores[keep], k - 1)[k - 1])
        keep = keep[scores[keep] >= kth - _tolerance(kth)]
    if keep.size > k + SHORTLIST_EXTRA:
        keep = keep[np.argpartition(-scores[keep], k + SHORTLIST_EXTRA - 1)[: k + SHORTLIST_EXTRA]]
    return keep


def _top(codes: np.ndarray, scores: np.ndarray, names: list[str], k: int, min_score: float | None) -> list[tuple[int, float]]:
    """The best ``k`` of ``codes`` (scored by ``scores``), best first; ties by group key, also at the k-th place (every
    group tied there is a candidate, so which of them make the cut does not depend on how groups were numbered)."""
    keep = np.arange(codes.size)
    if min_score is not None:
        keep = keep[scores >= min_score]
    if keep.size > k:
        kth = -np.partition(-scores[keep], k - 1)[k - 1]
        keep = keep[scores[keep] >= kth]
    ranked = sorted(keep.tolist(), key=lambda i: (-scores[i], names[int(codes[i])]))[:k]
    return [(int(codes[i]), float(scores[i])) for i in ranked]


def _hit(key: str, score: float, rows: list[int], records: _Records | _Selection) -> GroupHit:
    member_rows = np.asarray(rows, dtype=np.int64)
    member_times = records.times[member_rows]
    return GroupHit(
        key=str(key),
        score=score,
        item_ids=sorted(int(i) for i in records.ids[member_rows]),
        cameras=sorted({str(c) for c in records.cameras[member_rows]}),
        first_seen=_from_micros(member_times.min()),
        last_seen=_from_micros(member_times.max()),
    )


@dataclass(frozen=True)
class Grouped:
    """Records grouped by code and scored: the filtered path (the unfiltered one keeps per-group rows in ``_Scoring``)."""

    live: np.ndarray  # [G] the codes present (sorted)
    group_of: np.ndarray  # [N] each record's index into ``live``
    rows: dict[str, np.ndarray]  # ``_GroupSums.rows`` of the groups in ``live``
    scorer: TrackScorer | None
    split_sign: bool

    @classmethod
    def of(
        cls, codes: np.ndarray, features: np.ndarray, sigmas: np.ndarray, scales: np.ndarray, scorer: TrackScorer | None, split_sign: bool
    ) -> Grouped:
        """Group records by their ``codes`` (each group's records summed in their given order)."""
        live, group_of = np.unique(codes, return_inverse=True)
        sums = _GroupSums.of(features, np.arange(codes.size), group_of, live.size, sigmas, scales, scorer is not None)
        return cls(live, group_of, sums.rows(scorer, split_sign), scorer, split_sign)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """One score per group for a clean query (float64)."""
        return _group_scores(self.rows, self.scorer, self.split_sign, query)
