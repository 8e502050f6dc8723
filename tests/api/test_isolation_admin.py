"""Tenant isolation, operator API, audit log."""

from __future__ import annotations

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
