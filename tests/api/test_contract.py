"""The contract of issue 10: what the OpenAPI document says, and the strict input rules, one regression test each."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.api.helpers import ADMIN, enroll, make_tenant, meta
from tests.conftest import jpeg_bytes

BIG = str(2**63)


def test_openapi_documents_errors_security_and_media_types(client):
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["AdminKey"]["name"] == "X-Admin-Key"
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # 422 answers use the error envelope
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path not in ("/readyz",):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
                    assert response["content"]["application/json"]["examples"], (method, path, status)
            if path.startswith("/v1/admin"):
                assert operation["security"] == [{"AdminKey": []}] and {"401", "403"} <= set(operation["responses"]), (method, path)
            elif path.startswith("/v1/gallery") or path == "/v1/search":
                assert operation["security"] == [{"ApiKey": []}], (method, path)
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
                assert "Retry-After" in operation["responses"]["429"]["headers"]
    for path in ("/v1/gallery", "/v1/search"):
        post = doc["paths"][path]["post"]["responses"]
        assert "Retry-After" in post["503"]["headers"] and "overloaded" in post["503"]["description"]
        assert "model_mismatch" in post["409"]["description"]
    metrics = doc["paths"]["/metrics"]["get"]
    assert list(metrics["responses"]["200"]["content"]) == ["text/plain"] and metrics["security"] == [{"AdminKey": []}]
    assert "text/html" in doc["paths"]["/console"]["get"]["responses"]["200"]["content"]
    for name in ("PolicyIn", "TenantIn", "EraseIn", "TenantOut", "ItemOut", "AuditOut", "KeyIssued"):
        assert doc["components"]["schemas"][name].get("examples"), name


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/gallery/{BIG}",
        f"/v1/gallery?after_id={BIG}",
        f"/v1/admin/tenants/{BIG}",
        f"/v1/admin/tenants/1/keys/{BIG}",
        f"/v1/admin/audit?tenant_id={BIG}",
    ],
)
def test_ids_beyond_the_64_bit_range_are_refused_not_500(client, path):
    _, key = make_tenant(client, "ids")
    response = client.request("DELETE" if "/keys/" in path else "GET", path, headers={**ADMIN, "X-API-Key": key})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("epsilon", ["0", "-1", "nan", "-inf", "inf", "true", "1e309"])
def test_tradeoff_refuses_non_positive_and_non_finite_epsilon(client, epsilon):
    tenant_id, _ = make_tenant(client, "tradeoff")
    response = client.get(f"/v1/admin/tenants/{tenant_id}/privacy/tradeoff", params={"epsilon": epsilon}, headers=ADMIN)
    assert response.status_code == 422


def test_tradeoff_never_extrapolates(client):
    from app.services.calibration import load_calibration
    from models import DEFAULT_CHECKPOINT

    client.app.state.reid.calibration = load_calibration(DEFAULT_CHECKPOINT)
    tenant_id, _ = make_tenant(client, "tradeoff-range", epsilon=8.0)
    points = client.get(f"/v1/admin/tenants/{tenant_id}/privacy/tradeoff", params={"epsilon": [1e4, 64]}, headers=ADMIN).json()["points"]
    assert points[0]["within_calibration"] is False and points[0]["rank1"] is None and points[0]["interpolated"] is False
    assert points[1]["within_calibration"] is True and points[1]["rank1"] > 0


@pytest.mark.parametrize(("depth", "status"), [(8, 201), (9, 422), (260, 422), (1000, 422), (100_000, 422)])
def test_attributes_depth_is_bounded_at_input(client, depth, status):
    _, key = make_tenant(client, "deep")
    attributes = '{"n": ' * (depth - 1) + '{"leaf": 1}' + "}" * (depth - 1)  # built as text: json.dumps would recurse
    raw = f'[{{"camera_id": "c", "captured_at": "2026-11-26T08:00:00Z", "attributes": {attributes}}}]'
    files = [("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))]
    response = client.post("/v1/gallery", files=files, data={"metadata": raw}, headers={"X-API-Key": key})
    assert response.status_code == status, response.text[:300]
    page = client.get("/v1/gallery", headers={"X-API-Key": key})
    assert page.status_code == 200 and len(page.json()["items"]) == (1 if status == 201 else 0)


def test_attributes_size_and_non_finite_numbers(client):
    _, key = make_tenant(client, "attrs")
    assert enroll(client, key, [1], [meta(attributes={"x": "a" * 5000})]).status_code == 422
    raw = '[{"camera_id": "c", "captured_at": "2026-11-26T08:00:00Z", "attributes": {"x": NaN}}]'
    files = [("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))]
    response = client.post("/v1/gallery", files=files, data={"metadata": raw}, headers={"X-API-Key": key})
    assert response.status_code == 422 and "NaN" in response.json()["error"]["message"]


def test_response_timestamps_are_utc_with_z(client):
    tenant_id, _ = make_tenant(client, "times")
    keys = client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=ADMIN).json()
    revoked = client.delete(f"/v1/admin/tenants/{tenant_id}/keys/{keys[0]['id']}", headers=ADMIN).json()
    tenant = client.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).json()
    entry = client.get("/v1/admin/audit", headers=ADMIN).json()[0]
    for stamp in (revoked["created_at"], revoked["revoked_at"], tenant["created_at"], entry["at"]):
        assert stamp.endswith("Z"), stamp


def test_405_names_every_method_of_the_path(client):
    response = client.put("/v1/gallery/1")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == {"DELETE", "GET"}
    assert client.get("/v1/gallery/erase").headers["allow"] == "POST"


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-11-26T08:00:00", "2026-11-26", "yesterday"])
def test_time_filters_need_an_rfc3339_timestamp_with_timezone(client, value):
    _, key = make_tenant(client, "filters")
    listed = client.get("/v1/gallery", params={"captured_to": value}, headers={"X-API-Key": key})
    assert listed.status_code == 422
    files = {"image": ("q.jpg", jpeg_bytes(1), "image/jpeg")}
    searched = client.post("/v1/search", files=files, data={"captured_from": value}, headers={"X-API-Key": key})
    assert searched.status_code == 422
    erased = client.post("/v1/gallery/erase", json={"before": value}, headers={"X-API-Key": key})
    assert erased.status_code == 422


def test_offsets_are_converted_to_utc(client):
    _, key = make_tenant(client, "offsets")
    ids = enroll(client, key, [1], [meta(captured_at="2026-11-26T10:00:00+02:00")]).json()["ids"]
    assert client.get(f"/v1/gallery/{ids[0]}", headers={"X-API-Key": key}).json()["captured_at"] == "2026-11-26T08:00:00Z"
    after = client.get("/v1/gallery", params={"captured_from": "2026-11-26T08:30:00+01:00"}, headers={"X-API-Key": key}).json()["items"]
    assert [h["id"] for h in after] == ids  # 07:30Z <= 08:00Z
    later = client.get("/v1/gallery", params={"captured_from": "2026-11-26T09:30:00+01:00"}, headers={"X-API-Key": key}).json()["items"]
    assert later == []  # 08:30Z > 08:00Z


@pytest.mark.parametrize(
    "body",
    [
        {"epsilon": True},
        {"epsilon": "8"},
        {"epsilon": 8, "delta": True},
        {"epsilon": 8, "subject_epsilon": 1e309},
        {"epsilon": 0.0001},
        {"epsilon": 1e5},
        {"epsilon": 8, "subject_delta": 0.5},
        {"epsilon": 8, "subject_epsilon": None},
    ],
)
def test_policy_numbers_are_finite_numbers_in_range(client, body):
    tenant_id, _ = make_tenant(client, "numbers")
    raw = json.dumps(body).replace("Infinity", "1e309")
    response = client.put(f"/v1/admin/tenants/{tenant_id}/privacy", content=raw, headers={**ADMIN, "content-type": "application/json"})
    assert response.status_code == 422, body


def test_patch_null_name_is_refused_and_null_retention_clears(client):
    created = client.post("/v1/admin/tenants", json={"name": "patchy", "retention_days": 7}, headers=ADMIN).json()
    refused = client.patch(f"/v1/admin/tenants/{created['id']}", json={"name": None}, headers=ADMIN)
    assert refused.status_code == 422 and "name cannot be null" in refused.json()["error"]["message"]
    cleared = client.patch(f"/v1/admin/tenants/{created['id']}", json={"retention_days": None}, headers=ADMIN).json()
    assert cleared["name"] == "patchy" and cleared["retention_days"] is None
    assert client.patch(f"/v1/admin/tenants/{created['id']}", json={"retention_days": True}, headers=ADMIN).status_code == 422
    assert client.patch(f"/v1/admin/tenants/{created['id']}", json={"retention_days": 30.0}, headers=ADMIN).json()["retention_days"] == 30


@pytest.mark.parametrize("bad", ["a\x00b", "tab\there", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_are_refused_in_identifiers(client, bad):
    tenant_id, key = make_tenant(client, "controls")
    assert client.post("/v1/admin/tenants", json={"name": bad}, headers=ADMIN).status_code == 422
    assert client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"label": bad}, headers=ADMIN).status_code == 422
    assert enroll(client, key, [1], [meta(camera=bad)]).status_code == 422
    assert enroll(client, key, [1], [meta(track_ref=bad)]).status_code == 422
    assert client.get("/v1/gallery", params={"camera_id": bad}, headers={"X-API-Key": key}).status_code == 422
    assert client.post("/v1/gallery/erase", json={"subject_ref": bad}, headers={"X-API-Key": key}).status_code == 422


def test_erase_needs_a_criterion(client):
    _, key = make_tenant(client, "erase")
    for body in ({}, {"subject_ref": None}):
        assert client.post("/v1/gallery/erase", json=body, headers={"X-API-Key": key}).status_code == 422


def test_chunked_body_over_the_limit_is_413(client, settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    _, key = make_tenant(client, "chunked")
    small = settings.model_copy(update={"max_request_bytes": 64 * 1024})

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n[]\r\n--b\r\n'
        for _ in range(40):
            yield b"x" * 4096

    with TestClient(create_app(small, embedder=client.app.state.reid.embedding.embedder)) as limited:
        response = limited.post("/v1/gallery", content=chunks(), headers={"X-API-Key": key, "content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
        assert limited.get("/healthz").status_code == 200


def test_metrics_need_the_admin_key_and_forget_deleted_tenants(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-Admin-Key": "wrong"}).status_code == 403
    tenant_id, key = make_tenant(client, "metered")
    assert enroll(client, key, [1]).status_code == 201
    label = f'tenant="{tenant_id}"'
    assert label in client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN['X-Admin-Key']}"}).text
    assert client.delete(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 200
    assert label not in client.get("/metrics", headers=ADMIN).text


def test_metrics_can_be_open_or_on_their_own_listener(settings, tiny_embedder):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.api.fuzzing import free_port

    port = free_port()
    configured = settings.model_copy(update={"metrics_auth": "none", "metrics_address": f"127.0.0.1:{port}"})
    with TestClient(create_app(configured, embedder=tiny_embedder)) as open_client:
        assert open_client.get("/metrics").status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "reid_http_request_seconds" in scraped.text


def test_retryable_errors_carry_retry_after_in_header_and_details():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.core.errors import Overloaded, RateLimited, install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/limited")
    def limited() -> None:
        raise RateLimited("too many requests for this key", retry_after_s=1.2)

    @app.get("/busy")
    def busy() -> None:
        raise Overloaded("encoder queue full", retry_after_s=0.05)

    with TestClient(app) as test_client:
        first = test_client.get("/limited")
        assert first.status_code == 429 and first.headers["retry-after"] == "2"
        assert first.json()["error"] == {"code": "rate_limited", "message": "too many requests for this key", "details": {"retry_after_ms": 1200}}
        second = test_client.get("/busy")
        assert second.status_code == 503 and second.headers["retry-after"] == "1" and second.json()["error"]["details"]["retry_after_ms"] == 50
    assert math.ceil(0.05 * 1000) == 50
