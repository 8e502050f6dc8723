"""Grouped search over HTTP: group_by=track_ref|subject_ref, filters, erasure, empty groups."""

from __future__ import annotations

import math

import numpy as np

from tests.api.helpers import ADMIN, enroll, make_tenant, meta, search

KEY_HEADERS = "X-API-Key"


def _at(minute: int) -> str:
    return f"2026-11-26T08:{minute:02d}:00Z"


def _setup(client, epsilon: float | str = "inf", pool_tracks: bool = True):
    _, key = make_tenant(client, f"groups-{epsilon}-{pool_tracks}", epsilon=epsilon, pool_tracks=pool_tracks)
    metas = [
        {"camera_id": "c1", "captured_at": _at(1), "track_ref": "tA", "subject_ref": "alice"},
        {"camera_id": "c2", "captured_at": _at(5), "track_ref": "tA", "subject_ref": "alice"},
        {"camera_id": "c1", "captured_at": _at(2), "track_ref": "tB", "subject_ref": "bob"},
        {"camera_id": "c3", "captured_at": _at(9), "track_ref": "tC", "subject_ref": "alice"},
        {"camera_id": "c1", "captured_at": _at(3)},  # no track, no subject: not part of grouped search
    ]
    response = enroll(client, key, [1, 2, 3, 4, 5], metas)
    assert response.status_code == 201, response.text
    return key, response.json()["ids"]


def test_group_by_track_averages_records_and_reports_the_group(client):
    key, ids = _setup(client)
    body = search(client, key, 1, k=10, group_by="track_ref").json()
    assert body["group_by"] == "track_ref" and body["k"] == 10 and body["scoring"] == "cosine"
    hits = body["hits"]
    assert [h["track_ref"] for h in hits][:1] == ["tA"] and {h["track_ref"] for h in hits} == {"tA", "tB", "tC"}
    first = hits[0]
    assert first["item_ids"] == sorted(ids[:2]) and first["count"] == 2
    assert first["cameras"] == ["c1", "c2"] and first["first_seen"] == _at(1) and first["last_seen"] == _at(5)
    assert "subject_ref" not in first and "id" not in first
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the score is the cosine to the normalised mean of the records: check against the per-record features
    per_record = {h["id"]: h for h in search(client, key, 1, k=10).json()["hits"]}
    assert math.isclose(per_record[ids[0]]["score"], 1.0, abs_tol=1e-4)
    assert hits[0]["score"] < 1.0 - 1e-4  # the mean of two different crops is not the query's own feature
    single = next(h for h in hits if h["track_ref"] == "tB")
    assert math.isclose(single["score"], per_record[ids[2]]["score"], abs_tol=1e-5)  # one record: its own cosine


def test_group_score_is_the_cosine_to_the_mean_of_noisy_records(client, tiny_embedder):
    """At finite ε the stored noisy features are averaged (then normalised): recompute from the stored records."""
    import torch

    from tests.conftest import jpeg_bytes

    key, _ = _setup(client, epsilon=8.0)
    hits = search(client, key, 2, k=10, group_by="track_ref").json()["hits"]
    state = client.app.state.reid
    from app.db.tables import GalleryItem

    with state.sessions() as session:
        rows = {r.id: np.frombuffer(r.feature, dtype="<f4").astype(np.float64) for r in session.query(GalleryItem).all()}
    from app.services.images import ImageLimits, decode_crop

    limits = ImageLimits(max_bytes=10**7, max_pixels=10**8, max_aspect=16.0)
    crop = decode_crop(jpeg_bytes(2), name="q", content_type="image/jpeg", limits=limits, size=tiny_embedder.input_size)
    query = tiny_embedder.embed(torch.stack([crop]))[0].astype(np.float64)
    for hit in hits:
        mean = np.sum([rows[i] for i in hit["item_ids"]], axis=0)
        expected = float(mean @ query / np.linalg.norm(mean) / np.linalg.norm(query))
        assert math.isclose(hit["score"], expected, abs_tol=1e-5)


def test_group_by_subject_and_filters(client):
    key, ids = _setup(client)
    hits = search(client, key, 1, k=10, group_by="subject_ref").json()["hits"]
    assert {h["subject_ref"] for h in hits} == {"alice", "bob"}
    alice = next(h for h in hits if h["subject_ref"] == "alice")
    assert alice["item_ids"] == sorted([ids[0], ids[1], ids[3]]) and alice["cameras"] == ["c1", "c2", "c3"] and alice["last_seen"] == _at(9)
    # camera filter: only c1's records go into the centroids; groups with none left are not hits
    by_cam = search(client, key, 1, k=10, group_by="track_ref", camera_ids="c1").json()["hits"]
    assert {h["track_ref"]: h["item_ids"] for h in by_cam} == {"tA": [ids[0]], "tB": [ids[2]]}
    assert math.isclose(by_cam[0]["score"], 1.0, abs_tol=1e-4)  # tA reduced to the query's own crop
    # time filter
    late = search(client, key, 1, k=10, group_by="track_ref", captured_from=_at(4)).json()["hits"]
    assert {h["track_ref"]: h["item_ids"] for h in late} == {"tA": [ids[1]], "tC": [ids[3]]}
    window = search(client, key, 1, k=10, group_by="subject_ref", captured_from="2026-11-26T10:00:00+02:00", captured_to=_at(2)).json()["hits"]
    assert {h["subject_ref"]: h["item_ids"] for h in window} == {"alice": [ids[0]], "bob": [ids[2]]}
    # subject filter with track grouping
    only_bob = search(client, key, 1, k=10, group_by="track_ref", subject_ref="bob").json()["hits"]
    assert [h["track_ref"] for h in only_bob] == ["tB"]
    # min_score applies to the group's score; k bounds the hits
    strict = search(client, key, 1, k=10, group_by="track_ref", min_score=0.9999).json()["hits"]
    assert all(h["score"] >= 0.9999 for h in strict)
    assert len(search(client, key, 1, k=1, group_by="track_ref").json()["hits"]) == 1


def test_erasure_removes_a_record_from_its_group(client):
    key, ids = _setup(client)
    before = search(client, key, 1, k=10, group_by="track_ref").json()["hits"]
    assert next(h for h in before if h["track_ref"] == "tA")["item_ids"] == sorted(ids[:2])
    assert client.delete(f"/v1/gallery/{ids[1]}", headers={KEY_HEADERS: key}).status_code == 200
    after = search(client, key, 1, k=10, group_by="track_ref").json()["hits"]
    track_a = next(h for h in after if h["track_ref"] == "tA")
    assert track_a["item_ids"] == [ids[0]] and track_a["cameras"] == ["c1"] and math.isclose(track_a["score"], 1.0, abs_tol=1e-4)
    # erasing a subject empties its groups: they are no longer hits
    assert client.post("/v1/gallery/erase", json={"subject_ref": "bob"}, headers={KEY_HEADERS: key}).json() == {"deleted": 1}
    assert "tB" not in {h["track_ref"] for h in search(client, key, 1, k=10, group_by="track_ref").json()["hits"]}
    assert {h["subject_ref"] for h in search(client, key, 1, k=10, group_by="subject_ref").json()["hits"]} == {"alice"}
    # new records join their group on the next search
    enroll(client, key, [7], [meta("c4", track_ref="tB")])
    again = search(client, key, 1, k=10, group_by="track_ref").json()["hits"]
    assert next(h for h in again if h["track_ref"] == "tB")["cameras"] == ["c4"]


def test_empty_gallery_no_groups_and_bad_group_by(client):
    tenant_id, key = make_tenant(client, "empty-groups")
    assert search(client, key, 1, k=5, group_by="track_ref").json() == {"group_by": "track_ref", "k": 5, "scoring": "cosine", "hits": []}
    enroll(client, key, [1, 2], [meta("c1"), meta("c2")])  # records without any reference
    assert search(client, key, 1, k=5, group_by="subject_ref").json()["hits"] == []
    assert len(search(client, key, 1, k=5).json()["hits"]) == 2  # per-record search still sees them
    bad = search(client, key, 1, k=5, group_by="camera_id")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    # a deleted tenant's groups do not come back with a new tenant
    assert client.delete(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 200


def test_groups_are_per_tenant(client):
    key_a, _ = _setup(client)
    _, key_b = make_tenant(client, "other-tenant")
    enroll(client, key_b, [1], [meta("c9", track_ref="tA")])
    hits = search(client, key_b, 1, k=10, group_by="track_ref").json()["hits"]
    assert len(hits) == 1 and hits[0]["cameras"] == ["c9"]
    assert len(search(client, key_a, 1, k=10, group_by="track_ref").json()["hits"]) == 3


def test_a_query_track_searches_with_the_normalised_mean_of_its_crops(client):
    """Two `image` parts are one query: the scores are those of the mean feature, not of either crop."""
    from tests.api.helpers import jpeg_bytes

    key, ids = _setup(client)
    headers = {KEY_HEADERS: key}
    files = [("image", ("q1.jpg", jpeg_bytes(1), "image/jpeg")), ("image", ("q3.jpg", jpeg_bytes(3), "image/jpeg"))]
    both = client.post("/v1/search", files=files, data={"k": "5"}, headers=headers)
    assert both.status_code == 200, both.text
    single = {seed: {h["id"]: h["score"] for h in search(client, key, seed, k=5).json()["hits"]} for seed in (1, 3)}
    # ε = inf: the gallery holds the crops' features, so a gallery item's score against the mean query is
    # (s1 + s3) / |f1 + f3| with |f1 + f3| = sqrt(2 + 2 s13), s13 the two query crops' own cosine.
    s13 = single[1][ids[2]]  # query crop 1 against the stored feature of crop 3
    assert len(both.json()["hits"]) == 5
    norm = math.sqrt(2 + 2 * s13)
    for hit in both.json()["hits"]:
        expected = (single[1][hit["id"]] + single[3][hit["id"]]) / norm
        assert math.isclose(hit["score"], expected, abs_tol=1e-4)
    too_many = [("image", (f"q{i}.jpg", jpeg_bytes(i), "image/jpeg")) for i in range(17)]
    refused = client.post("/v1/search", files=too_many, data={"k": "5"}, headers=headers)
    assert refused.status_code == 413 and "query-track limit of 16" in refused.json()["error"]["message"]


def _split_sign_embedder(scorer_dim: int | None = None):
    """A small random split-sign encoder (32-d features) with a fixed, valid track scorer."""
    import torch

    from models.checkpoint import Embedder
    from models.encoder import ReIDEncoder
    from models.evaluation.likelihood import TrackScorer

    torch.manual_seed(1)
    model = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, split_sign=True).eval().requires_grad_(False)
    dim = scorer_dim or model.feature_dim
    scorer = TrackScorer(np.full(dim, 0.1), 0.6 / dim * np.eye(dim), 0.4 / dim * np.eye(dim))
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "name": "split-sign-test", "split_sign": True}
    return Embedder(model=model, device=torch.device("cpu"), input_size=(64, 32), metadata=meta, untrained=True, track_scorer=scorer)


def test_a_split_sign_encoder_releases_at_sensitivity_root_two_and_scores_tracks_by_likelihood(settings):
    """Non-negative features: records carry Δ = √2 and its σ; per-record search compares the signed feature; grouped
    search scores each track by the encoder's likelihood ratio, recomputed here from the stored records."""
    import torch
    from fastapi.testclient import TestClient

    from app.db.tables import GalleryItem
    from app.main import create_app
    from app.services.images import ImageLimits, decode_crop
    from models.evaluation.likelihood import signed_features
    from models.privacy import gaussian_sigma
    from tests.conftest import jpeg_bytes

    embedder = _split_sign_embedder()
    scorer = embedder.track_scorer
    with TestClient(create_app(settings, embedder=embedder)) as client:
        key, _ = _setup(client, epsilon=8.0, pool_tracks=False)  # every record alone (pooled releases: test_pooled_tracks.py)
        tenant_privacy = client.get("/v1/admin/tenants", headers=ADMIN).json()[0]["privacy"]
        sigma = gaussian_sigma(8.0, 1e-5, math.sqrt(2))
        assert math.isclose(tenant_privacy["sensitivity"], math.sqrt(2)) and math.isclose(tenant_privacy["sigma"], sigma)
        figures = {"rank1": {"mean": 0.1}, "mAP": {"mean": 0.1}}
        client.app.state.reid.calibration = {"delta": 1e-5, "points": [{"epsilon": e, **figures} for e in (1.0, 100.0, "inf")]}
        tradeoff = client.get("/v1/admin/tenants/1/privacy/tradeoff", params={"epsilon": 8.0}, headers=ADMIN).json()
        assert math.isclose(tradeoff["points"][0]["sigma"], sigma)
        model = client.get("/v1/model").json()
        assert model["feature_domain"] == "nonnegative" and model["track_scoring"] == "likelihood" and model["embedding_dim"] == 32
        assert model["members"] == [] and model["backend"] == "torch"
        with client.app.state.reid.sessions() as session:
            stored = session.query(GalleryItem).all()
            rows = {r.id: np.frombuffer(r.feature, dtype="<f4").astype(np.float64) for r in stored}
            assert all(math.isclose(r.sensitivity, math.sqrt(2)) and math.isclose(r.sigma, sigma) for r in stored)
        limits = ImageLimits(max_bytes=10**7, max_pixels=10**8, max_aspect=16.0)
        crop = decode_crop(jpeg_bytes(2), name="q", content_type="image/jpeg", limits=limits, size=(64, 32))
        query = embedder.embed(torch.stack([crop]))[0].astype(np.float64)
        assert (query >= 0).all()
        for hit in search(client, key, 2, k=10).json()["hits"]:
            record = signed_features(rows[hit["id"]])  # the index holds unit-length copies of the signed form
            expected = float(signed_features(query) @ record / np.linalg.norm(record))
            assert math.isclose(hit["score"], expected, abs_tol=1e-4)
        answer = search(client, key, 2, k=10, group_by="track_ref").json()
        hits = answer["hits"]
        assert answer["scoring"] == "likelihood" and {h["track_ref"] for h in hits} == {"tA", "tB", "tC"}
        # a camera filter keeps the scale: still likelihood ratios, of the filtered means
        filtered = search(client, key, 2, k=10, group_by="track_ref", camera_ids="c1").json()
        assert filtered["scoring"] == "likelihood" and {h["track_ref"] for h in filtered["hits"]} == {"tA", "tB"}
        # a noise-free tenant under the same encoder: cosine (of the signed features)
        clean_key, _ = _setup(client, epsilon="inf")
        clean = search(client, clean_key, 2, k=10, group_by="track_ref").json()
        assert clean["scoring"] == "cosine" and all(-1.0 - 1e-6 <= h["score"] <= 1.0 + 1e-6 for h in clean["hits"])
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        for hit in hits:
            mean = np.mean([rows[i] for i in hit["item_ids"]], axis=0)
            expected = scorer.scores(query, mean[None], np.array([sigma**2 / len(hit["item_ids"])]))[0, 0]
            assert math.isclose(hit["score"], expected, rel_tol=1e-6, abs_tol=1e-5)


def test_likelihood_scores_undo_a_clipping_norm_below_one_and_extreme_min_scores_are_answered(settings):
    """With C = 0.5 the stored records are half-length: the scorer (a model of unit features) sees them rescaled, σ too."""
    import torch
    from fastapi.testclient import TestClient

    from app.db.tables import GalleryItem
    from app.main import create_app
    from app.services.images import ImageLimits, decode_crop
    from tests.conftest import jpeg_bytes

    embedder = _split_sign_embedder()
    with TestClient(create_app(settings.model_copy(update={"clip_norm": 0.5}), embedder=embedder)) as client:
        key, _ = _setup(client, epsilon=8.0, pool_tracks=False)
        with client.app.state.reid.sessions() as session:
            stored = session.query(GalleryItem).all()
            rows = {r.id: np.frombuffer(r.feature, dtype="<f4").astype(np.float64) for r in stored}
            sigma = stored[0].sigma
            assert all(r.clip_norm == 0.5 for r in stored)
        crop = decode_crop(jpeg_bytes(2), name="q", content_type="image/jpeg", limits=ImageLimits(10**7, 10**8, 16.0), size=(64, 32))
        query = embedder.embed(torch.stack([crop]))[0].astype(np.float64)
        answer = search(client, key, 2, k=10, group_by="track_ref").json()
        assert answer["scoring"] == "likelihood"
        for hit in answer["hits"]:
            mean = np.mean([rows[i] for i in hit["item_ids"]], axis=0) / 0.5
            expected = embedder.track_scorer.scores(query, mean[None], np.array([(sigma / 0.5) ** 2 / len(hit["item_ids"])]))[0, 0]
            assert math.isclose(hit["score"], expected, rel_tol=1e-6, abs_tol=1e-5)
        for extreme in ("1e308", "-1e308"):
            assert search(client, key, 2, k=10, min_score=extreme).status_code == 200
            assert search(client, key, 2, k=10, group_by="track_ref", min_score=extreme).status_code == 200
        assert search(client, key, 2, k=10, min_score="1e308").json()["hits"] == []


def test_a_track_scorer_that_does_not_fit_the_features_is_dropped(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, embedder=_split_sign_embedder(scorer_dim=7))) as client:
        assert client.get("/v1/model").json()["track_scoring"] == "cosine"
        key, _ = _setup(client, epsilon=8.0)
        assert search(client, key, 2, k=10, group_by="track_ref").json()["scoring"] == "cosine"


def test_the_cached_grouping_answers_as_a_fresh_one_after_every_change(settings):
    """Unfiltered grouped search reuses the tenant's grouping (and the scorer's track side) until its records change:
    after enrolments, an erasure, another replica's deletion and a pruned log, each answer equals a cold cache's."""
    from datetime import UTC, datetime, timedelta

    import torch
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from app.db.tables import GalleryItem
    from app.main import create_app
    from app.services.gallery import GalleryService
    from app.services.groups import GroupFilters, GroupSearch
    from app.services.images import ImageLimits, decode_crop
    from tests.conftest import jpeg_bytes

    embedder = _split_sign_embedder()
    with TestClient(create_app(settings, embedder=embedder)) as client:
        state = client.app.state.reid
        key, ids = _setup(client, epsilon=8.0, pool_tracks=False)  # records erased one at a time
        crop = decode_crop(jpeg_bytes(2), name="q", content_type="image/jpeg", limits=ImageLimits(10**7, 10**8, 16.0), size=(64, 32))
        query = embedder.embed(torch.stack([crop]))[0]

        def answers_agree() -> list[str]:
            served = search(client, key, 2, k=10, group_by="track_ref").json()
            cold, scoring = GroupSearch().search(
                state.sessions, 1, "track_ref", query, 10, GroupFilters(), scorer=embedder.track_scorer, split_sign=True
            )
            assert served["scoring"] == scoring == "likelihood"
            assert [(h["track_ref"], h["item_ids"]) for h in served["hits"]] == [(h.key, h.item_ids) for h in cold]
            assert np.allclose([h["score"] for h in served["hits"]], [h.score for h in cold], rtol=1e-5, atol=1e-5)
            return [h["track_ref"] for h in served["hits"]]

        assert set(answers_agree()) == {"tA", "tB", "tC"}
        (table,) = state.gallery.groups._entry(1, "track_ref").scorings
        assert table.rows_computed == 3
        answers_agree()
        assert table.rows_computed == 3  # nothing changed: nothing recomputed
        assert enroll(client, key, [6, 7], [meta("c4", track_ref="tD"), meta("c4", track_ref="tA")]).status_code == 201
        assert set(answers_agree()) == {"tA", "tB", "tC", "tD"}
        assert table.rows_computed == 5  # the two tracks that changed, not tB or tC
        # one of tA's records replaced between two searches: same count and noise, another mean
        assert client.delete(f"/v1/gallery/{ids[1]}", headers={KEY_HEADERS: key}).status_code == 200
        assert enroll(client, key, [8], [meta("c5", track_ref="tA")]).status_code == 201
        assert set(answers_agree()) == {"tA", "tB", "tC", "tD"}
        assert client.delete(f"/v1/gallery/{ids[2]}", headers={KEY_HEADERS: key}).status_code == 200
        assert "tB" not in answers_agree()
        with state.sessions() as session:  # another replica's deletion: SQL and the change log, not this cache
            (track_c,) = session.scalars(select(GalleryItem.id).where(GalleryItem.track_ref == "tC")).all()
        assert GalleryService.delete_items(state.gallery, 1, [track_c]) == 1
        assert set(answers_agree()) == {"tA", "tD"}
        # a change whose log rows are pruned before the next search: the ids are read instead of the log
        assert client.delete(f"/v1/gallery/{ids[0]}", headers={KEY_HEADERS: key}).status_code == 200
        state.gallery.prune_change_log(datetime.now(UTC) + timedelta(minutes=1))
        remaining = {tuple(h["item_ids"]) for h in search(client, key, 2, k=10, group_by="track_ref").json()["hits"]}
        assert all(ids[0] not in item_ids for item_ids in remaining)
        assert set(answers_agree()) == {"tA", "tD"}


def _fake_rows(first: int, keys: list[str], rng, dim: int = 6, sigma: float = 0.3):
    """Rows as ``_Records`` reads them from SQL: id, key, subject, camera, captured_at, feature, σ, clip norm, pooled."""
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 11, 1, tzinfo=UTC)
    features = (np.abs(rng.standard_normal((len(keys), dim))) + rng.normal(0, sigma, (len(keys), dim))).astype("<f4")
    return [
        (first + i, key, None, f"cam-{i % 3}", start + timedelta(seconds=first + i), features[i].tobytes(), sigma, 1.0, 1)
        for i, key in enumerate(keys)
    ]


def test_group_codes_are_renumbered_once_most_groups_are_gone():
    """Record caches map group keys to integer codes; once dropped records outnumber live ones the arrays are compacted,
    and when erased groups leave most codes unused they are renumbered: every kept record still names its own group."""
    from app.services.groups import _Records

    records = _Records()
    keys = [f"track-{i}" for i in range(3000)]
    records._append(_fake_rows(0, keys, np.random.default_rng(0)))
    records._drop(np.arange(100, 3000))  # 2,900 groups gone
    assert records.size == 100 and len(records.names) == 100 and records.codes[: records.size].max() == 99
    assert [records.names[c] for c in records.codes[: records.size]] == keys[:100]
    assert all(records.code_of[records.names[c]] == c for c in records.codes[: records.size])
    assert records.row_of == {i: i for i in range(100)} and records.members == [[i] for i in range(100)]
    records._drop(np.arange(90, 100))  # a few more: marked dead, no compaction below the threshold
    assert records.size == 100 and len(records.names) == 100 and records.live == 90
    # nothing of an erased record stays in memory: its feature, references and times are wiped at once
    assert not records.features[90:100].any() and set(records.cameras[90:100]) == {None} and not records.times[90:100].any()
    rows = records.live_rows()
    assert [records.names[c] for c in records.codes[rows]] == keys[:90] and records.members[95] == []


def test_incremental_group_rows_equal_a_fresh_grouping_through_appends_drops_and_compactions():
    """The cache keeps each group's scoring rows and recomputes only the groups whose records changed. Through random
    appends and drops (compactions and a renumbering included), every live group's score equals that of a grouping of
    the live records from scratch, for the likelihood scorer and for cosine, with and without split signs."""
    from app.services.groups import Grouped, _Records
    from models.evaluation.likelihood import TrackScorer

    dim = 6
    scorer = TrackScorer(np.full(dim, 0.1), 0.6 / dim * np.eye(dim), 0.4 / dim * np.eye(dim))
    for used, split in ((scorer, False), (None, False), (None, True)):
        rng = np.random.default_rng(5)
        records, next_id, names_seen, compactions, renumbered = _Records(), 0, 0, 0, False
        queries = np.abs(rng.standard_normal((3, dim)))
        for step in range(60):
            if step % 3 != 2 or records.live < 10:
                count = int(rng.integers(1, 400))
                keys = [f"t{int(k)}" for k in rng.integers(step * 40, step * 40 + 120, size=count)]  # new groups and old ones
                records._append(_fake_rows(next_id, keys, rng, dim))
                next_id += count
            else:
                live = records.live_rows()
                records._drop(rng.choice(live, size=int(live.size * rng.uniform(0.3, 0.95)), replace=False))
            compactions += records.size < next_id and records.size == records.live
            renumbered |= len(records.names) < names_seen
            names_seen = max(names_seen, len(records.names))
            live = records.live_rows()
            assert {records.names[c] for c in records.codes[live]} == {k for k, rows in zip(records.names, records.members, strict=True) if rows}
            table = records.scoring(used, split)
            codes = table.live_codes()
            emptied = np.flatnonzero(~table.valid[: table.count])
            assert not any(rows[emptied].any() for rows in table.rows.values())  # an emptied group keeps no row
            fresh = Grouped.of(records.codes[live], records.features[live], records.sigmas[live], records.scales[live], used, split)
            assert np.array_equal(codes, fresh.live)
            for query in queries:
                assert np.allclose(table.scores(query)[codes], fresh.scores(query), rtol=1e-5, atol=1e-5)
        assert records.scorings == [table] and table.rows_computed < next_id  # one table, refreshed where groups changed
        assert compactions and renumbered  # both happened along the way


def test_group_sums_gathered_in_chunks_equal_one_pass(monkeypatch):
    """A filtered search sums the kept records' features a chunk at a time (it never copies them all at once), and the
    scorer prepares groups a chunk at a time: the sums, counts and noise variances are those of one pass to the bit,
    whatever the chunks and the records' order, and the scoring rows equal those of one pass."""
    from app.services import groups
    from models.evaluation.likelihood import TrackScorer

    rng = np.random.default_rng(2)
    features = rng.standard_normal((500, 4)).astype(np.float32)
    rows = rng.choice(500, size=300, replace=False)
    group_of = rng.integers(0, 40, size=300)
    sigmas, scales = rng.uniform(0.1, 0.5, 300), rng.uniform(0.5, 1.0, 300)
    for rescale in (False, True):  # the last (rescaled, with noise) is prepared below
        whole = groups._GroupSums.of(features, rows, group_of, 40, sigmas, scales, rescale)
        monkeypatch.setattr(groups, "GATHER_CHUNK", 7)
        chunked = groups._GroupSums.of(features, rows, group_of, 40, sigmas, scales, rescale)
        monkeypatch.undo()
        order = rng.permutation(300)  # the same records in another order
        shuffled = groups._GroupSums.of(features, rows[order], group_of[order], 40, sigmas[order], scales[order], rescale)
        expected = np.zeros((40, 4))
        np.add.at(expected, group_of, features[rows] / (scales[:, None] if rescale else 1.0))
        assert np.allclose(whole.sums, expected, rtol=0, atol=1e-8)
        for other in (chunked, shuffled):  # exact: the same bits in any order and any chunking
            assert np.array_equal(other.sums, whole.sums) and np.array_equal(other.noise_var, whole.noise_var)
        assert np.array_equal(chunked.counts, np.bincount(group_of, minlength=40))
    # values near the 2³² limit: one int64 sum of their fixed-point values would overflow in a group of 10; the
    # high/low split stays exact
    huge = (np.sign(features) * 3.0e9).astype(np.float32)
    one = groups._GroupSums.of(huge, rows, group_of, 40, sigmas, scales, False)
    other = groups._GroupSums.of(huge, rows[order], group_of[order], 40, sigmas[order], scales[order], False)
    expected = np.zeros((40, 4))
    np.add.at(expected, group_of, huge[rows].astype(np.float64))
    assert np.array_equal(one.sums, other.sums) and np.allclose(one.sums, expected, rtol=1e-12, atol=0)
    # the same groups summed with a bound that forces the split, and with one that does not: the same bits
    small = features * 1e3
    unsplit = groups._GroupSums.of(small, rows, group_of, 40, sigmas, scales, True)
    forced = groups._GroupSums.of(small, rows, group_of, 40, sigmas, scales, True, largest=2.0**31)
    assert np.array_equal(unsplit.sums, forced.sums) and np.array_equal(unsplit.noise_var, forced.noise_var)
    scorer = TrackScorer(np.full(4, 0.1), 0.15 * np.eye(4), 0.1 * np.eye(4))  # the scorer's rows are prepared in chunks too
    assert len(np.unique(whole.noise_var)) > 1  # several noise levels
    prepared = scorer.prepare(whole.sums / whole.counts[:, None], whole.noise_var, dtype=np.float32)
    monkeypatch.setattr(groups, "PREPARE_CHUNK", 3)
    for name, values in whole.rows(scorer, False).items():
        assert values.shape == getattr(prepared, name).shape and np.allclose(values, getattr(prepared, name), rtol=1e-6)


def test_a_prune_between_reading_the_head_and_the_log_is_noticed(client, monkeypatch):
    """A search reads the head, then the log after its last sync. If a prune commits in between, the log has lost rows:
    the search must notice (pruned_seq re-read) and read the ids instead, or an erased record would stay a hit."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from app.db.tables import Tenant
    from app.services.groups import _Records

    key, ids = _setup(client, epsilon=8.0, pool_tracks=False)  # records erased one at a time
    state = client.app.state.reid
    with state.sessions() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "groups-8.0-False"))
    assert sorted(next(h for h in search(client, key, 1, k=10, group_by="track_ref").json()["hits"] if h["track_ref"] == "tA")["item_ids"]) == sorted(
        ids[:2]
    )
    assert client.delete(f"/v1/gallery/{ids[1]}", headers={KEY_HEADERS: key}).status_code == 200
    with state.sessions() as session:
        before_prune = _Records._head(session, tenant_id)
    state.gallery.prune_change_log(datetime.now(UTC) + timedelta(minutes=1))
    real_head = _Records._head
    calls: list[int] = []

    def head_read_before_the_prune(session, tenant):  # the first read happened just before the prune committed
        calls.append(tenant)
        return before_prune if len(calls) == 1 else real_head(session, tenant)

    monkeypatch.setattr(_Records, "_head", staticmethod(head_read_before_the_prune))
    hits = search(client, key, 1, k=10, group_by="track_ref").json()["hits"]
    assert len(calls) >= 2 and next(h for h in hits if h["track_ref"] == "tA")["item_ids"] == [ids[0]]


def _one_tenant_database(path, **connect_args):
    """A SQLite database with tenant 1 and its change-log head, as the service creates them: (engine, sessionmaker)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from app.db.tables import Base, GalleryHead, Tenant

    engine = create_engine(f"sqlite:///{path}", connect_args=connect_args)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    with sessions() as session:
        session.add(Tenant(id=1, name="groups"))
        session.add(GalleryHead(tenant_id=1, seq=0, pruned_seq=0))
        session.commit()
    return engine, sessions


def _add_track_records(session, track: str, features: np.ndarray, sigma: float, at, cameras: int) -> list[int]:
    """Tenant 1's released records of one track (camera ``c{i % cameras}``), logged as the service logs them; ids."""
    from sqlalchemy import insert

    from app.db.tables import GalleryItem

    rows = [
        dict(tenant_id=1, camera_id=f"c{i % cameras}", captured_at=at, track_ref=track, feature=f.astype("<f4").tobytes(),
             mechanism="gaussian", epsilon=32.0, delta=1e-5, sensitivity=2**0.5, sigma=sigma, clip_norm=1.0, noise_library="test")
        for i, f in enumerate(features)
    ]  # fmt: skip
    ids = list(session.scalars(insert(GalleryItem).returning(GalleryItem.id), rows).all())
    _log_changes(session, ids, "add", at)
    return ids


def _log_changes(session, item_ids, op: str, at) -> None:
    """Tenant 1's change-log rows for ``item_ids`` and its head moved past them, in the caller's transaction."""
    from sqlalchemy import insert, update

    from app.db.tables import GalleryChange, GalleryHead

    changes = [{"tenant_id": 1, "item_id": i, "op": op, "at": at} for i in item_ids]
    seqs = session.scalars(insert(GalleryChange).returning(GalleryChange.seq), changes).all()
    session.execute(update(GalleryHead).where(GalleryHead.tenant_id == 1).values(seq=max(seqs)))


def test_concurrent_grouped_searches_during_writes_and_erasures_see_whole_tracks(tmp_path):
    """Searcher threads share one cache while a writer adds whole tracks and erases whole tracks, each in one
    transaction with its change-log rows (as the service writes them). Every answer lists complete tracks only, and
    once the writes stop the cache answers as a cold one."""
    import threading
    import time
    from datetime import UTC, datetime

    from sqlalchemy import delete, select

    from app.db.tables import GalleryItem
    from app.services.groups import GroupFilters, GroupSearch
    from models.evaluation.likelihood import TrackScorer

    dim, per_track = 8, 4
    engine, sessions = _one_tenant_database(tmp_path / "groups.db", timeout=30)
    rng = np.random.default_rng(11)
    now = datetime(2026, 11, 28, tzinfo=UTC)

    def add_track(number: int) -> None:
        features = np.abs(rng.standard_normal((per_track, dim))) + rng.normal(0, 0.3, (per_track, dim))
        with sessions() as session:
            _add_track_records(session, f"t{number}", features, 0.3, now, cameras=per_track)
            session.commit()

    def erase_track(number: int) -> None:
        with sessions() as session:
            ids = session.scalars(select(GalleryItem.id).where(GalleryItem.track_ref == f"t{number}")).all()
            if ids:
                session.execute(delete(GalleryItem).where(GalleryItem.id.in_(ids)))
                _log_changes(session, ids, "del", now)
                session.commit()

    for number in range(40):
        add_track(number)
    scorer = TrackScorer(np.full(dim, 0.1), 0.6 / dim * np.eye(dim), 0.4 / dim * np.eye(dim))
    search, stop, failures, answers = GroupSearch(), threading.Event(), [], [0]
    query = np.abs(rng.standard_normal(dim))

    def searcher(filters: GroupFilters) -> None:
        try:
            while not stop.is_set():
                hits, _ = search.search(sessions, 1, "track_ref", query, 50, filters, scorer=scorer)
                expected = per_track // 2 if filters.camera_ids else per_track
                assert hits and all(len(h.item_ids) == expected for h in hits), [len(h.item_ids) for h in hits]
                answers[0] += 1
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=searcher, args=(f,)) for f in (GroupFilters(), GroupFilters(), GroupFilters(camera_ids=["c0", "c1"]))]
    for thread in threads:
        thread.start()
    for number in range(40, 100):
        seen = answers[0]
        add_track(number)
        if number % 3 == 0:
            erase_track(number - 35)
        deadline = time.monotonic() + 30  # a search between any two writes, however loaded the machine (no timing bet)
        while answers[0] == seen and not failures and time.monotonic() < deadline:
            time.sleep(0.001)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures[0]
    assert answers[0] >= 60  # at least one answer after each write
    warm, _ = search.search(sessions, 1, "track_ref", query, 100, GroupFilters(), scorer=scorer)
    cold, _ = GroupSearch().search(sessions, 1, "track_ref", query, 100, GroupFilters(), scorer=scorer)
    assert [(h.key, h.item_ids) for h in warm] == [(h.key, h.item_ids) for h in cold]
    assert np.allclose([h.score for h in warm], [h.score for h in cold], rtol=1e-5, atol=1e-5)
    engine.dispose()


def test_a_warm_cache_and_a_cold_one_answer_the_same_bits(tmp_path):
    """Two replicas hold the same records but different caches: one filled before erasures and more writes (dead rows,
    stale group codes), one filled once from SQL. Float32 rows scored in one matrix product differ in the last bits
    between such tables (the product sums a row in another order for another number of rows), so hits are rescored
    exactly: every answer, with and without filters, by likelihood and by cosine, is the same keys, items and score bits."""
    from datetime import UTC, datetime

    from sqlalchemy import delete, select

    from app.db.tables import GalleryItem
    from app.services.groups import GroupFilters, GroupSearch
    from models.evaluation.likelihood import TrackScorer

    dim, per_track = 96, 3
    engine, sessions = _one_tenant_database(tmp_path / "bits.db")
    rng = np.random.default_rng(3)
    now = datetime(2026, 11, 28, tzinfo=UTC)

    def add_tracks(numbers):
        with sessions() as session:
            for n in numbers:
                features = np.abs(rng.standard_normal((per_track, dim))) * 0.1 + rng.normal(0, 0.29, (per_track, dim))
                _add_track_records(session, f"t{n}", features, 0.29, now, cameras=2)
            session.commit()

    a = rng.standard_normal((dim, dim)) / dim
    w = rng.standard_normal((dim, dim)) / dim
    scorer = TrackScorer(np.abs(rng.standard_normal(dim)) * 0.05, a @ a.T + 0.002 * np.eye(dim), w @ w.T + 0.003 * np.eye(dim))
    queries = np.abs(rng.standard_normal((6, dim)))
    add_tracks(range(700))
    warm = GroupSearch()
    for used in (scorer, None):
        warm.search(sessions, 1, "track_ref", queries[0], 100, GroupFilters(), scorer=used)
    with sessions() as session:  # erase 73 tracks, then add 91 more: the warm cache keeps dead rows and codes
        erased = session.scalars(select(GalleryItem.id).where(GalleryItem.track_ref.in_([f"t{n}" for n in range(0, 700, 9)]))).all()
        session.execute(delete(GalleryItem).where(GalleryItem.id.in_(erased)))
        _log_changes(session, erased, "del", now)
        session.commit()
    add_tracks(range(700, 791))
    cold = GroupSearch()
    for used in (scorer, None):
        for filters in (GroupFilters(), GroupFilters(camera_ids=["c0"]), GroupFilters(min_score=0.3)):
            for query in queries:
                answers = [c.search(sessions, 1, "track_ref", query, 100, filters, scorer=used) for c in (warm, cold)]
                assert [(h.key, h.item_ids, h.score) for h in answers[0][0]] == [(h.key, h.item_ids, h.score) for h in answers[1][0]]
                assert answers[0][1] == answers[1][1] and (answers[0][0] or filters.min_score is not None)
    engine.dispose()


def test_ties_at_the_kth_place_are_broken_by_key_whatever_the_numbering():
    """Fifteen groups share the best score and k = 10: the ten with the smallest keys come back, in key order, however
    the cache happened to number the groups (a warm replica and a cold one number them differently)."""
    from app.services.groups import _top

    rng = np.random.default_rng(9)
    names = [f"p{i:02d}" for i in range(40)]
    score_of = {name: (1.0 if i < 15 else float(rng.uniform(-1.0, 0.9))) for i, name in enumerate(names)}
    for _ in range(20):
        codes = rng.permutation(40)  # code -> name numbering differs from cache to cache
        numbered = [names[c] for c in codes]
        scores = np.array([score_of[n] for n in numbered])
        for min_score in (None, 0.5):
            top = _top(np.arange(40), scores, numbered, 10, min_score)
            assert [numbered[c] for c, _ in top] == names[:10] and all(s == 1.0 for _, s in top)


def test_large_groups_keep_their_exact_sums_for_rescoring():
    """Hits are rescored from exact group sums. Groups of ``KEPT_SUM_MIN`` records or more keep theirs from the last
    refresh (re-summing a 3,000-record subject on every search was slow); they equal a fresh sum to the bit, before and
    after the group changes, and a group that shrinks below the threshold or empties keeps nothing."""
    from app.services.groups import KEPT_SUM_MIN, _Records
    from models.evaluation.likelihood import TrackScorer

    dim = 6
    scorer = TrackScorer(np.full(dim, 0.1), 0.6 / dim * np.eye(dim), 0.4 / dim * np.eye(dim))
    rng = np.random.default_rng(12)
    for used in (scorer, None):
        records = _Records()
        keys = ["big"] * (KEPT_SUM_MIN + 8) + ["small"] * 3 + ["other"] * KEPT_SUM_MIN
        records._append(_fake_rows(0, keys, rng, dim))
        for step in range(3):
            table = records.scoring(used, True)
            codes = table.live_codes()
            sizes = dict(zip(codes.tolist(), records.group_sizes(codes).tolist(), strict=True))
            assert set(table.large) == {c for c, n in sizes.items() if n >= KEPT_SUM_MIN}
            kept, fresh = table.exact_sums(records, codes), records.sums_of(codes, used is not None)
            for name in ("sums", "counts", "noise_var"):
                assert np.array_equal(getattr(kept, name), getattr(fresh, name))
            if step == 0:  # "big" grows, "other" loses records and falls below the threshold
                records._append(_fake_rows(1000, ["big"] * 5, rng, dim))
                records._drop(np.array(records.members[records.code_of["other"]][:5]))
            elif step == 1:  # "big" is erased
                records._drop(np.array(records.members[records.code_of["big"]]))
        assert records.code_of["big"] not in table.large and records.code_of["other"] not in table.large
