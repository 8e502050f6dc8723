"""Each endpoint once, as a ``Call``: what to send and how to read the answer. The sync and async clients run them."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx

from reid_client import models

T = TypeVar("T")
ImageInput = str | Path | bytes | tuple[str, bytes] | tuple[str, bytes, str]
Timestamp = datetime | str
GroupBy = Literal["track_ref", "subject_ref"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave unchanged" for PATCH fields, distinct from None (which clears where allowed)


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    auth: Literal["api", "admin", "none"] = "api"
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda r: cls.model_validate(r.json())  # type: ignore[attr-defined,no-any-return]


def _models(cls: type[T]) -> Callable[[httpx.Response], list[T]]:
    return lambda r: [cls.model_validate(x) for x in r.json()]  # type: ignore[attr-defined]


def timestamp(value: Timestamp) -> str:
    """RFC 3339 with a timezone (the service refuses naive times)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps need a timezone, e.g. datetime.now(timezone.utc)")
    return value.isoformat()


def image_part(image: ImageInput, index: int) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) for a path, raw bytes or a (name, bytes[, type]) tuple."""
    if isinstance(image, str | Path):
        path = Path(image)
        return path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if isinstance(image, bytes):
        return f"image{index}", image, "application/octet-stream"
    if len(image) == 2:
        name, data = image  # type: ignore[misc]
        return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"
    return image  # type: ignore[return-value]


def _metadata_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if v is not None}
    if "captured_at" in out:
        out["captured_at"] = timestamp(out["captured_at"])
    return out


# -- integrator ---------------------------------------------------------------------------
def enroll(images: Sequence[ImageInput], metadata: Sequence[Mapping[str, Any]]) -> Call[models.Enrolled]:
    if len(images) != len(metadata):
        raise ValueError(f"{len(images)} images but {len(metadata)} metadata entries; give one per image")
    return Call(
        "POST",
        "/v1/gallery",
        _model(models.Enrolled),
        data={"metadata": json.dumps([_metadata_entry(m) for m in metadata])},
        files=[("images", image_part(img, i)) for i, img in enumerate(images)],
    )


def search(
    image: ImageInput | list[ImageInput],
    *,
    k: int = 10,
    group_by: GroupBy | None = None,
    camera_ids: Sequence[str] | None = None,
    captured_from: Timestamp | None = None,
    captured_to: Timestamp | None = None,
    min_score: float | None = None,
    subject_ref: str | None = None,
) -> Call[models.SearchResult | models.GroupedSearchResult]:
    data = {"k": str(k)}
    if group_by is not None:
        data["group_by"] = group_by
    if camera_ids:
        data["camera_ids"] = ",".join(camera_ids)
    if captured_from is not None:
        data["captured_from"] = timestamp(captured_from)
    if captured_to is not None:
        data["captured_to"] = timestamp(captured_to)
    if min_score is not None:
        data["min_score"] = repr(float(min_score))
    if subject_ref is not None:
        data["subject_ref"] = subject_ref

    def parse(response: httpx.Response) -> models.SearchResult | models.GroupedSearchResult:
        body = response.json()
        return models.GroupedSearchResult.model_validate(body) if body.get("group_by") else models.SearchResult.model_validate(body)

    images = image if isinstance(image, list) else [image]  # a list: one query track (the crops' mean feature)
    return Call("POST", "/v1/search", parse, data=data, files=[("image", image_part(img, i)) for i, img in enumerate(images)])


def list_items(
    *,
    limit: int = 100,
    after_id: int = 0,
    camera_id: str | None = None,
    subject_ref: str | None = None,
    captured_from: Timestamp | None = None,
    captured_to: Timestamp | None = None,
) -> Call[models.ItemPage]:
    params = [("limit", str(limit)), ("after_id", str(after_id))]
    for name, value in (("camera_id", camera_id), ("subject_ref", subject_ref)):
        if value is not None:
            params.append((name, value))
    for name, stamp in (("captured_from", captured_from), ("captured_to", captured_to)):
        if stamp is not None:
            params.append((name, timestamp(stamp)))
    return Call("GET", "/v1/gallery", _model(models.ItemPage), params=params)


def get_item(item_id: int) -> Call[models.Item]:
    return Call("GET", f"/v1/gallery/{int(item_id)}", _model(models.Item))


def delete_item(item_id: int) -> Call[int]:
    return Call("DELETE", f"/v1/gallery/{int(item_id)}", lambda r: int(r.json()["deleted"]))


def erase(*, subject_ref: str | None = None, before: Timestamp | None = None) -> Call[int]:
    body: dict[str, Any] = {}
    if subject_ref is not None:
        body["subject_ref"] = subject_ref
    if before is not None:
        body["before"] = timestamp(before)
    if not body:
        raise ValueError("give subject_ref and/or before")
    return Call("POST", "/v1/gallery/erase", lambda r: int(r.json()["deleted"]), json=body)


# -- operator -------------------------------------------------------------------------------
def create_tenant(name: str, *, retention_days: int | None = None) -> Call[models.Tenant]:
    body: dict[str, Any] = {"name": name}
    if retention_days is not None:
        body["retention_days"] = retention_days
    return Call("POST", "/v1/admin/tenants", _model(models.Tenant), auth="admin", json=body)


def list_tenants() -> Call[list[models.Tenant]]:
    return Call("GET", "/v1/admin/tenants", _models(models.Tenant), auth="admin")


def get_tenant(tenant_id: int) -> Call[models.Tenant]:
    return Call("GET", f"/v1/admin/tenants/{int(tenant_id)}", _model(models.Tenant), auth="admin")


def update_tenant(tenant_id: int, *, name: str = UNSET, retention_days: int | None = UNSET) -> Call[models.Tenant]:
    """Change what is given; ``retention_days=None`` removes the retention limit."""
    body: dict[str, Any] = {}
    if name is not UNSET:
        body["name"] = name
    if retention_days is not UNSET:
        body["retention_days"] = retention_days
    return Call("PATCH", f"/v1/admin/tenants/{int(tenant_id)}", _model(models.Tenant), auth="admin", json=body)


def delete_tenant(tenant_id: int) -> Call[models.TenantDeleted]:
    return Call("DELETE", f"/v1/admin/tenants/{int(tenant_id)}", _model(models.TenantDeleted), auth="admin")


def issue_key(tenant_id: int, *, label: str | None = None) -> Call[models.IssuedKey]:
    body = {"label": label} if label is not None else {}
    return Call("POST", f"/v1/admin/tenants/{int(tenant_id)}/keys", _model(models.IssuedKey), auth="admin", json=body)


def list_keys(tenant_id: int) -> Call[list[models.Key]]:
    return Call("GET", f"/v1/admin/tenants/{int(tenant_id)}/keys", _models(models.Key), auth="admin")


def revoke_key(tenant_id: int, key_id: int) -> Call[models.Key]:
    return Call("DELETE", f"/v1/admin/tenants/{int(tenant_id)}/keys/{int(key_id)}", _model(models.Key), auth="admin")


def get_privacy(tenant_id: int) -> Call[models.Policy]:
    return Call("GET", f"/v1/admin/tenants/{int(tenant_id)}/privacy", _model(models.Policy), auth="admin")


def set_privacy(
    tenant_id: int,
    *,
    epsilon: float | Literal["inf"],
    delta: float = 1e-5,
    subject_epsilon: float | None = None,
    subject_delta: float | None = None,
    pool_tracks: bool | None = None,
) -> Call[models.Policy]:
    body: dict[str, Any] = {"epsilon": epsilon, "delta": delta}
    if pool_tracks is not None:  # left out: the server keeps its setting (and a server before it accepts the call)
        body["pool_tracks"] = pool_tracks
    if subject_epsilon is not None:
        body["subject_epsilon"] = subject_epsilon
    if subject_delta is not None:
        body["subject_delta"] = subject_delta
    return Call("PUT", f"/v1/admin/tenants/{int(tenant_id)}/privacy", _model(models.Policy), auth="admin", json=body)


def tradeoff(tenant_id: int, epsilons: Sequence[float] | None = None) -> Call[models.Tradeoff]:
    params = [("epsilon", repr(float(e))) for e in epsilons or ()]
    return Call("GET", f"/v1/admin/tenants/{int(tenant_id)}/privacy/tradeoff", _model(models.Tradeoff), auth="admin", params=params)


def audit(*, tenant_id: int | None = None, limit: int = 100, before_id: int | None = None) -> Call[list[models.AuditEntry]]:
    params = [("limit", str(limit))]
    if tenant_id is not None:
        params.append(("tenant_id", str(tenant_id)))
    if before_id is not None:
        params.append(("before_id", str(before_id)))
    return Call("GET", "/v1/admin/audit", _models(models.AuditEntry), auth="admin", params=params)


# -- operations -----------------------------------------------------------------------------
def health() -> Call[bool]:
    return Call("GET", "/healthz", lambda r: r.json().get("status") == "ok", auth="none")


def ready() -> Call[models.Ready]:
    return Call("GET", "/readyz", _model(models.Ready), auth="none")


def model() -> Call[models.ModelInfo]:
    return Call("GET", "/v1/model", _model(models.ModelInfo), auth="none")


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda r: r.text, auth="admin")
