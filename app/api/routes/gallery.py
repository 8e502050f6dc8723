"""Integrator API: enroll crops, search by image, list, get and erase gallery items."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import defer

from app.api.contract import ENCODER, JSON_BODY, LIMITED, PARAMS, TENANT_AUTH, UPLOAD, errors
from app.api.deps import SessionDep, SessionReleasingRouter, TenantDep, get_state
from app.api.schemas import (
    DIGITS,
    IDENTIFIER_SCHEMA,
    INT64_MAX,
    NO_CONTROL_CHARS,
    CountOut,
    EnrollOut,
    EraseIn,
    FiniteFloat,
    HitOut,
    Identifier,
    ItemMetadata,
    ItemOut,
    ItemPage,
    NoiseOut,
    PooledReleaseOut,
    SearchOut,
    SubjectHitOut,
    SubjectSearchOut,
    Timestamp,
    TrackHitOut,
    TrackSearchOut,
    epsilon_out,
    optional,
)
from app.core.errors import Conflict, DomainError, InvalidImage, InvalidInput, NotFound, PayloadTooLarge, PrivacyBudgetExceeded
from app.db.tables import GalleryItem
from app.services.gallery import ItemInput, SearchFilters
from app.services.groups import GroupHit
from app.services.images import ImageLimits, decode_crop
from models.privacy.mechanism import NoiseParameters

if TYPE_CHECKING:
    import torch

router = SessionReleasingRouter(prefix="/v1", tags=["gallery"])  # sync routes close their session when they return
METADATA_EXAMPLE = '[{"camera_id": "cam-1", "captured_at": "2026-11-26T08:00:00Z", "subject_ref": "track-17"}]'
K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 100}
TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time"}
ItemId = Annotated[int, Path(ge=1, le=INT64_MAX, description="gallery item id", examples=[42])]


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _parse_metadata(raw: str, count: int) -> list[ItemMetadata]:
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # NaN / Infinity
        raise InvalidInput(f"metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("metadata is nested too deeply") from None
    if not isinstance(data, list):
        raise InvalidInput("metadata must be a JSON array with one object per image, in order")
    if len(data) != count:
        raise InvalidInput(f"metadata has {len(data)} entries for {count} images; send one object per image")
    parsed, errors = [], []
    for i, entry in enumerate(data):
        try:
            parsed.append(ItemMetadata.model_validate(entry))
        except ValidationError as exc:
            errors.append({"item": i, "errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]})
    if errors:
        raise InvalidInput(f"invalid metadata for {len(errors)} item(s); nothing was stored", details=errors)
    return parsed


def _camera_ids(field: str | None) -> list[str] | None:
    """The comma-separated ``camera_ids`` filter; given but naming no camera is an error, not "no camera"."""
    if field is None or field == "":
        return None
    ids = [c.strip() for c in field.split(",") if c.strip()]
    if not ids:
        raise InvalidInput(f"camera_ids names no camera ({field!r}): give comma-separated camera ids, or leave it out")
    return ids


async def _decode_all(request: Request, files: list[UploadFile]) -> list[torch.Tensor]:
    state = get_state(request)
    limits = ImageLimits(state.settings.max_image_bytes, state.settings.max_image_pixels, state.settings.max_image_aspect)
    size = state.embedding.input_size
    decode_on = state.settings.image_decode
    payloads = [(await f.read(), f.filename or f"image[{i}]", f.content_type) for i, f in enumerate(files)]

    def decode() -> tuple[list[torch.Tensor], list[tuple[int, DomainError]]]:
        crops: list[torch.Tensor] = []
        errors: list[tuple[int, DomainError]] = []
        for i, (data, name, ctype) in enumerate(payloads):
            try:
                crops.append(decode_crop(data, name=f"image[{i}] ({name})", content_type=ctype, limits=limits, size=size, decode=decode_on))
            except DomainError as exc:
                errors.append((i, exc))
        return crops, errors

    crops, errors = await run_in_threadpool(decode)
    if errors:
        first = errors[0][1]
        # One status for the batch: the shared one, else 422 invalid_image; details give each item's own code.
        kind = type(first) if len({type(exc) for _, exc in errors}) == 1 else InvalidImage
        raise kind(
            f"{len(errors)} of {len(files)} image(s) rejected; nothing was stored. First: {first.message}",
            details=[{"item": i, "code": exc.code, "message": exc.message} for i, exc in errors],
        )
    return crops


@router.post(
    "/gallery",
    response_model=EnrollOut,
    status_code=201,
    summary="Enroll crops (atomic: all or none)",
    responses=errors(*TENANT_AUTH, *UPLOAD, *LIMITED, *ENCODER, Conflict, PrivacyBudgetExceeded),
)
async def enroll(
    request: Request,
    tenant: TenantDep,
    images: Annotated[list[UploadFile], File(description="crops: JPEG, PNG or WebP")],
    metadata: Annotated[str, Form(description="JSON array, one object per image, in order", examples=[METADATA_EXAMPLE])],
) -> EnrollOut:
    state = get_state(request)
    if len(images) > state.settings.max_batch:
        raise PayloadTooLarge(f"{len(images)} images exceeds the batch limit of {state.settings.max_batch}")
    state.rate_limiter.crops(tenant.key_id, tenant.crops_per_second, len(images))
    state.embedding.admit(len(images))  # an overloaded encoder refuses before anything is decoded
    items_meta = _parse_metadata(metadata, len(images))
    items = [ItemInput(**m.model_dump()) for m in items_meta]
    # Policy, encoder and budgets before the encoder pass: a refused request costs no encoding.
    await run_in_threadpool(state.gallery.precheck_enroll, tenant.tenant_id, items)
    crops = await _decode_all(request, images)
    started = time.perf_counter()
    features = await state.embedding.embed(crops)
    state.metrics.embed_seconds.labels("enroll").observe(time.perf_counter() - started)
    state.metrics.images_embedded.labels("enroll").inc(len(crops))
    state.metrics.batch_size.observe(len(crops))
    result = await run_in_threadpool(state.gallery.enroll, tenant.tenant_id, items, features)
    state.metrics.releases.labels(str(tenant.tenant_id), result.params.mechanism).inc(len(result.ids))
    state.metrics.gallery_size.labels(str(tenant.tenant_id)).set(state.indexes.get(tenant.tenant_id).size)
    if result.max_subject_mu_squared is not None:
        state.metrics.subject_mu_squared.labels(str(tenant.tenant_id)).set(result.max_subject_mu_squared)
    p = result.params
    return EnrollOut(
        ids=result.ids,
        count=len(result.ids),
        noise=noise_out(p),
        pooled=[
            PooledReleaseOut(
                item_ids=r.item_ids, track_ref=r.track_ref, subject_ref=r.subject_ref, noise=noise_out(r.params, release_id=r.item_ids[0])
            )
            for r in result.pooled
        ],
        warning="epsilon is inf: features were stored WITHOUT differential-privacy noise" if math.isinf(p.epsilon) else None,
    )


def noise_out(p: NoiseParameters, release_id: int | None = None) -> NoiseOut:
    """The answer's form of one release's parameters."""
    return NoiseOut(
        mechanism=p.mechanism,
        epsilon=epsilon_out(p.epsilon),
        delta=p.delta,
        sensitivity=p.sensitivity,
        sigma=p.sigma,
        clip_norm=p.clip_norm,
        library=p.library,
        pooled=p.pooled,
        release_id=release_id,
    )


SEARCH_DESCRIPTION = """Encode the query crop (never stored) and match it against the tenant's gallery of released (noisy) features.

Several `image` parts (up to `REID_MAX_QUERY_CROPS`, default 16) are one query track: crops of the same person, whose
features are averaged and L2-normalised into one query (steadier than any single crop).

Without `group_by` the hits are single records, best first. With `group_by=track_ref` (or `subject_ref`) the hits are
tracks (subjects): the released features of each group's records that pass the filters are averaged (post-processing:
no privacy cost; the noise of a mean of n records is 1/sqrt(n) of one record's) and scored — by the encoder's
noise-aware log-likelihood ratio when it has one and the tenant's grouped records include noisy ones (whatever the
filters), else by cosine to the normalised mean; the answer's `scoring` says which — and each hit gives the group's
score, item ids, cameras and time span. Records without that reference are not part of
grouped search. `min_score` applies to the hit's score in both modes."""
GROUP_BY_SCHEMA = {"type": "string", "enum": ["track_ref", "subject_ref"]}


@router.post(
    "/search",
    response_model=SearchOut | TrackSearchOut | SubjectSearchOut,
    summary="Search the tenant's gallery with a query crop",
    description=SEARCH_DESCRIPTION,
    responses=errors(*TENANT_AUTH, *UPLOAD, *LIMITED, *ENCODER),
)
async def search(
    request: Request,
    tenant: TenantDep,
    image: Annotated[list[UploadFile], File(description="query crop (never stored); repeat the part for a query track of one person")],
    k: Annotated[int | None, Form(ge=1, le=100, description="hits to return (default 10)"), optional(K_SCHEMA), DIGITS] = None,
    camera_ids: Annotated[
        str | None,
        Form(max_length=4000, pattern=NO_CONTROL_CHARS, description="comma-separated camera ids", examples=["cam-1,cam-2"]),
        optional({"type": "string", "maxLength": 4000, "pattern": NO_CONTROL_CHARS}),
    ] = None,
    captured_from: Annotated[Timestamp | None, Form(description="RFC 3339 with a timezone"), optional(TIMESTAMP_SCHEMA)] = None,
    captured_to: Annotated[Timestamp | None, Form(description="RFC 3339 with a timezone"), optional(TIMESTAMP_SCHEMA)] = None,
    min_score: Annotated[
        FiniteFloat | None, Form(description="drop hits scoring below this (see the hit's score)"), optional({"type": "number"})
    ] = None,
    subject_ref: Annotated[Identifier | None, Form(), optional(IDENTIFIER_SCHEMA)] = None,
    group_by: Annotated[
        Literal["track_ref", "subject_ref"] | None,
        Form(description="hits are tracks (track_ref) or subjects (subject_ref), each the mean of its records; leave out for records"),
        optional(GROUP_BY_SCHEMA),
    ] = None,
) -> SearchOut | TrackSearchOut | SubjectSearchOut:
    state = get_state(request)
    k = k if k is not None else 10
    if len(image) > state.settings.max_query_crops:
        raise PayloadTooLarge(f"{len(image)} query images exceeds the query-track limit of {state.settings.max_query_crops}")
    cameras = _camera_ids(camera_ids)  # every check of the request before its crops cost anything
    state.rate_limiter.crops(tenant.key_id, tenant.crops_per_second, len(image))
    state.embedding.admit(len(image))  # an overloaded encoder refuses before anything is decoded
    state.gallery.check_encoder(tenant.tenant_id)  # before the encoder pass
    crops = await _decode_all(request, image)
    started = time.perf_counter()
    query = query_track(await state.embedding.embed(crops))
    state.metrics.embed_seconds.labels("search").observe(time.perf_counter() - started)
    state.metrics.images_embedded.labels("search").inc(len(crops))
    filters = SearchFilters(
        camera_ids=cameras,
        captured_from=captured_from,
        captured_to=captured_to,
        min_score=min_score,
        subject_ref=subject_ref,
    )
    if group_by == "track_ref":
        groups, scoring = await run_in_threadpool(state.gallery.search_groups, tenant.tenant_id, query[0], k, group_by, filters)
        track_hits = [TrackHitOut(track_ref=g.key, count=len(g.item_ids), **_group_fields(g)) for g in groups]
        return TrackSearchOut(group_by=group_by, k=k, scoring=scoring, hits=track_hits)
    if group_by == "subject_ref":
        groups, scoring = await run_in_threadpool(state.gallery.search_groups, tenant.tenant_id, query[0], k, group_by, filters)
        subject_hits = [SubjectHitOut(subject_ref=g.key, count=len(g.item_ids), **_group_fields(g)) for g in groups]
        return SubjectSearchOut(group_by=group_by, k=k, scoring=scoring, hits=subject_hits)
    hits = await run_in_threadpool(state.gallery.search, tenant.tenant_id, query[0], k, filters)
    return SearchOut(k=k, hits=[HitOut(**ItemOut.of(h.item).model_dump(), score=h.score) for h in hits])


def query_track(features: np.ndarray) -> np.ndarray:
    """``[1, D]``: the L2-normalised mean of a query track's features (a single crop's feature as it is)."""
    if len(features) == 1:
        return features
    mean = features.astype(np.float64).mean(axis=0, keepdims=True)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def _group_fields(group: GroupHit) -> dict[str, Any]:
    return {"score": group.score, "item_ids": group.item_ids, "cameras": group.cameras, "first_seen": group.first_seen, "last_seen": group.last_seen}


@router.get("/gallery/{item_id:int}", response_model=ItemOut, responses=errors(*TENANT_AUTH, *PARAMS, *LIMITED, NotFound))
def get_item(item_id: ItemId, tenant: TenantDep, session: SessionDep) -> ItemOut:
    row = session.get(GalleryItem, item_id, options=[defer(GalleryItem.feature)])
    if row is None or row.tenant_id != tenant.tenant_id:
        raise NotFound(f"gallery item {item_id} not found")
    return ItemOut.of(row)


@router.get("/gallery", response_model=ItemPage, summary="List items (cursor pagination by id)", responses=errors(*TENANT_AUTH, *PARAMS, *LIMITED))
def list_items(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000), DIGITS] = 100,
    after_id: Annotated[int, Query(ge=0, le=INT64_MAX, description="the previous page's next_after_id"), DIGITS] = 0,
    camera_id: Annotated[Identifier | None, Query(), optional(IDENTIFIER_SCHEMA)] = None,
    subject_ref: Annotated[Identifier | None, Query(), optional(IDENTIFIER_SCHEMA)] = None,
    captured_from: Annotated[Timestamp | None, Query(description="RFC 3339 with a timezone"), optional(TIMESTAMP_SCHEMA)] = None,
    captured_to: Annotated[Timestamp | None, Query(description="RFC 3339 with a timezone"), optional(TIMESTAMP_SCHEMA)] = None,
) -> ItemPage:
    query = select(GalleryItem).options(defer(GalleryItem.feature)).where(GalleryItem.tenant_id == tenant.tenant_id, GalleryItem.id > after_id)
    if camera_id is not None:
        query = query.where(GalleryItem.camera_id == camera_id)
    if subject_ref is not None:
        query = query.where(GalleryItem.subject_ref == subject_ref)
    if captured_from is not None:
        query = query.where(GalleryItem.captured_at >= captured_from)
    if captured_to is not None:
        query = query.where(GalleryItem.captured_at <= captured_to)
    rows = session.scalars(query.order_by(GalleryItem.id).limit(limit + 1)).all()
    page = rows[:limit]
    return ItemPage(items=[ItemOut.of(r) for r in page], next_after_id=page[-1].id if len(rows) > limit else None)


@router.delete("/gallery/{item_id:int}", response_model=CountOut, responses=errors(*TENANT_AUTH, *PARAMS, *LIMITED, NotFound))
async def delete_item(request: Request, item_id: ItemId, tenant: TenantDep) -> CountOut:
    """Erase one item. An item of a pooled release (its ``noise.release_id``) goes with the whole release: the stored
    mean holds every one of its crops. ``deleted`` counts them all."""
    state = get_state(request)
    deleted = await run_in_threadpool(state.gallery.delete_items, tenant.tenant_id, [item_id])
    if deleted == 0:
        raise NotFound(f"gallery item {item_id} not found")
    state.metrics.gallery_size.labels(str(tenant.tenant_id)).set(state.indexes.get(tenant.tenant_id).size)
    return CountOut(deleted=deleted)


@router.post(
    "/gallery/erase",
    response_model=CountOut,
    summary="Erase items by subject and/or capture time",
    description="Erases the matching items and, with each item of a pooled release, the rest of that release (``deleted`` counts all).",
    responses=errors(*TENANT_AUTH, *JSON_BODY, *LIMITED),
)
async def erase(request: Request, body: EraseIn, tenant: TenantDep) -> CountOut:
    state = get_state(request)
    deleted = await run_in_threadpool(state.gallery.erase, tenant.tenant_id, subject_ref=body.subject_ref, before=body.before)
    state.metrics.gallery_size.labels(str(tenant.tenant_id)).set(state.indexes.get(tenant.tenant_id).size)
    return CountOut(deleted=deleted)
