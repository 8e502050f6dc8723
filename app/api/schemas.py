"""Request and response models of the public API, and the strict input types they are built from.

Input rules (the contract): ids fit the database's signed 64-bit range; numbers are finite and never booleans;
timestamps are RFC 3339 strings with a timezone (numbers are not read as Unix time); identifiers have no control
characters; ``attributes`` is a small, shallow JSON object. Every timestamp in a response is UTC and ends in ``Z``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema, field_validator, model_validator

from app.db.tables import TRACK_BUDGET_PREFIX

INT64_MAX = 2**63 - 1
EPSILON_MIN, EPSILON_MAX = 1e-3, 1e4  # where the analytic Gaussian calibration is numerically sound
DELTA_MIN = 1e-20
ATTRIBUTES_MAX_BYTES = 4096
ATTRIBUTES_MAX_DEPTH = 8
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f-\x9f]*$"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_EARLIEST, _LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _valid_unicode(value: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("text must be valid Unicode (no lone surrogates)")
    return value


def _timestamp(value: Any) -> datetime:
    """An RFC 3339 string with a timezone, as UTC. Numbers (Unix time) and naive times are refused."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.match(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"not a valid date-time ({exc})") from None
    else:
        raise ValueError("expected an RFC 3339 date-time with a timezone, e.g. 2026-11-26T08:15:00Z (numbers are not accepted)")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("the timestamp needs a timezone, e.g. 2026-11-26T08:15:00Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # within hours of year 1 or 9999: the nearest representable instant
        return _EARLIEST if parsed.year < 5000 else _LATEST


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("booleans are not numbers")
    return value


def _whole_number(value: Any) -> Any:
    """JSON Schema integers include 30.0; booleans and fractions are not integers."""
    if isinstance(value, bool):
        raise ValueError("booleans are not numbers")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer_text(value: Any) -> Any:
    """Query, path and form integers are written as digits: "100.0", "1e2" and " 7" are not integers."""
    if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ValueError("expected an integer written in digits")
    return value


def not_null(value: Any) -> Any:
    """For optional fields whose schema has no null: leave the field out instead of sending null."""
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


def optional(schema: dict[str, Any]) -> WithJsonSchema:
    """The JSON schema of an optional field (left out or a value; never null)."""
    return WithJsonSchema(schema)


def _json_shape(value: Any) -> Any:
    """Refuse JSON nested deeper than ATTRIBUTES_MAX_DEPTH or larger than ATTRIBUTES_MAX_BYTES, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > ATTRIBUTES_MAX_DEPTH:
                raise ValueError(f"attributes may nest at most {ATTRIBUTES_MAX_DEPTH} levels deep")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
            if isinstance(node, dict):
                for key in node:
                    _valid_unicode(str(key))
        elif isinstance(node, str):
            _valid_unicode(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError("attributes may hold finite numbers only")
    if len(json.dumps(value, ensure_ascii=False).encode()) > ATTRIBUTES_MAX_BYTES:
        raise ValueError(f"attributes must serialise to at most {ATTRIBUTES_MAX_BYTES} bytes")
    return value


# -- strict input types ----------------------------------------------------------------
Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARS), AfterValidator(_valid_unicode)]
Label = Annotated[str, Field(max_length=200, pattern=NO_CONTROL_CHARS), AfterValidator(_valid_unicode)]
IDENTIFIER_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_CONTROL_CHARS}
Timestamp = Annotated[datetime, BeforeValidator(_timestamp), WithJsonSchema({"type": "string", "format": "date-time"})]
UtcDatetime = Annotated[datetime, AfterValidator(as_utc), Field(examples=["2026-11-26T08:15:00Z"])]
# Constraints before the validators, so that they reach the JSON schema (minimum/maximum).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_no_bool)]
Epsilon = Annotated[float, Field(ge=EPSILON_MIN, le=EPSILON_MAX, allow_inf_nan=False), BeforeValidator(_no_bool)]
Delta = Annotated[float, Field(ge=DELTA_MIN, lt=1, allow_inf_nan=False), BeforeValidator(_no_bool)]
DIGITS = BeforeValidator(_integer_text)  # put after Query()/Path()/Form() in an Annotated, so their bounds reach the schema
RetentionDays = Annotated[int, Field(ge=1, le=36500), BeforeValidator(_whole_number)]
Attributes = Annotated[
    dict[str, Any],
    BeforeValidator(_json_shape),
    Field(description=f"small JSON object: at most {ATTRIBUTES_MAX_BYTES} bytes serialised, {ATTRIBUTES_MAX_DEPTH} levels deep"),
]


def epsilon_out(value: float | None) -> float | Literal["inf"]:
    return "inf" if value is None or math.isinf(value) else value


class StrictIn(BaseModel):
    """JSON request bodies: unknown fields refused, no type coercion (``true`` is not 1, ``"5"`` is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ItemMetadata(StrictIn):
    """Metadata of one crop in an enrollment (one object per image, in order)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"camera_id": "cam-07", "captured_at": "2026-11-26T08:15:00Z", "track_ref": "t-4411"}]})

    camera_id: Identifier = Field(examples=["cam-07"])
    captured_at: Timestamp = Field(examples=["2026-11-26T08:15:00Z"])
    subject_ref: Identifier | None = Field(
        None, description="the person/subject this crop shows, if known (not starting with `track:`, which names track budgets)"
    )
    track_ref: Identifier | None = Field(None, description="tracker id; budgets compose per track when no subject is given")
    external_id: Identifier | None = None
    attributes: Attributes | None = None

    @field_validator("subject_ref")
    @classmethod
    def _not_a_track_budget(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(TRACK_BUDGET_PREFIX):
            raise ValueError(f"subject_ref must not start with {TRACK_BUDGET_PREFIX!r}: that names the budget of a track without a subject")
        return value

    @field_validator("captured_at")
    @classmethod
    def _representable(cls, value: datetime) -> datetime:
        if value in (_EARLIEST, _LATEST):
            raise ValueError("captured_at is outside years 1..9999 in UTC")
        return value


class NoiseOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "mechanism": "analytic-gaussian",
                    "epsilon": 8.0,
                    "delta": 1e-5,
                    "sensitivity": 2.0,
                    "sigma": 0.62,
                    "clip_norm": 1.0,
                    "library": "models.privacy (analytic Gaussian, Balle & Wang 2018)",
                }
            ]
        }
    )
    mechanism: str
    epsilon: float | Literal["inf"]
    delta: float
    sensitivity: float
    sigma: float
    clip_norm: float
    library: str
    pooled: int = Field(1, description="crops whose mean this release is: 1, or n for a pooled track (sensitivity Δ/n, σ/n)")
    release_id: int | None = Field(None, description="a pooled release's first item: all its items share it, and are erased together")


_NOISE_EXAMPLE: Any = NoiseOut.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
_ITEM_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "camera_id": "cam-07",
    "captured_at": "2026-11-26T08:15:00Z",
    "subject_ref": None,
    "track_ref": "t-4411",
    "external_id": "0001_c1s1_000151_00.jpg",
    "attributes": {"zone": "entrance"},
    "created_at": "2026-11-26T08:15:02Z",
    "noise": _NOISE_EXAMPLE,
}


class PooledReleaseOut(BaseModel):
    """One track's crops of this enrollment, released as one noisy mean (the tenant policy's ``pool_tracks``)."""

    item_ids: list[int]
    track_ref: str
    subject_ref: str | None
    noise: NoiseOut


class EnrollOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ids": [42, 43], "count": 2, "noise": _NOISE_EXAMPLE, "pooled": [], "warning": None}]})
    ids: list[int]
    count: int
    noise: NoiseOut = Field(description="the release of a crop on its own (and the per-record (ε, δ) of every crop)")
    pooled: list[PooledReleaseOut] = Field(
        default_factory=list, description="tracks whose crops of this request were released as one noisy mean; the other crops alone"
    )
    warning: str | None = None


class ItemOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ITEM_EXAMPLE]})
    id: int
    camera_id: str
    captured_at: UtcDatetime
    subject_ref: str | None
    track_ref: str | None
    external_id: str | None
    attributes: dict[str, Any] | None
    created_at: UtcDatetime
    noise: NoiseOut

    @classmethod
    def of(cls, row: Any) -> ItemOut:
        """From a ``GalleryItem`` row."""
        return cls(
            id=row.id,
            camera_id=row.camera_id,
            captured_at=row.captured_at,
            subject_ref=row.subject_ref,
            track_ref=row.track_ref,
            external_id=row.external_id,
            attributes=row.attributes,
            created_at=row.created_at,
            noise=NoiseOut(
                mechanism=row.mechanism,
                epsilon=epsilon_out(row.epsilon),
                delta=row.delta,
                sensitivity=row.sensitivity,
                sigma=row.sigma,
                clip_norm=row.clip_norm,
                library=row.noise_library,
                pooled=row.pooled,
                release_id=row.release_id,
            ),
        )


class HitOut(ItemOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{**_ITEM_EXAMPLE, "score": 0.83}]})
    score: float


class SearchOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"hits": [{**_ITEM_EXAMPLE, "score": 0.83}], "k": 10}]})
    hits: list[HitOut]
    k: int


_GROUP_HIT_EXAMPLE: dict[str, Any] = {
    "score": 0.71,
    "item_ids": [42, 43, 57],
    "cameras": ["cam-07", "cam-09"],
    "first_seen": "2026-11-26T08:15:00Z",
    "last_seen": "2026-11-26T08:16:40Z",
    "count": 3,
}


GroupScoring = Annotated[
    Literal["likelihood", "cosine"],
    Field(
        description="what the hits' scores are: the encoder's noise-aware log-likelihood ratio (when it has one and the tenant's "
        "grouped records include noisy ones) or the cosine to each group's normalised mean; min_score compares against them"
    ),
]


class GroupHitBase(BaseModel):
    """One group (a track or a subject): its records' released features averaged, then matched."""

    score: float = Field(
        description=(
            "higher is better; the answer's `scoring` says which: 'likelihood' (an encoder with a noise-aware scorer, the "
            "default, and a tenant whose grouped records include noisy ones): the log-likelihood ratio 'same person as the "
            "query vs someone else' of the mean of the group's records that pass the filters, given its noise (no fixed "
            "range; > 0 favours a match); 'cosine': the cosine of the query to that mean, normalised. min_score compares "
            "against this value"
        )
    )
    item_ids: list[int] = Field(description="the records averaged into this hit, ascending")
    cameras: list[str] = Field(description="the cameras of those records, sorted")
    first_seen: UtcDatetime = Field(description="earliest captured_at of those records")
    last_seen: UtcDatetime = Field(description="latest captured_at of those records")
    count: int = Field(description="number of records averaged")


class TrackHitOut(GroupHitBase):
    model_config = ConfigDict(json_schema_extra={"examples": [{"track_ref": "t-4411", **_GROUP_HIT_EXAMPLE}]})
    track_ref: str


class SubjectHitOut(GroupHitBase):
    model_config = ConfigDict(json_schema_extra={"examples": [{"subject_ref": "person-17", **_GROUP_HIT_EXAMPLE}]})
    subject_ref: str


class TrackSearchOut(BaseModel):
    """``group_by=track_ref``: hits are tracks, best first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"group_by": "track_ref", "k": 10, "scoring": "cosine", "hits": [{"track_ref": "t-4411", **_GROUP_HIT_EXAMPLE}]}]
        }
    )
    group_by: Literal["track_ref"]
    k: int
    scoring: GroupScoring
    hits: list[TrackHitOut]


class SubjectSearchOut(BaseModel):
    """``group_by=subject_ref``: hits are subjects, best first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"group_by": "subject_ref", "k": 10, "scoring": "cosine", "hits": [{"subject_ref": "person-17", **_GROUP_HIT_EXAMPLE}]}]
        }
    )
    group_by: Literal["subject_ref"]
    k: int
    scoring: GroupScoring
    hits: list[SubjectHitOut]


class ItemPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_ITEM_EXAMPLE], "next_after_id": 42}]})
    items: list[ItemOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page; null on the last page")


class EraseIn(StrictIn):
    """At least one of ``subject_ref`` and ``before``; both: items of that subject captured before that instant."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"subject_ref": "person-17"}, {"before": "2026-01-01T00:00:00Z"}],
            "anyOf": [{"required": ["subject_ref"]}, {"required": ["before"]}],
        }
    )
    subject_ref: Annotated[Identifier | None, optional(IDENTIFIER_SCHEMA), BeforeValidator(not_null)] = None
    before: Annotated[
        Timestamp | None,
        optional({"type": "string", "format": "date-time", "description": "erase items captured before this instant"}),
        BeforeValidator(not_null),
    ] = None

    @model_validator(mode="after")
    def _something(self) -> EraseIn:
        if self.subject_ref is None and self.before is None:
            raise ValueError("give subject_ref and/or before; erasing a whole gallery is an admin operation (delete the tenant)")
        return self


class CountOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": 3}]})
    deleted: int


# -- admin -------------------------------------------------------------------------------
class TenantIn(StrictIn):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "acme-retail", "retention_days": 30}]})
    name: Identifier = Field(examples=["acme-retail"])
    retention_days: RetentionDays | None = Field(None, description="purge records captured longer ago; null: keep")


class TenantPatch(StrictIn):
    """Change what is given. ``name`` cannot be null; ``retention_days: null`` removes the retention limit."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "acme-retail-eu"}, {"retention_days": None}]})
    name: Annotated[Identifier | None, optional(IDENTIFIER_SCHEMA)] = None
    retention_days: RetentionDays | None = Field(None, description="null removes the retention limit")

    @field_validator("name", mode="before")
    @classmethod
    def _name_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("name cannot be null; leave it out to keep the current name")
        return value


class PolicyIn(StrictIn):
    """A tenant's privacy policy. ``epsilon`` "inf" (no noise) must be set explicitly."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"epsilon": 8.0, "delta": 1e-5}, {"epsilon": 16.0, "delta": 1e-5, "subject_epsilon": 64.0}],
            "dependentRequired": {"subject_delta": ["subject_epsilon"]},
        }
    )
    epsilon: Epsilon | Literal["inf"] = Field(examples=[8.0], description=f"per-record ε in [{EPSILON_MIN}, {EPSILON_MAX:g}], or 'inf' for no noise")
    delta: Delta = 1e-5
    subject_epsilon: Annotated[
        Epsilon | None,
        optional({"type": "number", "minimum": EPSILON_MIN, "maximum": EPSILON_MAX}),
        BeforeValidator(not_null),
    ] = Field(None, description="per-subject budget over all releases of one subject; leave out for none")
    subject_delta: Annotated[Delta | None, optional({"type": "number", "minimum": DELTA_MIN, "exclusiveMaximum": 1}), BeforeValidator(not_null)] = (
        Field(None, description="δ of the per-subject budget (needs subject_epsilon; default: delta)")
    )
    pool_tracks: Annotated[StrictBool | None, optional({"type": "boolean"}), BeforeValidator(not_null)] = Field(
        None,
        description=(
            "release the crops of one track sent in one enrollment as one noisy mean: each crop keeps this (ε, δ), the mean "
            "has n times less noise instead of √n, and the track as a whole gets μ = n·Δ/σ instead of √n·Δ/σ. Left out: "
            "the policy's current setting (true for a tenant's first policy)"
        ),
    )

    @model_validator(mode="after")
    def _subject_delta_needs_epsilon(self) -> PolicyIn:
        if self.subject_delta is not None and self.subject_epsilon is None:
            raise ValueError("subject_delta needs subject_epsilon")
        return self


class PolicyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "epsilon": 8.0,
                    "delta": 1e-5,
                    "clip_norm": 1.0,
                    "sensitivity": 2.0,
                    "sigma": 0.62,
                    "subject_epsilon": None,
                    "subject_delta": None,
                    "pool_tracks": True,
                    "noise": True,
                    "warning": None,
                }
            ]
        }
    )
    epsilon: float | Literal["inf"]
    delta: float
    clip_norm: float
    sensitivity: float
    sigma: float
    subject_epsilon: float | None
    subject_delta: float | None
    pool_tracks: bool
    noise: bool
    warning: str | None = None


_POLICY_EXAMPLE: Any = PolicyOut.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]


class TenantOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "name": "acme-retail",
                    "retention_days": 30,
                    "created_at": "2026-11-26T08:00:00Z",
                    "gallery_size": 5317,
                    "index_size": 5317,
                    "privacy": _POLICY_EXAMPLE,
                }
            ]
        }
    )
    id: int
    name: str
    retention_days: int | None
    created_at: UtcDatetime
    gallery_size: int = Field(description="items in SQL (the source of truth)")
    index_size: int = Field(description="vectors in the tenant's FAISS index; equals gallery_size when consistent")
    privacy: PolicyOut | None = Field(description="null until an operator sets a policy; enrollment is refused until then")


class TenantDeleted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": 1, "items_erased": 5317}]})
    deleted: int
    items_erased: int


class KeyIn(StrictIn):
    model_config = ConfigDict(json_schema_extra={"examples": [{"label": "camera-gateway-1"}, {}]})
    label: Label | None = None


_KEY_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "prefix": "3fa2c1d09b4e",
    "label": "camera-gateway-1",
    "created_at": "2026-11-26T08:01:00Z",
    "revoked_at": None,
}


class KeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_KEY_EXAMPLE]})
    id: int
    prefix: str
    label: str | None
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class KeyIssued(KeyOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{**_KEY_EXAMPLE, "api_key": "rk_3fa2c1d09b4e_Qm9vZ…"}]})
    api_key: str = Field(description="shown once; store it now")


class AuditOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": 12, "at": "2026-11-26T08:01:00Z", "actor": "admin", "action": "key.issue", "tenant_id": 3, "details": {"key_id": 7}}]
        }
    )
    id: int
    at: UtcDatetime
    actor: str
    action: str
    tenant_id: int | None
    details: dict[str, Any] | None


class TradeoffPoint(BaseModel):
    epsilon: float
    grouping: Literal["record", "track", "pooled_track"] = Field(
        "record",
        description=(
            "record: per-record search; track: track search (group_by=track_ref, each track's records averaged); pooled_track: "
            "track search where each track's crops were enrolled in one request and released as one noisy mean (pool_tracks)"
        ),
    )
    delta: float
    sigma: float
    within_calibration: bool = Field(description="false outside the calibrated ε range: no figures are extrapolated (they are null)")
    interpolated: bool = Field(description="true between calibrated points (interpolated in log ε)")
    rank1: float | None
    mAP: float | None
    extra: dict[str, float] = Field(default_factory=dict, description="other measured figures at this ε (e.g. attack success), when calibrated")


class TradeoffOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "available": True,
                    "reason": None,
                    "calibrated_delta": 1e-5,
                    "calibrated_range": [0.5, 256.0],
                    "checkpoint_sha256": "31f3de13…",
                    "data": "cuhk03-detected",
                    "note": "expected search quality of clean queries against a gallery noised at each epsilon",
                    "points": [
                        {
                            "epsilon": 64.0,
                            "grouping": "record",
                            "delta": 1e-5,
                            "sigma": 0.11,
                            "within_calibration": True,
                            "interpolated": False,
                            "rank1": 0.41,
                            "mAP": 0.40,
                            "extra": {},
                        }
                    ],
                    "no_noise": {"rank1": 0.439, "mAP": 0.434},
                    "groupings": {"record": "per-record search", "track": "track search (group_by=track_ref)"},
                    "track_points": [
                        {
                            "epsilon": 64.0,
                            "grouping": "track",
                            "delta": 1e-5,
                            "sigma": 0.11,
                            "within_calibration": True,
                            "interpolated": False,
                            "rank1": 0.52,
                            "mAP": 0.55,
                            "extra": {},
                        }
                    ],
                    "track_no_noise": {"rank1": 0.58, "mAP": 0.59},
                    "track_mean_size": 3.8,
                }
            ]
        }
    )
    available: bool
    reason: str | None = None
    calibrated_delta: float | None = None
    calibrated_range: list[float] | None = None
    checkpoint_sha256: str | None = None
    data: str | None = None
    note: str | None = None
    points: list[TradeoffPoint] = Field(description="per-record search (grouping: record)")
    no_noise: dict[str, float] | None = Field(None, description="per-record figures without noise (ε = inf), when calibrated")
    groupings: dict[str, str] | None = Field(None, description="what each grouping's numbers measure")
    track_points: list[TradeoffPoint] = Field(
        default_factory=list, description="track search (grouping: track); empty when the calibration file has no track rows"
    )
    track_no_noise: dict[str, float] | None = Field(None, description="track-search figures without noise (ε = inf), when calibrated")
    track_mean_size: float | None = Field(None, description="mean records per track on the calibration split")
    pooled_track_points: list[TradeoffPoint] = Field(
        default_factory=list, description="track search of pooled releases (grouping: pooled_track); empty when not calibrated"
    )
    pooled_track_no_noise: dict[str, float] | None = Field(None, description="pooled-track figures without noise (ε = inf), when calibrated")


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "stage1_mobilenetv2_192x96.pt",
                    "version": "571525b",
                    "backbone": "mobilenetv2",
                    "embedding_dim": 512,
                    "input_size": [192, 96],
                    "device": "cpu",
                    "checkpoint_sha256": "31f3de13…",
                    "untrained_fallback": False,
                    "metrics": {"rank1": 0.439, "mAP": 0.434},
                }
            ]
        }
    )
    name: str
    version: str
    backbone: str
    embedding_dim: int
    input_size: list[int]
    device: str
    checkpoint_sha256: str | None
    untrained_fallback: bool
    metrics: dict[str, Any] | None = None
    model_mismatch_tenants: list[int] = Field(
        default_factory=list,
        description="tenants whose gallery was enrolled with another encoder: their searches answer 409 model_mismatch until the gallery is "
        "erased and enrolled again, or the matching checkpoint is served",
    )
    feature_domain: Literal["signed", "nonnegative"] = Field(
        "signed", description="where the features lie: 'nonnegative' releases with sensitivity √2·C instead of 2·C (less noise at the same ε)"
    )
    track_scoring: Literal["likelihood", "cosine"] = Field(
        "cosine", description="how grouped search scores noisy groups: the checkpoint's noise-aware likelihood ratio, or cosine"
    )
    members: list[str] = Field(default_factory=list, description="an ensemble's member checkpoint files (empty for a single encoder)")
    backend: str = Field("torch", description="the runtime that computes features: torch, onnxruntime or openvino")


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: Literal["ok"]


class ReadyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ready": True, "checks": {"model": True, "database": True, "indexes": True}, "model_mismatch_tenants": []}]}
    )
    ready: bool
    checks: dict[str, bool]
    model_mismatch_tenants: list[int] = Field(
        default_factory=list, description="tenants whose gallery another encoder made: their searches answer 409 model_mismatch"
    )


RatePerSecond = Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(_whole_number)]
_RATE_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 1_000_000}


class RateLimitsIn(StrictIn):
    """Per-key rate limits for this tenant's keys (replaces the tenant's overrides). A field left out: the service
    default (REID_RATE_REQUESTS_PER_SECOND, REID_RATE_CROPS_PER_SECOND); 0: unlimited."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"requests_per_second": 20, "crops_per_second": 200}, {}]})
    requests_per_second: Annotated[RatePerSecond | None, optional(_RATE_SCHEMA), BeforeValidator(not_null)] = Field(
        None, description="requests per second per key; leave out for the service default"
    )
    crops_per_second: Annotated[RatePerSecond | None, optional(_RATE_SCHEMA), BeforeValidator(not_null)] = Field(
        None, description="crops (enrolled or searched) per second per key, over a 10 s window; leave out for the service default"
    )


class RateLimitsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"requests_per_second": 20, "crops_per_second": 1000, "requests_per_second_default": False, "crops_per_second_default": True}
            ]
        }
    )
    requests_per_second: int = Field(description="in force for each key of the tenant (0: unlimited)")
    crops_per_second: int = Field(description="in force for each key of the tenant (0: unlimited)")
    requests_per_second_default: bool = Field(description="true: the service default applies (no override)")
    crops_per_second_default: bool = Field(description="true: the service default applies (no override)")
