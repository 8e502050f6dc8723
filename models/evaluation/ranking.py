"""Standard Market-1501 ranking protocol: CMC rank-k, mAP and mINP, vectorised."""

from __future__ import annotations

import numpy as np


def evaluate_rankings(
    distmat: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    *,
    max_rank: int = 10,
    ap_cutoff: int | None = None,
) -> dict[str, float]:
    """Evaluate a query x gallery distance matrix (smaller is closer).

    For each query, gallery items with the same identity *and* the same camera are
    ignored; queries left without a true match are skipped. Ties are broken by gallery
    order (stable sort). Matches torchreid's ``eval_market1501`` (rank-k, mAP) and
    fast-reid's mINP definition. Returns fractions in [0, 1] and ``num_valid_queries``.

    With ``ap_cutoff=K`` it also reports ``mAP@K``: AP counting only matches among the
    first K gallery items of the raw ranking (junk included in the K), divided by all of
    the query's matches, which is what a top-K search answer allows one to compute.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    q_cams, g_cams = np.asarray(query_cams), np.asarray(gallery_cams)
    num_q, num_g = distmat.shape
    if q_pids.shape != (num_q,) or q_cams.shape != (num_q,):
        raise ValueError("query_pids/query_cams must have one entry per distmat row")
    if g_pids.shape != (num_g,) or g_cams.shape != (num_g,):
        raise ValueError("gallery_pids/gallery_cams must have one entry per distmat column")

    positives = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] != g_cams[None, :])
    junk = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
    num_rel = positives.sum(axis=1)
    valid = num_rel > 0
    result: dict[str, float] = {"num_valid_queries": int(valid.sum())}
    if not valid.any():
        result.update({f"rank{k}": 0.0 for k in (1, 5, 10)} | {"mAP": 0.0, "mINP": 0.0})
        return result

    # Instead of sorting every row, place each true match: its 0-based rank among the
    # kept (non-junk) gallery items is the number of kept items ranked before it, where
    # "before" is a smaller distance or an equal distance at a lower gallery index.
    width = int(num_rel.max())
    gallery_index = np.arange(num_g)
    first_hit, average_precision, inverse_negative_penalty, truncated_ap = [], [], [], []
    for start in range(0, num_q, 128):
        rows = np.flatnonzero(valid[start : start + 128]) + start
        if rows.size == 0:
            continue
        dist = distmat[rows]
        pos = positives[rows]
        # Indices of each row's matches, padded to `width` with a sentinel (-1).
        order = np.argsort(~pos, axis=1, kind="stable")[:, :width]
        present = np.take_along_axis(pos, order, axis=1)
        match_dist = np.take_along_axis(dist, order, axis=1)
        before = (dist[:, None, :] < match_dist[:, :, None]) | (
            (dist[:, None, :] == match_dist[:, :, None]) & (gallery_index[None, None, :] < order[:, :, None])
        )
        raw_ranks = before.sum(axis=2)
        before &= ~junk[rows][:, None, :]
        ranks = np.where(present, before.sum(axis=2), np.iinfo(np.int64).max)
        sort_order = np.argsort(ranks, axis=1, kind="stable")
        ranks = np.take_along_axis(ranks, sort_order, axis=1)
        raw_ranks = np.take_along_axis(raw_ranks, sort_order, axis=1)
        count = present.sum(axis=1)
        hits = np.arange(1, width + 1)[None, :]
        precision = np.where(hits <= count[:, None], hits / (np.minimum(ranks, num_g) + 1.0), 0.0)
        first_hit.append(ranks[:, 0])
        average_precision.append(precision.sum(axis=1) / count)
        if ap_cutoff is not None:
            truncated_ap.append(np.where(raw_ranks < ap_cutoff, precision, 0.0).sum(axis=1) / count)
        last = np.take_along_axis(ranks, (count - 1)[:, None], axis=1)[:, 0]
        inverse_negative_penalty.append(count / (last + 1.0))
    first = np.concatenate(first_hit)
    for k in (1, 5, 10, max_rank):
        result[f"rank{k}"] = float(np.mean(first < k))
    result["mAP"] = float(np.concatenate(average_precision).mean())
    result["mINP"] = float(np.concatenate(inverse_negative_penalty).mean())
    if ap_cutoff is not None:
        result[f"mAP@{ap_cutoff}"] = float(np.concatenate(truncated_ap).mean())
    return result


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between rows (inputs need not be normalised)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ g.T


def euclidean_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distance between rows."""
    sq = (query**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * query @ gallery.T
    return np.sqrt(np.maximum(sq, 0.0))
