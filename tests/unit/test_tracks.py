"""Track-level evaluation: records grouped by (identity, camera), searched by their normalised mean."""

from __future__ import annotations

import numpy as np

from models.evaluation.tracks import evaluate_tracks, group_tracks, track_vectors


def test_tracks_group_by_identity_and_camera() -> None:
    index, pids, cams = group_tracks(np.array([5, 5, 5, 7, 7]), np.array([1, 1, 2, 1, 2]))
    assert len(pids) == 4
    assert index[0] == index[1] != index[2]
    assert sorted(zip(pids.tolist(), cams.tolist(), strict=True)) == [(5, 1), (5, 2), (7, 1), (7, 2)]


def test_track_vector_is_the_normalised_mean() -> None:
    records = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    vectors = track_vectors(records, np.array([0, 0, 1]), 2)
    assert np.allclose(vectors[0], [2**-0.5, 2**-0.5])
    assert np.allclose(vectors[1], [0.6, 0.8])


def test_averaging_noisy_records_beats_single_records() -> None:
    rng = np.random.default_rng(0)
    people, per_camera, dim, sigma = 60, 4, 32, 0.5
    identity = rng.normal(size=(people, dim))
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    g_pids = np.repeat(np.arange(people), 2 * per_camera)
    g_cams = np.tile(np.repeat([1, 2], per_camera), people)
    records = identity[g_pids] + sigma * rng.normal(size=(len(g_pids), dim))
    q_pids, q_cams = np.arange(people), np.ones(people, dtype=int)
    query = identity[q_pids]
    tracks = evaluate_tracks(query, records, q_pids, g_pids, q_cams, g_cams)
    from models.evaluation import cosine_distance, evaluate_rankings

    single = evaluate_rankings(cosine_distance(query, records), q_pids, g_pids, q_cams, g_cams)
    assert tracks["num_tracks"] == 2 * people and tracks["mean_track_size"] == per_camera
    assert tracks["rank1"] > single["rank1"]
