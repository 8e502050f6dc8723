"""Track-level search: a gallery's records grouped into tracks (one person seen by one camera).

The service's ``group_by=track_ref`` averages the released (noisy) records of each track and
L2-normalises the mean; hits are tracks. Averaging released records is post-processing, so
it costs no privacy, and the noise in a track's mean shrinks with the square root of its size.
Offline, on a Market-1501-layout split, a track is the gallery crops of one identity in one
camera, and the ranking protocol is the usual one with tracks in place of crops (a query's
own-camera track of its identity is ignored; the other camera's track is the match).
"""

from __future__ import annotations

import numpy as np

from models.evaluation.likelihood import TrackScorer, track_noise_variance
from models.evaluation.ranking import cosine_distance, evaluate_rankings


def group_tracks(pids: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(track index per record, pid per track, camera per track) for records grouped by (pid, camera)."""
    keys = np.stack([np.asarray(pids), np.asarray(cams)], axis=1)
    unique, index = np.unique(keys, axis=0, return_inverse=True)
    return index.reshape(-1), unique[:, 0], unique[:, 1]


def track_vectors(records: np.ndarray, track_index: np.ndarray, num_tracks: int) -> np.ndarray:
    """Normalised mean of each track's records (what the service searches with ``group_by``)."""
    sums = np.zeros((num_tracks, records.shape[1]), dtype=np.float64)
    np.add.at(sums, track_index, records.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def track_means(records: np.ndarray, track_index: np.ndarray, num_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """The plain (float64) mean of each track's records, and each track's record count."""
    counts = np.bincount(track_index, minlength=num_tracks).astype(np.float64)
    sums = np.zeros((num_tracks, records.shape[1]))
    np.add.at(sums, track_index, records.astype(np.float64))
    return sums / counts[:, None], counts


def pooled_releases(
    features: np.ndarray, track_index: np.ndarray, num_tracks: int, epsilon: float, delta: float, seed: int, domain: str = "signed"
) -> tuple[np.ndarray, np.ndarray]:
    """Each track's crops released as one noisy mean, as the service does for a track enrolled in one request
    (``GaussianMechanism.release_pooled``: σ/n, the same (ε, δ) per crop). Returns the releases [T, D] and the noise
    variance of each; seeded (offline tables only)."""
    import torch

    from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

    policy = PrivacyPolicy(epsilon=epsilon, delta=delta, domain=domain)
    mechanism = GaussianMechanism(seed=seed)
    members = np.argsort(track_index, kind="stable")
    bounds = np.searchsorted(track_index[members], np.arange(num_tracks + 1))
    releases = np.empty((num_tracks, features.shape[1]), dtype=np.float32)
    noise_var = np.empty(num_tracks)
    for t in range(num_tracks):
        rows = torch.from_numpy(np.ascontiguousarray(features[members[bounds[t] : bounds[t + 1]]]))
        released, params = mechanism.release_pooled(rows, policy)
        releases[t], noise_var[t] = released.numpy()[0], params.sigma**2
    return releases, noise_var


def evaluate_tracks(
    query: np.ndarray,
    records: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    *,
    scorer: TrackScorer | None = None,
    sigma: float = 0.0,
) -> dict[str, float]:
    """Rank-k / mAP of clean queries against the track means of (released) gallery records.

    Without ``scorer``: cosine to each track's normalised mean. With one: its noise-aware
    log-likelihood ratio (``models.evaluation.likelihood``), every record released at ``sigma``.
    """
    index, t_pids, t_cams = group_tracks(g_pids, g_cams)
    if scorer is None:
        distances = cosine_distance(query, track_vectors(records, index, len(t_pids)))
    else:
        means, _ = track_means(records, index, len(t_pids))
        noise_var = track_noise_variance(np.full(len(index), sigma), index, len(t_pids))
        distances = -scorer.scores(query, means, noise_var)
    result = evaluate_rankings(distances, q_pids, t_pids, q_cams, t_cams)
    result["num_tracks"] = len(t_pids)
    result["mean_track_size"] = float(len(index) / len(t_pids))
    return result
