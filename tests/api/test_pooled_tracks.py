"""Pooled track releases: the crops of one track sent in one enrollment are released as one noisy mean."""

from __future__ import annotations

import math

import numpy as np

from tests.api.helpers import ADMIN, enroll, make_tenant, meta, search


def _metas() -> list[dict]:
    return [
        meta("c1", track_ref="tA", subject_ref="alice"),
        meta("c1", track_ref="tB"),
        meta("c2", track_ref="tA", subject_ref="alice"),
        meta("c1"),  # no track: alone
        meta("c1", track_ref="tA", subject_ref="alice"),
        meta("c3", track_ref="tA", subject_ref="carol"),  # same track, another subject: not pooled with alice's
    ]


def _stored(client) -> dict[int, object]:
    from app.db.tables import GalleryItem

    with client.app.state.reid.sessions() as session:
        return {row.id: row for row in session.query(GalleryItem).all()}


def test_a_tracks_crops_in_one_enrollment_are_one_release_of_their_mean(client):
    tenant_id, key = make_tenant(client, "pooled", epsilon=8.0)
    policy = client.get(f"/v1/admin/tenants/{tenant_id}/privacy", headers=ADMIN).json()
    assert policy["pool_tracks"] is True
    response = enroll(client, key, [1, 2, 3, 4, 5, 6], _metas())
    assert response.status_code == 201, response.text
    body = response.json()
    ids = body["ids"]
    single = body["noise"]
    assert single["pooled"] == 1 and math.isclose(single["sigma"], policy["sigma"])
    [release] = body["pooled"]
    assert release["item_ids"] == [ids[0], ids[2], ids[4]] and release["track_ref"] == "tA" and release["subject_ref"] == "alice"
    noise = release["noise"]
    assert noise["pooled"] == 3 and noise["release_id"] == ids[0] and noise["epsilon"] == 8.0
    assert math.isclose(noise["sigma"], single["sigma"] / 3) and math.isclose(noise["sensitivity"], single["sensitivity"] / 3)
    rows = _stored(client)
    pooled_features = {rows[i].feature for i in release["item_ids"]}
    assert len(pooled_features) == 1  # one release, stored on each of its items
    assert all(rows[i].pooled == 3 and rows[i].release_id == ids[0] for i in release["item_ids"])
    for i in (ids[1], ids[3], ids[5]):
        assert rows[i].pooled == 1 and rows[i].release_id is None and math.isclose(rows[i].sigma, single["sigma"])
        assert rows[i].feature not in pooled_features
    item = client.get(f"/v1/gallery/{ids[2]}", headers={"X-API-Key": key}).json()
    assert item["noise"]["pooled"] == 3 and item["noise"]["release_id"] == ids[0]
    # per-record search sees the release once per item, with one score
    scores = {h["id"]: h["score"] for h in search(client, key, 1, k=6).json()["hits"]}
    assert len(scores) == 6 and len({scores[i] for i in release["item_ids"]}) == 1


def test_erasing_one_item_of_a_pooled_release_erases_the_release(client):
    tenant_id, key = make_tenant(client, "pooled-erase", epsilon=8.0)
    ids = enroll(client, key, [1, 2, 3, 4, 5, 6], _metas()).json()["ids"]
    headers = {"X-API-Key": key}
    answer = client.delete(f"/v1/gallery/{ids[2]}", headers=headers)
    assert answer.status_code == 200 and answer.json()["deleted"] == 3  # its release holds ids[0] and ids[4] too
    for i in (ids[0], ids[2], ids[4]):
        assert client.get(f"/v1/gallery/{i}", headers=headers).status_code == 404
    for i in (ids[1], ids[3], ids[5]):
        assert client.get(f"/v1/gallery/{i}", headers=headers).status_code == 200
    hits = search(client, key, 1, k=10, group_by="track_ref").json()["hits"]
    assert {h["track_ref"]: h["item_ids"] for h in hits} == {"tA": [ids[5]], "tB": [ids[1]]}
    assert client.app.state.reid.indexes.get(tenant_id).size == 3
    assert sorted(h["id"] for h in search(client, key, 1, k=10).json()["hits"]) == [ids[1], ids[3], ids[5]]


def test_pooling_is_a_policy_choice_and_never_happens_without_noise(client):
    off_id, off = make_tenant(client, "pool-off", epsilon=8.0, pool_tracks=False)
    # a policy write that leaves the switch out (a client written before it) keeps it as it is
    kept = client.put(f"/v1/admin/tenants/{off_id}/privacy", json={"epsilon": 8.0, "delta": 1e-5}, headers=ADMIN)
    assert kept.status_code == 200 and kept.json()["pool_tracks"] is False
    _, clean = make_tenant(client, "pool-clean", epsilon="inf")
    for key in (off, clean):
        body = enroll(client, key, [1, 2, 3, 4, 5, 6], _metas()).json()
        assert body["pooled"] == []
        assert all(row.pooled == 1 and row.release_id is None for row in _stored(client).values() if row.id in body["ids"])
    for wrong in ("yes", 1, None):
        bad = client.put(f"/v1/admin/tenants/{off_id}/privacy", json={"epsilon": 8.0, "pool_tracks": wrong}, headers=ADMIN)
        assert bad.status_code == 422, wrong


def test_a_pooled_release_costs_its_subject_n_squared_record_releases(client):
    """Per subject, the mean of n of its crops at σ/n is n times one record's μ: μ² n², against n for separate ones.
    A budget between the two admits the crops one by one and refuses them pooled, storing nothing."""
    from models.privacy import epsilon_for_mu
    from models.privacy.mechanism import PrivacyPolicy

    mu = PrivacyPolicy(epsilon=8.0, delta=1e-5).parameters().mu
    budget = epsilon_for_mu(3.0 * mu, 1e-5)  # 4 separate releases: μ = 2μ₁ fits; pooled: 4μ₁ does not
    metas = [meta("c1", track_ref="tZ", subject_ref="zoe") for _ in range(4)]
    _, pooled_key = make_tenant(client, "budget-pooled", epsilon=8.0, subject_epsilon=budget)
    refused = enroll(client, pooled_key, [1, 2, 3, 4], metas)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "privacy_budget_exceeded"
    assert search(client, pooled_key, 1, k=5).json()["hits"] == []
    _, separate_key = make_tenant(client, "budget-separate", epsilon=8.0, subject_epsilon=budget, pool_tracks=False)
    assert enroll(client, separate_key, [1, 2, 3, 4], metas).status_code == 201
    # pooled by pairs: 2 releases of 2 crops, μ² = 2·(2μ₁)² = 8μ₁² ≤ 9μ₁²: admitted
    _, pairs_key = make_tenant(client, "budget-pairs", epsilon=8.0, subject_epsilon=budget)
    assert enroll(client, pairs_key, [1, 2], metas[:2]).status_code == 201
    assert enroll(client, pairs_key, [3, 4], metas[2:]).status_code == 201
    assert enroll(client, pairs_key, [5], metas[:1]).status_code == 409  # 9μ₁² + μ₁² is over


def test_grouped_search_scores_a_pooled_track_with_its_true_noise(settings):
    """With the likelihood scorer, a track's noise variance is that of its mean: (σ/n)² for a pooled release, not
    σ²/n; mixed tracks (a pooled release and later crops alone) add up each release's share."""
    import torch
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.images import ImageLimits, decode_crop
    from tests.api.test_group_search import _split_sign_embedder
    from tests.conftest import jpeg_bytes

    embedder = _split_sign_embedder()
    with TestClient(create_app(settings, embedder=embedder)) as client:
        _, key = make_tenant(client, "pooled-likelihood", epsilon=8.0)
        first = enroll(
            client,
            key,
            [1, 2, 3, 4],
            [meta("c1", track_ref="tA"), meta("c1", track_ref="tA"), meta("c1", track_ref="tA"), meta("c2", track_ref="tB")],
        )
        later = enroll(client, key, [5], [meta("c1", track_ref="tA")])
        assert first.status_code == 201 and later.status_code == 201
        sigma = first.json()["noise"]["sigma"]
        rows = {i: np.frombuffer(r.feature, dtype="<f4").astype(np.float64) for i, r in _stored(client).items()}
        crop = decode_crop(jpeg_bytes(2), name="q", content_type="image/jpeg", limits=ImageLimits(10**7, 10**8, 16.0), size=(64, 32))
        query = embedder.embed(torch.stack([crop]))[0].astype(np.float64)
        answer = search(client, key, 2, k=10, group_by="track_ref").json()
        assert answer["scoring"] == "likelihood"
        noise_var = {"tA": (3**2 * (sigma / 3) ** 2 + sigma**2) / 4**2, "tB": sigma**2}  # Var of each track's plain mean
        for hit in answer["hits"]:
            mean = np.mean([rows[i] for i in hit["item_ids"]], axis=0)
            expected = embedder.track_scorer.scores(query, mean[None], np.array([noise_var[hit["track_ref"]]]))[0, 0]
            assert math.isclose(hit["score"], expected, rel_tol=1e-6, abs_tol=1e-5)


def test_a_pool_holds_at_most_the_configured_crops_so_a_flood_of_copies_is_bounded(client):
    """The same crop sent many times as one track would be released at σ/n, nearly clean: pools are capped
    (REID_POOL_MAX_CROPS) and a larger track is split into balanced pools, each at σ/size."""
    from app.services.gallery import ItemInput, plan_releases

    client.app.state.reid.gallery.pool_max_crops = 3
    _, key = make_tenant(client, "pool-cap", epsilon=8.0)
    body = enroll(client, key, [7] * 7, [meta("c1", track_ref="flood") for _ in range(7)]).json()
    sizes = sorted(len(r["item_ids"]) for r in body["pooled"])
    assert sizes == [2, 2, 3] and sorted(i for r in body["pooled"] for i in r["item_ids"]) == body["ids"]
    for release in body["pooled"]:
        n = len(release["item_ids"])
        assert release["noise"]["pooled"] == n and math.isclose(release["noise"]["sigma"], body["noise"]["sigma"] / n)
    items = [ItemInput(**meta("c1", track_ref="t")) for _ in range(33)]
    assert [len(r) for r in plan_releases(items, True, 16)] == [11, 11, 11]
    assert [len(r) for r in plan_releases(items[:16], True, 16)] == [16]
