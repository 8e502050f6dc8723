"""HTTP helpers for API tests."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ADMIN_KEY, jpeg_bytes

ADMIN = {"X-Admin-Key": ADMIN_KEY}


def make_tenant(client: Any, name: str, epsilon: float | str = "inf", **policy: Any) -> tuple[int, str]:
    response = client.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    r = client.put(f"/v1/admin/tenants/{tenant_id}/privacy", json={"epsilon": epsilon, "delta": 1e-5, **policy}, headers=ADMIN)
    assert r.status_code == 200, r.text
    key = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"label": "test"}, headers=ADMIN)
    assert key.status_code == 201, key.text
    return tenant_id, key.json()["api_key"]


def meta(camera: str = "cam-1", **extra: Any) -> dict[str, Any]:
    return {"camera_id": camera, "captured_at": "2026-11-26T08:00:00Z", **extra}


def enroll(client: Any, key: str, seeds: list[int], metas: list[dict[str, Any]] | None = None) -> Any:
    files = [("images", (f"crop{s}.jpg", jpeg_bytes(s), "image/jpeg")) for s in seeds]
    metas = metas if metas is not None else [meta() for _ in seeds]
    return client.post("/v1/gallery", files=files, data={"metadata": json.dumps(metas)}, headers={"X-API-Key": key})


def search(client: Any, key: str, seed: int, k: int = 5, **form: Any) -> Any:
    files = {"image": ("q.jpg", jpeg_bytes(seed), "image/jpeg")}
    return client.post("/v1/search", files=files, data={"k": str(k), **form}, headers={"X-API-Key": key})


def count(client: Any, key: str) -> int:
    items, after = 0, 0
    while True:
        page = client.get("/v1/gallery", params={"limit": 1000, "after_id": after}, headers={"X-API-Key": key}).json()
        items += len(page["items"])
        if page["next_after_id"] is None:
            return items
        after = page["next_after_id"]


def dumps(value: Any) -> str:
    return json.dumps(value)
