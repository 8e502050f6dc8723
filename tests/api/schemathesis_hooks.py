"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks), applied to every call of every phase.

- Operator calls that name the integrator tenant are pointed at the victim tenant instead, so destructive operations
  (delete tenant, revoke key, change policy) land on a tenant of their own and the integrator key keeps working.
  Reads (GET/HEAD) are left alone: they change nothing, and the victim may already have been deleted by an earlier
  call, which the stateful phase would otherwise report as "created resource not found" (ST302).
- Uploads whose body was generated schema-valid are sent with real JPEG crops (and, for enrollment, metadata with one
  entry per crop): JSON Schema can say "binary" and "string" but not "a decodable JPEG" or "a JSON array with one
  object per image", so random bytes would be (rightly) refused with 422 invalid_image. The other form fields are sent
  as generated. The replacement body goes through the transport's ``files``/``data`` arguments, which Schemathesis
  documents as replacing the generated body. Bodies generated schema-invalid are sent exactly as generated.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

from tests.conftest import jpeg_bytes

_MAX_IMAGES = 4


def _body_is_valid(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is None or not meta.is_negative_at(ParameterLocation.BODY)


def _form_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    params = case.path_parameters or {}
    integrator, victim = os.environ.get("REID_FUZZ_INTEGRATOR_TENANT"), os.environ.get("REID_FUZZ_VICTIM_TENANT")
    redirect = case.method.upper() not in ("GET", "HEAD") and path.startswith("/v1/admin/tenants/{tenant_id}")
    if redirect and integrator and victim and str(params.get("tenant_id")) == integrator:
        case.path_parameters = {**params, "tenant_id": int(victim)}
    if case.method.upper() != "POST" or path not in ("/v1/gallery", "/v1/search") or not isinstance(case.body, dict) or not _body_is_valid(case):
        return
    if path == "/v1/gallery":
        images = case.body.get("images")
        count = max(1, min(len(images) if isinstance(images, list) else 1, _MAX_IMAGES))
        kwargs["files"] = [("images", (f"crop{i}.jpg", jpeg_bytes(100 + i), "image/jpeg")) for i in range(count)]
        kwargs["data"] = {"metadata": json.dumps([{"camera_id": "cam-fuzz", "captured_at": "2026-11-26T08:00:00Z"} for _ in range(count)])}
    else:
        kwargs["files"] = [("image", ("query.jpg", jpeg_bytes(1), "image/jpeg"))]
        kwargs["data"] = {name: _form_value(value) for name, value in case.body.items() if name != "image"}
