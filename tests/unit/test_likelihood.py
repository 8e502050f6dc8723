"""Split-sign features, the non-negative domain's sensitivity and the noise-aware track scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from models.checkpoint import load_encoder, read_checkpoint, save_encoder
from models.encoder import ReIDEncoder
from models.evaluation.likelihood import TrackScorer, signed_features, track_noise_variance
from models.evaluation.tracks import evaluate_tracks
from models.privacy import gaussian_sigma
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy, sensitivity_for


def _identities(rng: np.random.Generator, ids: int, per_id: int, dim: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(ids, dim))
    labels = np.repeat(np.arange(ids), per_id)
    features = centres[labels] + spread * rng.normal(size=(ids * per_id, dim))
    return features / np.linalg.norm(features, axis=1, keepdims=True), labels


def test_the_score_is_the_gaussian_log_likelihood_ratio():
    """Against scipy: log N(y; m + A(q − m), C) − log N(y; m, T) with the model's covariances."""
    rng = np.random.default_rng(0)
    features, labels = _identities(rng, ids=30, per_id=8, dim=5, spread=0.4)
    scorer = TrackScorer.fit(features, labels)
    query, tracks = features[:2], features[8:14] + 0.3 * rng.normal(size=(6, 5))
    noise_var = np.array([0.0, 0.09, 0.09, 0.02, 0.5, 0.09])
    eye, b, w, m = np.eye(5), scorer.between, scorer.within, scorer.mean
    total_clean = b + w + 1e-6 * eye
    for query_noise in (0.0, 0.05):  # a clean query, and a released record as the query (linkage)
        got = scorer.scores(query, tracks, noise_var, query_noise_var=query_noise)
        gain = b @ np.linalg.inv(total_clean + query_noise * eye)
        for i, q in enumerate(query):
            for j, y in enumerate(tracks):
                total = total_clean + noise_var[j] * eye
                same = multivariate_normal(m + gain @ (q - m), total - gain @ b).logpdf(y)
                other = multivariate_normal(m, total).logpdf(y)
                assert math.isclose(got[i, j], same - other, rel_tol=1e-7, abs_tol=1e-7)
    with pytest.raises(ValueError, match="one non-negative value per track"):
        scorer.scores(query, tracks, noise_var[:3])


def test_noise_aware_scoring_beats_cosine_on_noisy_split_sign_tracks():
    """The claim behind the default: on split-sign features released at the same ε, the likelihood ratio ranks
    noisy tracks better than the cosine to their normalised mean (toy identities, fixed seeds)."""
    rng = np.random.default_rng(1)
    dim, ids = 12, 120
    train, train_labels = _identities(rng, ids, 6, dim, spread=0.6)
    test, test_labels = _identities(rng, ids, 6, dim, spread=0.6)

    def split(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)

    scorer = TrackScorer.fit(split(train), train_labels)
    cams = np.tile([0, 1, 1, 1, 1, 1], ids)  # one query crop per identity (camera 0), a 5-crop track in camera 1
    query, gallery = split(test)[cams == 0], split(test)[cams == 1]
    sigma = gaussian_sigma(8.0, 1e-5, math.sqrt(2))
    noisy = gallery + sigma * np.random.default_rng(2).normal(size=gallery.shape)
    args = (test_labels[cams == 0], test_labels[cams == 1], np.zeros(ids, int), np.ones(len(gallery), int))
    cosine = evaluate_tracks(query, noisy, *args)["mAP"]
    likelihood = evaluate_tracks(query, noisy, *args, scorer=scorer, sigma=sigma)["mAP"]
    assert likelihood > cosine + 0.05, (likelihood, cosine)


def test_signed_features_undo_the_split_and_noise_variance_of_a_mean():
    rng = np.random.default_rng(3)
    f, r = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    split_f = np.concatenate([np.maximum(f, 0), np.maximum(-f, 0)], axis=1)
    split_r = np.concatenate([np.maximum(r, 0), np.maximum(-r, 0)], axis=1)
    assert np.allclose(signed_features(split_f), f) and np.allclose(signed_features(split_r), r)
    variance = track_noise_variance(np.array([0.5, 0.5, 1.0, 0.0]), np.array([0, 0, 1, 1]), 3)
    assert np.allclose(variance, [0.125, 0.25, 0.0])


def test_nonnegative_domain_has_sensitivity_root_two_and_zeroes_negative_coordinates():
    assert sensitivity_for("signed", 2.0) == 4.0 and math.isclose(sensitivity_for("nonnegative", 2.0), 2 * math.sqrt(2))
    with pytest.raises(ValueError, match="domain"):
        PrivacyPolicy(epsilon=1.0, domain="positive")
    signed, orthant = PrivacyPolicy(epsilon=32.0).parameters(), PrivacyPolicy(epsilon=32.0, domain="nonnegative").parameters()
    assert math.isclose(orthant.sigma * math.sqrt(2), signed.sigma, rel_tol=1e-9) and math.isclose(orthant.sensitivity, math.sqrt(2))
    # the guard: a feature with negative coordinates is projected into the orthant before clipping, whatever the encoder sent
    x = torch.tensor([[3.0, -4.0, 0.0], [-1.0, -1.0, -1.0], [0.6, 0.8, 0.0]])
    out, params = GaussianMechanism().release(x, PrivacyPolicy(epsilon=math.inf, domain="nonnegative"))
    assert params.sigma == 0 and torch.allclose(out, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.6, 0.8, 0.0]]))
    # so any two released inputs are at most √2 apart before noise
    pts = GaussianMechanism().release(torch.randn(200, 8) * 3, PrivacyPolicy(epsilon=math.inf, domain="nonnegative"))[0]
    assert torch.cdist(pts, pts).max() <= math.sqrt(2) + 1e-6


def test_split_sign_encoder_emits_the_orthant_encoding_and_round_trips_with_its_scorer(tmp_path):
    torch.manual_seed(0)
    plain = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, projection_dim=4).eval()
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, projection_dim=4, split_sign=True).eval()
    encoder.load_state_dict(plain.state_dict())
    assert encoder.output_domain == "nonnegative" and plain.output_domain == "signed" and encoder.feature_dim == 8
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        f, u = plain(x), encoder(x)
    assert torch.allclose(u, torch.cat([f.clamp_min(0), (-f).clamp_min(0)], dim=1)) and (u >= 0).all()
    assert torch.allclose(u.norm(dim=1), torch.ones(3), atol=1e-6)
    scorer = TrackScorer.fit(np.abs(np.random.default_rng(0).normal(size=(40, 8))), np.repeat(np.arange(10), 4))
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "projection": {"dim": 4}, "split_sign": True}
    save_encoder(encoder, tmp_path / "enc.pt", meta, track_scorer=scorer)
    embedder = load_encoder(tmp_path / "enc.pt")
    assert embedder.split_sign and embedder.feature_domain == "nonnegative" and embedder.embedding_dim == 8
    assert embedder.track_scorer is not None and np.allclose(embedder.track_scorer.within, scorer.within)
    assert set(read_checkpoint(tmp_path / "enc.pt")["track_scorer"]) == {"mean", "between", "within"}
    crops = torch.randint(0, 256, (5, 3, 64, 32), dtype=torch.uint8)
    assert (embedder.embed(crops) >= 0).all()


def test_the_curve_releases_split_sign_features_as_the_service_does():
    """σ from √2, per-record search on the signed halves, tracks by the scorer, and a likelihood linkage attacker."""
    from models.privacy.curve import Scoring, curve_for
    from tests.unit.test_privacy import toy_split

    def split(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1).astype(np.float32)

    feats = toy_split(seed=4, ids=30, per_id=6, spread=0.4, g_cams=[0, 0, 0, 1, 1, 1])
    signed_rows = curve_for(feats, [8.0], 1e-5, draws=2, attack=False, tracks=True)
    feats_split = {**feats, "qf": split(feats["qf"]), "gf": split(feats["gf"])}
    scorer = TrackScorer.fit(feats_split["gf"], feats["g_pids"])  # toy: fitted on the gallery itself
    rows = curve_for(feats_split, [8.0], 1e-5, draws=2, attack=False, tracks=True, scoring=Scoring("nonnegative", True, scorer))
    record, track = rows
    assert math.isclose(record["sigma"], gaussian_sigma(8.0, 1e-5, math.sqrt(2)))
    assert math.isclose(signed_rows[0]["sigma"], record["sigma"] * math.sqrt(2))
    assert "linkage_rank1_likelihood" in record and "linkage_rank1_likelihood" not in signed_rows[0]
    assert track["grouping"] == "track" and track["mAP"]["mean"] > signed_rows[1]["mAP"]["mean"]


def test_prepared_tracks_score_as_the_one_call_form():
    """Grouped search prepares a tenant's tracks once (float32 in its cache) and scores every query against them."""
    rng = np.random.default_rng(3)
    features, labels = _identities(rng, ids=40, per_id=6, dim=8, spread=0.5)
    scorer = TrackScorer.fit(features, labels)
    queries, tracks = features[:5], features[6:46] + 0.2 * rng.normal(size=(40, 8))
    noise_var = rng.uniform(0.0, 0.2, size=40)
    direct = scorer.scores(queries, tracks, noise_var)  # float64 (checked against scipy above)
    prepared = scorer.prepare(tracks, noise_var)
    single = scorer.prepare(tracks, noise_var, dtype=np.float32)
    assert prepared.size == single.size == 40 and single.weighted.dtype == np.float32
    assert np.allclose(single.scores(queries), direct, rtol=1e-5, atol=1e-4)
    # a subset of tracks prepared alone scores as the same rows of the whole set (grouped search reuses rows)
    assert np.allclose(scorer.prepare(tracks[5:9], noise_var[5:9]).scores(queries), direct[:, 5:9], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="8 coordinates"):
        prepared.scores(queries[:, :4])


def test_tracks_scored_one_by_one_equal_the_matrix_form_and_do_not_depend_on_their_neighbours():
    """Grouped search rescores its short list track by track in float64: the scores of the matrix form (checked against
    scipy above), and each track's score the same bits whether it is scored alone or beside any other tracks."""
    rng = np.random.default_rng(4)
    features, labels = _identities(rng, ids=60, per_id=6, dim=48, spread=0.5)
    scorer = TrackScorer.fit(features, labels)
    tracks = features[6:206] + 0.2 * rng.normal(size=(200, 48))
    noise_var = rng.choice([0.0, 0.02, 0.05], size=200)
    for query in features[:3]:
        every = scorer.scores_one_by_one(query, tracks, noise_var)
        assert np.allclose(every, scorer.scores(query[None], tracks, noise_var)[0], rtol=1e-10, atol=1e-10)
        for start, count in ((0, 1), (17, 1), (3, 7), (100, 64), (5, 195)):
            part = slice(start, start + count)
            assert np.array_equal(scorer.scores_one_by_one(query, tracks[part], noise_var[part]), every[part])
