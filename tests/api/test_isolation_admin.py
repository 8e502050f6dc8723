"""Tenant isolation, operator API, audit log."""

from __future__ import annotations

import json

from tests.api.helpers import ADMIN, count, enroll, make_tenant, search


def test_tenants_never_see_each_other(client):
    _, key_a = make_tenant(client, "a")
    _, key_b = make_tenant(client, "b")
    ids_a = enroll(client, key_a, [1, 2, 3]).json()["ids"]
    ids_b = enroll(client, key_b, [1, 2]).json()["ids"]
    hits_b = search(client, key_b, 1, k=100).json()["hits"]
    assert {h["id"] for h in hits_b} == set(ids_b)
    listed_b = client.get("/v1/gallery", headers={"X-API-Key": key_b}).json()["items"]
    assert {i["id"] for i in listed_b} == set(ids_b)
    for item_id in ids_a:
        assert client.get(f"/v1/gallery/{item_id}", headers={"X-API-Key": key_b}).status_code == 404
        assert client.delete(f"/v1/gallery/{item_id}", headers={"X-API-Key": key_b}).status_code == 404
    assert client.post("/v1/gallery/erase", json={"before": "2100-01-01T00:00:00Z"}, headers={"X-API-Key": key_b}).json()["deleted"] == 2
    assert count(client, key_a) == 3


def test_admin_key_required(client):
    assert client.get("/v1/admin/tenants").status_code == 401
    assert client.get("/v1/admin/tenants", headers={"X-Admin-Key": "wrong"}).status_code == 403
    _, key = make_tenant(client, "t")
    assert client.get("/v1/admin/tenants", headers={"X-API-Key": key}).status_code == 401


def test_tenant_crud_and_privacy_validation(client):
    tenant_id, key = make_tenant(client, "crud", epsilon=8.0)
    assert client.post("/v1/admin/tenants", json={"name": "crud"}, headers=ADMIN).status_code == 409
    got = client.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).json()
    assert got["privacy"]["epsilon"] == 8.0 and got["privacy"]["noise"] is True and got["privacy"]["sigma"] > 0
    patched = client.patch(f"/v1/admin/tenants/{tenant_id}", json={"name": "crud2", "retention_days": 7}, headers=ADMIN).json()
    assert patched["name"] == "crud2" and patched["retention_days"] == 7
    for bad in ({"epsilon": 0}, {"epsilon": -1}, {"epsilon": 1, "delta": 1.5}, {"epsilon": "lots"}, {"delta": 1e-5}):
        response = client.put(f"/v1/admin/tenants/{tenant_id}/privacy", json=bad, headers=ADMIN)
        assert response.status_code == 422, bad
    inf = client.put(f"/v1/admin/tenants/{tenant_id}/privacy", json={"epsilon": "inf"}, headers=ADMIN).json()
    assert inf["noise"] is False and "WITHOUT" in inf["warning"] and inf["sigma"] == 0
    enroll(client, key, [1, 2])
    deleted = client.delete(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).json()
    assert deleted == {"deleted": 1, "items_erased": 2}
    assert client.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 404
    assert client.get("/v1/gallery", headers={"X-API-Key": key}).status_code == 401
    assert client.get("/v1/admin/tenants/999999", headers=ADMIN).status_code == 404


def test_keys_listed_without_secrets_and_audit_log(client):
    tenant_id, key = make_tenant(client, "audited")
    keys = client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=ADMIN).json()
    assert len(keys) == 1 and "api_key" not in keys[0] and keys[0]["prefix"] in key
    client.put(f"/v1/admin/tenants/{tenant_id}/privacy", json={"epsilon": 4.0, "subject_epsilon": 16.0}, headers=ADMIN)
    entries = client.get("/v1/admin/audit", params={"tenant_id": tenant_id}, headers=ADMIN).json()
    actions = [e["action"] for e in entries]
    assert actions[:2] == ["privacy.update", "key.issue"] and "tenant.create" in actions
    assert entries[0]["details"]["after"]["epsilon"] == 4.0
    secret = key.split("_", 2)[2]
    assert secret not in client.get("/v1/admin/audit", headers=ADMIN).text


def test_tradeoff_without_calibration_says_so(client):
    tenant_id, _ = make_tenant(client, "tradeoff")
    body = client.get(f"/v1/admin/tenants/{tenant_id}/privacy/tradeoff", headers=ADMIN).json()
    assert body["available"] is False and "calibration" in body["reason"]


def test_new_tenant_has_no_policy_and_enrollment_is_refused_until_set(client):
    from tests.api.helpers import enroll

    created = client.post("/v1/admin/tenants", json={"name": "fresh"}, headers=ADMIN).json()
    assert created["privacy"] is None
    key = client.post(f"/v1/admin/tenants/{created['id']}/keys", json={}, headers=ADMIN).json()["api_key"]
    refused = enroll(client, key, [1])
    assert refused.status_code == 409 and "no privacy policy" in refused.json()["error"]["message"]
    assert client.get(f"/v1/admin/tenants/{created['id']}/privacy", headers=ADMIN).status_code == 409
    assert client.put(f"/v1/admin/tenants/{created['id']}/privacy", json={"epsilon": 8}, headers=ADMIN).status_code == 200
    assert enroll(client, key, [1]).status_code == 201


def test_settings_refuse_a_no_noise_default():
    import pytest
    from pydantic import ValidationError

    from app.core.config import Settings

    with pytest.raises(ValidationError):
        Settings(default_epsilon=float("inf"))


def test_logs_carry_no_keys_references_or_image_bytes(settings, tiny_embedder):
    """With uvicorn's access log on (as `reid-gallery serve` runs), an enrolment, a search and filtered listings leave
    no API or admin key, no subject or track reference, no camera id from a query string and no image bytes in any log
    line; the access lines keep method, path and status."""
    import logging

    import httpx

    from app.main import create_app
    from tests.api.fuzzing import serve
    from tests.api.helpers import ADMIN, meta
    from tests.conftest import jpeg_bytes

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    capture = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    with serve(create_app(settings, embedder=tiny_embedder), access_log=True) as base:
        loggers = [root, logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn.error")]
        for logger in loggers:
            logger.addHandler(capture)
        try:
            with httpx.Client(base_url=base, timeout=60) as http:
                tenant = http.post("/v1/admin/tenants", json={"name": "quiet"}, headers=ADMIN).json()["id"]
                http.put(f"/v1/admin/tenants/{tenant}/privacy", json={"epsilon": 64, "delta": 1e-5}, headers=ADMIN).raise_for_status()
                key = http.post(f"/v1/admin/tenants/{tenant}/keys", json={}, headers=ADMIN).json()["api_key"]
                crop = jpeg_bytes(5)
                metadata = json.dumps([meta("cam-secret-9", subject_ref="person-secret-1", track_ref="track-secret-2")])
                files = [("images", ("c.jpg", crop, "image/jpeg"))]
                assert http.post("/v1/gallery", files=files, data={"metadata": metadata}, headers={"X-API-Key": key}).status_code == 201
                query = {"image": ("q.jpg", crop, "image/jpeg")}
                assert http.post("/v1/search", files=query, data={"k": "3", "group_by": "track_ref"}, headers={"X-API-Key": key}).status_code == 200
                for params in ("subject_ref=person-secret-1", "track_ref=track-secret-2", "camera_id=cam-secret-9"):
                    assert http.get(f"/v1/gallery?{params}", headers={"X-API-Key": key}).status_code == 200
                assert http.get("/v1/gallery", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        finally:
            for logger in loggers:
                logger.removeHandler(capture)
    text = "\n".join(lines)
    assert 'GET /v1/gallery HTTP/1.1" 200' in text  # the access log is on and keeps the path
    for secret in ("person-secret-1", "track-secret-2", "cam-secret-9", key, key.split("_", 2)[-1], ADMIN["X-Admin-Key"]):
        assert secret not in text, secret
    assert crop[100:140].hex() not in text and str(crop[100:140])[2:-1] not in text


def test_a_request_whose_tenant_is_deleted_in_flight_hears_so(client):
    """An enrolment authenticated just before its tenant was deleted reaches the policy check with no tenant left: it
    is told the tenant is gone (401), not that an operator must set a policy (409)."""
    import pytest

    from app.core.errors import Conflict, Unauthorized
    from app.services.gallery import load_policy

    tenant = client.post("/v1/admin/tenants", json={"name": "no-policy-yet"}, headers=ADMIN).json()["id"]
    with client.app.state.reid.sessions() as session, pytest.raises(Conflict, match="no privacy policy yet"):
        load_policy(session, tenant)
    assert client.delete(f"/v1/admin/tenants/{tenant}", headers=ADMIN).status_code in (200, 204)
    with client.app.state.reid.sessions() as session, pytest.raises(Unauthorized, match="tenant has been deleted"):
        load_policy(session, tenant)


def test_sql_errors_never_carry_bound_values(client):
    """A failing statement's message (what a 500's trace logs) says the parameters are hidden instead of printing them:
    they can be subject or track references."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with client.app.state.reid.engine.connect() as connection, pytest.raises(DBAPIError) as failure:
        connection.execute(text("SELECT * FROM no_such_table WHERE ref = :ref"), {"ref": "person-secret-7"})
    assert "person-secret-7" not in str(failure.value) and "hidden" in str(failure.value)
