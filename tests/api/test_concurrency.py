"""Many clients at once on one tenant, backpressure (503 overloaded), per-key rate limits (429), checks before the
encoder pass, UTC instants on both backends, and the encoder identity of a gallery (409 model_mismatch)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter

import httpx
import pytest

from tests.api.helpers import ADMIN, count, enroll, make_tenant, meta, search
from tests.conftest import ADMIN_KEY, jpeg_bytes

ALLOWED_REFUSALS = {429, 503}


def test_forty_clients_mixing_enrollments_and_searches_get_no_errors(settings, tiny_embedder):
    """40 threads, half enrolling batches of 4 crops with a subject_ref, half searching, on one tenant at ε = 64, with
    a pool of only 8 connections (4 worker threads): nothing but 2xx or documented 429/503, and SQL = index = acked."""
    from app.main import create_app
    from tests.api.fuzzing import serve

    settings = settings.model_copy(update={"worker_threads": 4, "encoder_queue_crops": 64})
    statuses: Counter[int] = Counter()
    acknowledged: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()
    with serve(create_app(settings, embedder=tiny_embedder)) as base:
        with httpx.Client(base_url=base, timeout=60) as http:
            tenant = http.post("/v1/admin/tenants", json={"name": "busy"}, headers=ADMIN).json()["id"]
            http.put(f"/v1/admin/tenants/{tenant}/privacy", json={"epsilon": 64, "delta": 1e-5}, headers=ADMIN).raise_for_status()
            key = http.post(f"/v1/admin/tenants/{tenant}/keys", json={}, headers=ADMIN).json()["api_key"]

        def client(n: int) -> None:
            with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": key}) as http:
                for round_ in range(3):
                    seed = 1000 * n + 10 * round_
                    if n % 2:
                        files = [("images", (f"{seed + i}.jpg", jpeg_bytes(seed + i), "image/jpeg")) for i in range(4)]
                        metadata = json.dumps([meta(f"cam-{n}", subject_ref=f"person-{n}-{round_}") for _ in range(4)])
                        response = http.post("/v1/gallery", files=files, data={"metadata": metadata})
                    else:
                        response = http.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(seed), "image/jpeg")}, data={"k": "5"})
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code == 201:
                            acknowledged.extend(response.json()["ids"])
                        elif response.status_code in ALLOWED_REFUSALS:
                            if "Retry-After" not in response.headers:
                                problems.append(f"{response.status_code} without Retry-After")
                        elif response.status_code != 200:
                            problems.append(f"{response.status_code}: {response.text[:300]}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not problems, (statuses, problems[:5])
        assert statuses[201] + statuses[200] > 0
        with httpx.Client(base_url=base, timeout=60) as http:
            info = http.get(f"/v1/admin/tenants/{tenant}", headers=ADMIN).json()
    assert info["gallery_size"] == info["index_size"] == len(acknowledged) == len(set(acknowledged))


def test_a_burst_of_listings_never_holds_every_connection(settings, tiny_embedder):
    """A route's session closes when the route function returns, before the response is validated and sent. Held until
    after (a worker thread is needed to validate), 60 listings at once with 2 worker threads and 6 connections locked
    the pool: finished requests held every connection while waiting for a thread, and the threads waited for a
    connection until the pool timed out (500, then 503). Now every request gets its 200."""
    from app.main import create_app
    from tests.api.fuzzing import serve

    settings = settings.model_copy(update={"worker_threads": 2, "rate_requests_per_second": 0})
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    with serve(create_app(settings, embedder=tiny_embedder)) as base:
        with httpx.Client(base_url=base, timeout=60) as http:
            tenant = http.post("/v1/admin/tenants", json={"name": "lists"}, headers=ADMIN).json()["id"]
            key = http.post(f"/v1/admin/tenants/{tenant}/keys", json={}, headers=ADMIN).json()["api_key"]
        barrier = threading.Barrier(60, timeout=120)

        def lister(n: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as http:
                barrier.wait()
                for _ in range(3):
                    response = http.get("/v1/gallery?limit=1", headers={"X-API-Key": key}) if n % 2 else http.get("/v1/admin/tenants", headers=ADMIN)
                    with lock:
                        statuses[response.status_code] += 1

        threads = [threading.Thread(target=lister, args=(n,)) for n in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == Counter({200: 180}), statuses


def test_full_encoder_queue_answers_503_with_retry_after(client, monkeypatch):
    """A full queue refuses searches and enrolments at once, before any crop is decoded."""
    from app.api.routes import gallery

    _, key = make_tenant(client, "queue")
    embedding = client.app.state.reid.embedding
    decoded: list[str] = []
    real_decode = gallery.decode_crop
    monkeypatch.setattr(gallery, "decode_crop", lambda *a, **kw: decoded.append("crop") or real_decode(*a, **kw))
    embedding.max_queue_crops, embedding.pending_crops = 4, 4  # as if 4 crops were waiting
    try:
        response = search(client, key, 1)
        refused_enrolment = enroll(client, key, [2, 3])
    finally:
        embedding.pending_crops = 0
    assert refused_enrolment.status_code == 503 and "Retry-After" in refused_enrolment.headers and not decoded
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["Retry-After"]) >= 1 and response.json()["error"]["details"]["retry_after_ms"] > 0
    assert search(client, key, 1).status_code == 200


def test_embedding_queue_is_bounded(tiny_embedder):
    import asyncio

    import torch

    from app.core.errors import Overloaded
    from app.services.embedding import EmbeddingService

    crops = [torch.zeros((3, 64, 32), dtype=torch.uint8)] * 4

    async def scenario() -> list[object]:
        service = EmbeddingService(embedder=tiny_embedder, batch_size=64, mode="microbatch", max_queue_crops=6)
        try:
            return await asyncio.gather(*(service.embed(crops) for _ in range(3)), return_exceptions=True)
        finally:
            service.close()

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 2 and all(r.retry_after_s and r.retry_after_s > 0 for r in refused)  # an idle encoder takes the first


def test_per_key_rate_limits_with_operator_overrides(client):
    tenant_id, key = make_tenant(client, "limited")
    defaults = client.get(f"/v1/admin/tenants/{tenant_id}/limits", headers=ADMIN).json()
    assert defaults["requests_per_second_default"] and defaults["crops_per_second_default"]
    r = client.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"requests_per_second": 2}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["requests_per_second"] == 2 and not r.json()["requests_per_second_default"]
    answers = [client.get("/v1/gallery", headers={"X-API-Key": key}) for _ in range(4)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and limited[0].json()["error"]["code"] == "rate_limited" and int(limited[0].headers["Retry-After"]) >= 1
    # crops: 1 per second over a 10 s window = 10 crops; a third batch of 4 is refused, before any encoding
    client.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"crops_per_second": 1}, headers=ADMIN)
    codes = [enroll(client, key, [1, 2, 3, 4]).status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert enroll(client, key, list(range(11))).status_code == 413  # can never fit the window (max_batch is 8 here: 413 either way)
    client.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"crops_per_second": 0, "requests_per_second": 0}, headers=ADMIN)
    assert all(client.get("/v1/gallery", headers={"X-API-Key": key}).status_code == 200 for _ in range(5))
    assert client.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"requests_per_second": -1}, headers=ADMIN).status_code == 422
    assert client.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"requests_per_second": None}, headers=ADMIN).status_code == 422


def test_refusals_cost_no_encoder_pass(client):
    _, key = make_tenant(client, "prechecked", epsilon=8.0, subject_epsilon=8.0)
    state = client.app.state.reid

    async def no_encoding(crops):
        raise AssertionError("the encoder ran for a request that is refused")

    assert enroll(client, key, [1], [meta(subject_ref="p")]).status_code == 201
    original, state.embedding.embed = state.embedding.embed, no_encoding
    try:
        over = enroll(client, key, [2, 3, 4, 5], [meta(subject_ref="p")] * 4)
        assert over.status_code == 409 and over.json()["error"]["code"] == "privacy_budget_exceeded"
        other = client.post("/v1/admin/tenants", json={"name": "no-policy"}, headers=ADMIN).json()["id"]
        other_key = client.post(f"/v1/admin/tenants/{other}/keys", json={}, headers=ADMIN).json()["api_key"]
        refused = enroll(client, other_key, [1])
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    finally:
        state.embedding.embed = original


def test_offsets_are_stored_as_utc_on_every_backend(client):
    _, key = make_tenant(client, "zones")
    headers = {"X-API-Key": key}
    ids = enroll(client, key, [1, 2], [meta(captured_at="2026-11-26T08:00:00+02:00"), meta(captured_at="2026-11-26T07:00:00Z")]).json()["ids"]
    assert client.get(f"/v1/gallery/{ids[0]}", headers=headers).json()["captured_at"] == "2026-11-26T06:00:00Z"
    listed = client.get("/v1/gallery", params={"captured_to": "2026-11-26T08:30:00+02:00"}, headers=headers).json()["items"]
    assert [i["id"] for i in listed] == [ids[0]]  # 06:30Z: the 06:00Z item only
    found = search(client, key, 1, k=5, captured_from="2026-11-26T06:00:00Z", captured_to="2026-11-26T06:00:00Z").json()["hits"]
    assert [h["id"] for h in found] == [ids[0]]
    erased = client.post("/v1/gallery/erase", json={"before": "2026-11-26T08:00:01+02:00"}, headers=headers).json()
    assert erased == {"deleted": 1} and count(client, key) == 1


def test_filtered_search_uses_a_selector_not_a_growing_fetch(client):
    _, key = make_tenant(client, "needle")
    enroll(client, key, list(range(8)), [meta("hay") for _ in range(8)])
    enroll(client, key, [100], [meta("needle")])
    hits = search(client, key, 3, k=5, camera_ids="needle").json()["hits"]
    assert [h["camera_id"] for h in hits] == ["needle"]
    assert search(client, key, 3, k=5, camera_ids="nowhere").json()["hits"] == []


def test_a_gallery_made_by_another_encoder_is_not_searched_with_this_one(settings, tiny_embedder):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, embedder=tiny_embedder)) as first:
        tenant_id, key = make_tenant(first, "old-model")
        assert enroll(first, key, [1, 2]).status_code == 201
    other = dataclasses.replace(tiny_embedder, sha256="f" * 64)
    with TestClient(create_app(settings, embedder=other)) as second:
        refused = search(second, key, 1)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_mismatch"
        assert "erase" in refused.json()["error"]["message"] and "REID_CHECKPOINT" in refused.json()["error"]["message"]
        assert enroll(second, key, [3]).json()["error"]["code"] == "model_mismatch"
        assert second.get("/readyz").json()["model_mismatch_tenants"] == [tenant_id]
        assert second.get("/v1/model").json()["model_mismatch_tenants"] == [tenant_id]
        # The documented fix: erase the gallery, enroll again with the serving encoder.
        erased = second.post("/v1/gallery/erase", json={"before": "9999-12-31T00:00:00Z"}, headers={"X-API-Key": key})
        assert erased.json() == {"deleted": 2}
        assert enroll(second, key, [1]).status_code == 201 and search(second, key, 1).status_code == 200
        assert second.get("/v1/model").json()["model_mismatch_tenants"] == []


@pytest.mark.parametrize("workers", ["2"])
def test_serve_refuses_several_workers_on_sqlite(workers, tmp_path, monkeypatch):
    from app.cli import main
    from app.core.config import get_settings

    monkeypatch.setenv("REID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REID_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("REID_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--workers", workers])
    finally:
        get_settings.cache_clear()
    assert exit_.value.code == 2


def test_an_unexpected_error_is_a_counted_500_in_the_envelope(settings, tiny_embedder, monkeypatch):
    """A bug surfaces as 500 ``internal`` in the error envelope (no trace in the body) and is counted in the metrics."""
    from fastapi.testclient import TestClient

    from app.api.schemas import ItemOut
    from app.main import create_app

    def broken(row):
        raise RuntimeError("secret detail of a bug")

    with TestClient(create_app(settings, embedder=tiny_embedder), raise_server_exceptions=False) as client:
        _, key = make_tenant(client, "buggy")
        item = enroll(client, key, [1]).json()["ids"][0]
        monkeypatch.setattr(ItemOut, "of", staticmethod(broken))
        response = client.get(f"/v1/gallery/{item}", headers={"X-API-Key": key})
        metrics = client.get("/metrics", headers=ADMIN).text
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal" and "secret" not in response.text
    assert 'reid_http_request_seconds_count{method="GET",route="/v1/gallery/{item_id:int}",status="500"} 1.0' in metrics
