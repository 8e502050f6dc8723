"""The ranking protocol against hand-computed cases and torchreid's eval_market1501 definition."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.evaluation import cosine_distance, evaluate_rankings


def reference_market1501(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10):
    """Loop form of torchreid's eval_market1501 (rank-k, mAP) plus fast-reid's mINP."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    cmcs, aps, inps = [], [], []
    for qi in range(distmat.shape[0]):
        order = indices[qi]
        keep = ~((g_pids[order] == q_pids[qi]) & (g_cams[order] == q_cams[qi]))
        raw = matches[qi][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.max(np.where(raw == 1))
        inps.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        tmp = np.asarray([x / (i + 1.0) for i, x in enumerate(raw.cumsum())]) * raw
        aps.append(tmp.sum() / raw.sum())
    cmc = np.asarray(cmcs, dtype=np.float64).mean(0)
    return {"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "mAP": np.mean(aps), "mINP": np.mean(inps), "n": len(aps)}


def test_hand_computed_single_query():
    # gallery: ids [1, 2, 1, 1], cams [1, 0, 0, 0]; query id 1 cam 0.
    # Ranked by distance: g0 (id1 cam1: match), g1 (id2: miss), g2 (id1 cam0: junk), g3 (id1 cam0: junk).
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    out = evaluate_rankings(dist, np.array([1]), np.array([1, 2, 1, 1]), np.array([0]), np.array([1, 0, 0, 0]))
    assert out["rank1"] == 1.0 and out["mAP"] == 1.0 and out["mINP"] == 1.0
    assert out["num_valid_queries"] == 1


def test_average_precision_and_inp_by_hand():
    # kept ranking: miss, match, miss, match -> AP = (1/2 + 2/4)/2 = 0.5; INP = 2/4
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    out = evaluate_rankings(dist, np.array([7]), np.array([3, 7, 4, 7]), np.array([0]), np.array([1, 1, 1, 1]))
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0
    assert out["mAP"] == pytest.approx(0.5)
    assert out["mINP"] == pytest.approx(0.5)


def test_same_camera_matches_are_ignored_not_counted_as_misses():
    # The same-camera match ranks first but is junk; the cross-camera match is next.
    dist = np.array([[0.0, 0.5, 0.9]])
    out = evaluate_rankings(dist, np.array([1]), np.array([1, 1, 2]), np.array([0]), np.array([0, 1, 0]))
    assert out["rank1"] == 1.0 and out["mAP"] == 1.0


def test_queries_without_cross_camera_match_are_skipped():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    out = evaluate_rankings(dist, np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([0, 1]))
    # query 0's only match shares its camera -> skipped; query 1 matches at rank 1.
    assert out["num_valid_queries"] == 1
    assert out["rank1"] == 1.0


def test_ties_are_broken_by_gallery_order():
    dist = np.zeros((1, 3))
    out = evaluate_rankings(dist, np.array([5]), np.array([4, 5, 5]), np.array([0]), np.array([1, 1, 1]))
    assert out["rank1"] == 0.0
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_random_50x300_matches_reference_definition_and_known_values():
    rng = np.random.default_rng(2024)
    dist = rng.random((50, 300))
    q_pids, g_pids = rng.integers(0, 30, 50), rng.integers(0, 30, 300)
    q_cams, g_cams = rng.integers(0, 3, 50), rng.integers(0, 3, 300)
    ours = evaluate_rankings(dist, q_pids, g_pids, q_cams, g_cams)
    ref = reference_market1501(dist, q_pids, g_pids, q_cams, g_cams)
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert ours["num_valid_queries"] == ref["n"]
    # Values of the reference loop on this seed, recorded once (guards against both drifting together).
    assert ours["rank1"] == pytest.approx(KNOWN_50x300["rank1"], abs=1e-9)
    assert ours["mAP"] == pytest.approx(KNOWN_50x300["mAP"], abs=1e-9)
    assert ours["mINP"] == pytest.approx(KNOWN_50x300["mINP"], abs=1e-9)


def test_heavy_ties_match_reference_with_stable_order():
    rng = np.random.default_rng(7)
    dist = rng.integers(0, 4, (40, 200)).astype(float)
    q_pids, g_pids = rng.integers(0, 10, 40), rng.integers(0, 10, 200)
    q_cams, g_cams = rng.integers(0, 2, 40), rng.integers(0, 2, 200)
    ours = evaluate_rankings(dist, q_pids, g_pids, q_cams, g_cams)
    ref = reference_market1501(dist, q_pids, g_pids, q_cams, g_cams)
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="query"):
        evaluate_rankings(np.zeros((2, 3)), np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3))


@pytest.mark.slow  # a timing check: meaningless on a loaded CI machine, so CI skips it
def test_full_size_is_fast():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((1400, 64)).astype(np.float32), rng.standard_normal((5317, 64)).astype(np.float32)
    dist = cosine_distance(q, g)
    q_pids, g_pids = rng.integers(0, 700, 1400), rng.integers(0, 700, 5317)
    start = time.perf_counter()
    evaluate_rankings(dist, q_pids, g_pids, rng.integers(0, 2, 1400), rng.integers(0, 2, 5317))
    assert time.perf_counter() - start < 1.0


KNOWN_50x300 = {"rank1": 0.04, "mAP": 0.03941079996315413, "mINP": 0.02626827643420957}


def test_truncated_map_counts_only_the_first_k_raw_items():
    # raw ranking: junk, miss, match, miss, match  (query id 1, cam 0)
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    args = (np.array([1]), np.array([1, 2, 1, 3, 1]), np.array([0]), np.array([0, 1, 1, 1, 1]))
    full = evaluate_rankings(dist, *args, ap_cutoff=3)
    assert full["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert full["mAP@3"] == pytest.approx((1 / 2) / 2)
    assert evaluate_rankings(dist, *args, ap_cutoff=5)["mAP@5"] == pytest.approx(full["mAP"])
