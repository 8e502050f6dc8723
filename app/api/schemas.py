"""Request and response models of the public API."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.db.tables import GalleryItem


def epsilon_out(value: float | None) -> float | Literal["inf"]:
    return "inf" if value is None or math.isinf(value) else value


class ItemMetadata(BaseModel):
    """Metadata of one crop in an enrollment (one object per image, in order)."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(min_length=1, max_length=200, examples=["cam-07"])
    captured_at: datetime = Field(examples=["2026-11-26T08:15:00Z"])
    subject_ref: str | None = Field(None, max_length=200, description="the person/subject this crop shows, if known")
    track_ref: str | None = Field(None, max_length=200, description="tracker id; budgets compose per track when no subject is given")
    external_id: str | None = Field(None, max_length=200)
    attributes: dict[str, Any] | None = Field(None, description="small JSON object (at most 4 KiB serialised)")

    @field_validator("attributes")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > 4096:
            raise ValueError("attributes must serialise to at most 4096 bytes")
        return value

    @field_validator("captured_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("captured_at needs a timezone (e.g. 2026-11-26T08:15:00Z)")
        return value


class NoiseOut(BaseModel):
    mechanism: str
    epsilon: float | Literal["inf"]
    delta: float
    sensitivity: float
    sigma: float
    clip_norm: float
    library: str


class EnrollOut(BaseModel):
    ids: list[int]
    count: int
    noise: NoiseOut
    warning: str | None = None


class ItemOut(BaseModel):
    id: int
    camera_id: str
    captured_at: datetime
    subject_ref: str | None
    track_ref: str | None
    external_id: str | None
    attributes: dict[str, Any] | None
    created_at: datetime
    noise: NoiseOut

    @classmethod
    def of(cls, row: GalleryItem) -> ItemOut:
        from app.services.gallery import as_utc

        return cls(
            id=row.id,
            camera_id=row.camera_id,
            captured_at=as_utc(row.captured_at),
            subject_ref=row.subject_ref,
            track_ref=row.track_ref,
            external_id=row.external_id,
            attributes=row.attributes,
            created_at=as_utc(row.created_at),
            noise=NoiseOut(
                mechanism=row.mechanism,
                epsilon=epsilon_out(row.epsilon),
                delta=row.delta,
                sensitivity=row.sensitivity,
                sigma=row.sigma,
                clip_norm=row.clip_norm,
                library=row.noise_library,
            ),
        )


class HitOut(ItemOut):
    score: float


class SearchOut(BaseModel):
    hits: list[HitOut]
    k: int


class ItemPage(BaseModel):
    items: list[ItemOut]
    next_after_id: int | None


class EraseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_ref: str | None = None
    before: datetime | None = None


class CountOut(BaseModel):
    deleted: int


# -- admin -------------------------------------------------------------------------------
class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["acme-retail"])
    retention_days: int | None = Field(None, ge=1, le=36500)


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    retention_days: int | None = Field(None, ge=1, le=36500)


class PolicyIn(BaseModel):
    """A tenant's privacy policy. ``epsilon`` "inf" (no noise) must be set explicitly."""

    model_config = ConfigDict(extra="forbid")
    epsilon: float | Literal["inf"] = Field(examples=[8.0])
    delta: float = Field(1e-5, gt=0, lt=1)
    subject_epsilon: float | None = Field(None, gt=0, description="per-subject budget over all releases of one subject")
    subject_delta: float | None = Field(None, gt=0, lt=1)

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not (0 < value < math.inf):
            raise ValueError("epsilon must be a positive finite number, or the string 'inf' for no noise")
        return value


class PolicyOut(BaseModel):
    epsilon: float | Literal["inf"]
    delta: float
    clip_norm: float
    sensitivity: float
    sigma: float
    subject_epsilon: float | None
    subject_delta: float | None
    noise: bool
    warning: str | None = None


class TenantOut(BaseModel):
    id: int
    name: str
    retention_days: int | None
    created_at: datetime
    gallery_size: int = Field(description="items in SQL (the source of truth)")
    index_size: int = Field(description="vectors in the tenant's FAISS index; equals gallery_size when consistent")
    privacy: PolicyOut | None = Field(description="null until an operator sets a policy; enrollment is refused until then")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, max_length=200)


class KeyOut(BaseModel):
    id: int
    prefix: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyIssued(KeyOut):
    api_key: str = Field(description="shown once; store it now")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    tenant_id: int | None
    details: dict[str, Any] | None


class ModelOut(BaseModel):
    name: str
    version: str
    backbone: str
    embedding_dim: int
    input_size: list[int]
    device: str
    checkpoint_sha256: str | None
    untrained_fallback: bool
    metrics: dict[str, Any] | None = None
