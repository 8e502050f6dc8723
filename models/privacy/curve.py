"""The privacy curve: search quality and attack success against the privacy budget ε (``reid-privacy-curve``, :mod:`models.cli.privacy_curve`).

Clean query features are matched against a gallery released through the Gaussian
mechanism at each ε (δ fixed). Per ε and encoder, averaged over several noise draws:
rank-1, rank-5, mAP, the paper's ID-accuracy attacker trained on the protected gallery,
and a linkage attack (rank-1 of protected gallery records matched against each other
across cameras). Every row says its ``grouping``: ``record`` rows match queries against single
released records; ``track`` rows (same noise draws) match them against the normalised mean of
each track's released records, a track being one identity's gallery crops in one camera — what
the service's ``group_by=track_ref`` search does (``models/evaluation/tracks.py``). ``pooled_track`` rows
(``pooled=True``) release each track's crops as one noisy mean instead (σ/n, the same ε per crop: what the service
stores for a track enrolled in one request under ``pool_tracks``) and attack those releases too.
The CLI writes JSON, optionally a calibration file, a PNG plot and a Markdown table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluation import cosine_distance, evaluate_rankings
from models.evaluation.attack import id_accuracy
from models.evaluation.likelihood import TrackScorer, signed_features
from models.evaluation.tracks import evaluate_tracks, group_tracks, pooled_releases, track_means
from models.markdown import replace_between_markers
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

log = logging.getLogger("reid.privacy_curve")
DEFAULT_EPSILONS = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, math.inf]


@dataclass(frozen=True)
class Scoring:
    """What the service knows about its encoder's features: their domain (the sensitivity), whether they are
    split-sign (per-record search and linkage compare the signed feature), the noise-aware track scorer."""

    domain: str = "signed"
    split_sign: bool = False
    track_scorer: TrackScorer | None = None


def release(features: np.ndarray, epsilon: float, delta: float, seed: int, domain: str = "signed") -> tuple[np.ndarray, float]:
    """One noise draw (seeded for a reproducible table; the service never passes a seed)."""
    policy = PrivacyPolicy(epsilon=epsilon, delta=delta, domain=domain)
    noisy, params = GaussianMechanism(seed=seed).release(torch.from_numpy(features), policy)
    return noisy.numpy(), params.sigma


def _signed(features: np.ndarray, scoring: Scoring) -> np.ndarray:
    """The signed feature ``f⁺ − f⁻`` of split-sign features (what per-record search and linkage compare)."""
    if not scoring.split_sign:
        return features
    return signed_features(features)


def linkage_rank1(
    gallery: np.ndarray, pids: np.ndarray, cams: np.ndarray, scorer: TrackScorer | None = None, noise_var: float | np.ndarray = 0.0
) -> float:
    """Rank-1 of protected gallery records matched against the other records (cross-camera matches only): by cosine,
    or (``scorer``) by the likelihood ratio with both sides' noise known — the stronger attacker where it applies.

    ``noise_var`` is each record's per-coordinate noise variance (one value for all, or one per record). Records are
    scored as queries 1/8 at a time, at their shared level or, where levels are mixed, their mean."""
    if scorer is None:
        dist = cosine_distance(gallery, gallery)
    else:
        noise = np.broadcast_to(np.asarray(noise_var, dtype=np.float64), (len(gallery),))
        parts = np.array_split(np.arange(len(gallery)), 8)
        dist = np.concatenate([-scorer.scores(gallery[part], gallery, noise, query_noise_var=_level(noise[part])) for part in parts])
    np.fill_diagonal(dist, np.inf)
    return float(evaluate_rankings(dist, pids, pids, cams, cams)["rank1"])


def _level(noise_var: np.ndarray) -> float:
    """One query noise variance for a group of records: theirs when they share it, else their mean."""
    return float(noise_var[0]) if (noise_var == noise_var[0]).all() else float(noise_var.mean())


GROUPINGS = {
    "record": "clean queries against single released gallery records",
    "track": (
        "clean queries against the mean of each track's released records (a track: one identity in one camera), scored as the "
        "service does: the encoder's noise-aware likelihood ratio on noisy records where it has one, else cosine to the normalised mean"
    ),
    "pooled_track": (
        "clean queries against tracks whose crops were released as one noisy mean (sigma/n for n crops, the same epsilon per crop: "
        "the service's pool_tracks, a track enrolled in one request), scored as track rows; the attacks run on those releases"
    ),
}


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def curve_for(
    features: dict[str, np.ndarray],
    epsilons: list[float],
    delta: float,
    draws: int,
    attack: bool,
    *,
    tracks: bool = False,
    pooled: bool = False,
    scoring: Scoring | None = None,
) -> list[dict[str, Any]]:
    """Rows per ε: ``grouping: record`` ones, then (``tracks``) ``grouping: track`` ones from the same noise draws.

    ``scoring`` makes the rows what the service does with that encoder (sensitivity of its domain, the signed
    comparison of split-sign features, the noise-aware track scorer on noisy records)."""
    scoring = scoring or Scoring()
    rows, track_rows, pooled_rows = [], [], []
    for epsilon in epsilons:
        if pooled:
            pooled_rows.append(_pooled_row(features, epsilon, delta, draws, attack, scoring))
        samples: dict[str, list[float]] = {
            "rank1": [],
            "rank5": [],
            "mAP": [],
            "id_acc_linear": [],
            "linkage_rank1": [],
            "linkage_rank1_likelihood": [],
        }
        track_samples: dict[str, list[float]] = {"rank1": [], "rank5": [], "mAP": []}
        if pooled:  # the baseline of the pooled rows' attacks: the same attacks on the track means a thief can form
            track_samples.update({"id_acc_linear": [], "linkage_rank1": [], "linkage_rank1_likelihood": []})
        track_shape: dict[str, float] = {}
        sigma = 0.0
        for draw in range(1 if math.isinf(epsilon) else draws):
            noisy, sigma = release(features["gf"], epsilon, delta, seed=1000 + draw, domain=scoring.domain)
            query, signed_records = _signed(features["qf"], scoring), _signed(noisy, scoring)
            ranking = evaluate_rankings(
                cosine_distance(query, signed_records), features["q_pids"], features["g_pids"], features["q_cams"], features["g_cams"]
            )
            for key in ("rank1", "rank5", "mAP"):
                samples[key].append(ranking[key])
            if attack:
                samples["id_acc_linear"].append(id_accuracy(noisy, features["g_pids"], features["qf"], features["q_pids"], kind="linear"))
            samples["linkage_rank1"].append(linkage_rank1(signed_records, features["g_pids"], features["g_cams"]))
            if scoring.track_scorer is not None:
                link = linkage_rank1(noisy, features["g_pids"], features["g_cams"], scoring.track_scorer, sigma**2)
                samples["linkage_rank1_likelihood"].append(link)
            if tracks:
                labels = (features["q_pids"], features["g_pids"], features["q_cams"], features["g_cams"])
                if scoring.track_scorer is not None and sigma > 0:
                    grouped = evaluate_tracks(features["qf"], noisy, *labels, scorer=scoring.track_scorer, sigma=sigma)
                else:
                    grouped = evaluate_tracks(query, signed_records, *labels)
                for key in ("rank1", "rank5", "mAP"):
                    track_samples[key].append(grouped[key])
                if pooled:
                    index, t_pids, t_cams = group_tracks(features["g_pids"], features["g_cams"])
                    means, counts = track_means(noisy, index, len(t_pids))
                    for key, value in _attacks(means, sigma**2 / counts, t_pids, t_cams, features, attack, scoring).items():
                        track_samples[key].append(value)
                track_shape = {"num_tracks": grouped["num_tracks"], "mean_track_size": grouped["mean_track_size"]}
        eps_out = "inf" if math.isinf(epsilon) else epsilon
        row: dict[str, Any] = {"epsilon": eps_out, "grouping": "record", "delta": delta, "sigma": sigma, "draws": len(samples["rank1"])}
        row.update({key: _summary(values) for key, values in samples.items() if values})
        rows.append(row)
        log.info("eps=%s sigma=%.4f record rank1=%.4f mAP=%.4f", eps_out, sigma, row["rank1"]["mean"], row["mAP"]["mean"])
        if tracks:
            track_row: dict[str, Any] = {"epsilon": eps_out, "grouping": "track", "delta": delta, "sigma": sigma}
            track_row["draws"] = len(track_samples["rank1"])
            track_row.update({key: _summary(values) for key, values in track_samples.items() if values})
            track_row.update(track_shape)
            track_rows.append(track_row)
            log.info("eps=%s sigma=%.4f track rank1=%.4f mAP=%.4f", eps_out, sigma, track_row["rank1"]["mean"], track_row["mAP"]["mean"])
    return rows + track_rows + pooled_rows


def _pooled_row(features: dict[str, np.ndarray], epsilon: float, delta: float, draws: int, attack: bool, scoring: Scoring) -> dict[str, Any]:
    """One ``pooled_track`` row: search quality and the attacks (ID accuracy trained on the releases, linkage of
    releases across cameras) on each track released as one noisy mean."""
    index, t_pids, t_cams = group_tracks(features["g_pids"], features["g_cams"])
    samples: dict[str, list[float]] = {key: [] for key in ("rank1", "rank5", "mAP", "id_acc_linear", "linkage_rank1", "linkage_rank1_likelihood")}
    record_sigma = 0.0
    for draw in range(1 if math.isinf(epsilon) else draws):
        releases, noise_var = pooled_releases(features["gf"], index, len(t_pids), epsilon, delta, seed=5000 + draw, domain=scoring.domain)
        record_sigma = PrivacyPolicy(epsilon=epsilon, delta=delta, domain=scoring.domain).parameters().sigma
        if scoring.track_scorer is not None and not math.isinf(epsilon):
            distances = -scoring.track_scorer.scores(features["qf"], releases, noise_var)
        else:
            distances = cosine_distance(_signed(features["qf"], scoring), _signed(releases, scoring))
        ranking = evaluate_rankings(distances, features["q_pids"], t_pids, features["q_cams"], t_cams)
        for key in ("rank1", "rank5", "mAP"):
            samples[key].append(ranking[key])
        for key, value in _attacks(releases, noise_var, t_pids, t_cams, features, attack, scoring).items():
            samples[key].append(value)
    row: dict[str, Any] = {"epsilon": "inf" if math.isinf(epsilon) else epsilon, "grouping": "pooled_track", "delta": delta, "sigma": record_sigma}
    row["draws"] = len(samples["rank1"])
    row.update({key: _summary(values) for key, values in samples.items() if values})
    row.update({"num_tracks": len(t_pids), "mean_track_size": float(len(index) / len(t_pids))})
    log.info("eps=%s pooled track rank1=%.4f mAP=%.4f", row["epsilon"], row["rank1"]["mean"], row["mAP"]["mean"])
    return row


def _attacks(
    tracks: np.ndarray, noise_var: np.ndarray, t_pids: np.ndarray, t_cams: np.ndarray, features: dict[str, np.ndarray], attack: bool, scoring: Scoring
) -> dict[str, float]:
    """The feature-using attacks on one release of each track (a pooled release, or the mean of its records): the ID
    probe trained on them, and linkage of tracks across cameras by cosine and (noisy, with a scorer) by likelihood."""
    out: dict[str, float] = {}
    if attack:
        out["id_acc_linear"] = id_accuracy(tracks, t_pids, features["qf"], features["q_pids"], kind="linear")
    out["linkage_rank1"] = linkage_rank1(_signed(tracks, scoring), t_pids, t_cams)
    if scoring.track_scorer is not None and bool((noise_var > 0).all()):
        out["linkage_rank1_likelihood"] = linkage_rank1(tracks, t_pids, t_cams, scoring.track_scorer, noise_var)
    return out


def _fmt(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "–"
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def markdown_table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| encoder | ε | grouping | σ | rank-1 % | rank-5 % | mAP % | ID acc. (linear) % | linkage rank-1 % | linkage rank-1, likelihood % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['epsilon']} | {r.get('grouping', 'record')} | {r['sigma']:.4f} "
                f"| {_fmt(r.get('rank1'))} | {_fmt(r.get('rank5'))} | {_fmt(r.get('mAP'))} "
                f"| {_fmt(r.get('id_acc_linear'))} | {_fmt(r.get('linkage_rank1'))} | {_fmt(r.get('linkage_rank1_likelihood'))} |"
            )
    return "\n".join(lines)


START, END = "<!-- privacy-table:start -->", "<!-- privacy-table:end -->"


def write_markdown(path: Path, table: str) -> None:
    """Replace the table between the privacy-table markers in ``path`` (refused if it has none; a missing file gets the table)."""
    replace_between_markers(path, START, END, table)


def calibration(checkpoint_sha256: str | None, data_name: str, delta: float, draws: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's calibration file for one encoder (``app/services/calibration.py`` reads it): its measured rank-1 /
    mAP per ε, ``points`` for per-record search (grouping ``record``, as before) and ``track_points`` for track search
    (grouping ``track``, when the rows have them)."""

    def keep(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r[k] for k in ("epsilon", "grouping", "sigma", "rank1", "mAP", "num_tracks", "mean_track_size") if k in r}

    payload: dict[str, Any] = {
        "checkpoint_sha256": checkpoint_sha256,
        "data": data_name,
        "delta": delta,
        "draws": draws,
        "groupings": GROUPINGS,
        "points": [keep(r) for r in rows if r.get("grouping", "record") == "record"],
    }
    track_points = [keep(r) for r in rows if r.get("grouping") == "track"]
    if track_points:
        payload["track_points"] = track_points
    pooled_points = [keep(r) for r in rows if r.get("grouping") == "pooled_track"]
    if pooled_points:
        payload["pooled_track_points"] = pooled_points
    return payload
