"""What the service answers, as typed models (unknown fields are kept: newer servers may add some)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Noise(_Model):
    mechanism: str
    epsilon: float | Literal["inf"]
    delta: float
    sensitivity: float
    sigma: float
    clip_norm: float
    library: str
    pooled: int = 1  # crops whose mean this release is (a pooled track: n)
    release_id: int | None = None  # a pooled release's first item (its items are erased together)


class PooledRelease(_Model):
    item_ids: list[int]
    track_ref: str
    subject_ref: str | None = None
    noise: Noise


class Enrolled(_Model):
    ids: list[int]
    count: int
    noise: Noise
    pooled: list[PooledRelease] = []
    warning: str | None = None


class Item(_Model):
    id: int
    camera_id: str
    captured_at: datetime
    subject_ref: str | None = None
    track_ref: str | None = None
    external_id: str | None = None
    attributes: dict[str, Any] | None = None
    created_at: datetime
    noise: Noise


class Hit(Item):
    score: float


class SearchResult(_Model):
    k: int
    hits: list[Hit]


class GroupHit(_Model):
    """One track or subject: its records' released features averaged, then matched (``group_by`` search).

    ``track_ref`` is set when grouping by track, ``subject_ref`` when grouping by subject."""

    track_ref: str | None = None
    subject_ref: str | None = None
    score: float
    item_ids: list[int]
    cameras: list[str]
    first_seen: datetime
    last_seen: datetime
    count: int

    @property
    def key(self) -> str:
        """The group's reference (its track_ref or subject_ref)."""
        return str(self.track_ref if self.track_ref is not None else self.subject_ref)


class GroupedSearchResult(_Model):
    k: int
    group_by: Literal["track_ref", "subject_ref"]
    scoring: Literal["likelihood", "cosine"] = "cosine"  # what the scores are (servers before it existed: cosine)
    hits: list[GroupHit]


class ItemPage(_Model):
    items: list[Item]
    next_after_id: int | None


class Policy(_Model):
    epsilon: float | Literal["inf"]
    delta: float
    clip_norm: float
    sensitivity: float
    sigma: float
    subject_epsilon: float | None = None
    subject_delta: float | None = None
    pool_tracks: bool | None = None  # None: a server before pooled track releases
    noise: bool
    warning: str | None = None


class Tenant(_Model):
    id: int
    name: str
    retention_days: int | None = None
    created_at: datetime
    gallery_size: int
    index_size: int
    privacy: Policy | None = None


class TenantDeleted(_Model):
    deleted: int
    items_erased: int


class Key(_Model):
    id: int
    prefix: str
    label: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class IssuedKey(Key):
    api_key: str


class AuditEntry(_Model):
    id: int
    at: datetime
    actor: str
    action: str
    tenant_id: int | None = None
    details: dict[str, Any] | None = None


class TradeoffPoint(_Model):
    epsilon: float
    grouping: Literal["record", "track", "pooled_track"] = "record"
    delta: float
    sigma: float
    within_calibration: bool
    interpolated: bool
    rank1: float | None = None
    mAP: float | None = None
    extra: dict[str, float] = {}


class Tradeoff(_Model):
    available: bool
    reason: str | None = None
    calibrated_delta: float | None = None
    calibrated_range: list[float] | None = None
    checkpoint_sha256: str | None = None
    points: list[TradeoffPoint] = []
    no_noise: dict[str, float] | None = None
    groupings: dict[str, str] | None = None
    track_points: list[TradeoffPoint] = []
    track_no_noise: dict[str, float] | None = None
    track_mean_size: float | None = None
    pooled_track_points: list[TradeoffPoint] = []
    pooled_track_no_noise: dict[str, float] | None = None


class ModelInfo(_Model):
    name: str
    version: str
    backbone: str
    embedding_dim: int
    input_size: list[int]
    device: str
    checkpoint_sha256: str | None = None
    untrained_fallback: bool
    metrics: dict[str, Any] | None = None


class Ready(_Model):
    ready: bool
    checks: dict[str, bool]
