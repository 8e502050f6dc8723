"""The privacy curve: search quality and attack success against the privacy budget ε (``reid-privacy-curve``, :mod:`models.cli.privacy_curve`).

Clean query features are matched against a gallery released through the Gaussian
mechanism at each ε (δ fixed). Per ε and encoder, averaged over several noise draws:
rank-1, rank-5, mAP, the paper's ID-accuracy attacker trained on the protected gallery,
and a linkage attack (rank-1 of protected gallery records matched against each other
across cameras). The CLI writes JSON, optionally a calibration file, a PNG plot and a Markdown table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluation import cosine_distance, evaluate_rankings
from models.evaluation.attack import id_accuracy
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

log = logging.getLogger("reid.privacy_curve")
DEFAULT_EPSILONS = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, math.inf]


def release(features: np.ndarray, epsilon: float, delta: float, seed: int) -> tuple[np.ndarray, float]:
    """One noise draw (seeded for a reproducible table; the service never passes a seed)."""
    noisy, params = GaussianMechanism(seed=seed).release(torch.from_numpy(features), PrivacyPolicy(epsilon=epsilon, delta=delta))
    return noisy.numpy(), params.sigma


def linkage_rank1(gallery: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> float:
    """Rank-1 of protected gallery records matched against the other records (cross-camera matches only)."""
    dist = cosine_distance(gallery, gallery)
    np.fill_diagonal(dist, np.inf)
    return float(evaluate_rankings(dist, pids, pids, cams, cams)["rank1"])


def curve_for(features: dict[str, np.ndarray], epsilons: list[float], delta: float, draws: int, attack: bool) -> list[dict[str, Any]]:
    rows = []
    for epsilon in epsilons:
        samples: dict[str, list[float]] = {"rank1": [], "rank5": [], "mAP": [], "id_acc_linear": [], "linkage_rank1": []}
        sigma = 0.0
        for draw in range(1 if math.isinf(epsilon) else draws):
            noisy, sigma = release(features["gf"], epsilon, delta, seed=1000 + draw)
            ranking = evaluate_rankings(
                cosine_distance(features["qf"], noisy), features["q_pids"], features["g_pids"], features["q_cams"], features["g_cams"]
            )
            for key in ("rank1", "rank5", "mAP"):
                samples[key].append(ranking[key])
            if attack:
                samples["id_acc_linear"].append(id_accuracy(noisy, features["g_pids"], features["qf"], features["q_pids"], kind="linear"))
            samples["linkage_rank1"].append(linkage_rank1(noisy, features["g_pids"], features["g_cams"]))
        row: dict[str, Any] = {"epsilon": "inf" if math.isinf(epsilon) else epsilon, "delta": delta, "sigma": sigma, "draws": len(samples["rank1"])}
        for key, values in samples.items():
            if values:
                row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)), "max": float(np.max(values))}
        rows.append(row)
        log.info("eps=%s sigma=%.4f rank1=%.4f mAP=%.4f", row["epsilon"], sigma, row["rank1"]["mean"], row["mAP"]["mean"])
    return rows


def _fmt(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "–"
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def markdown_table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| encoder | ε | σ | rank-1 % | rank-5 % | mAP % | ID acc. (linear) % | linkage rank-1 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['epsilon']} | {r['sigma']:.4f} | {_fmt(r.get('rank1'))} | {_fmt(r.get('rank5'))} | {_fmt(r.get('mAP'))} "
                f"| {_fmt(r.get('id_acc_linear'))} | {_fmt(r.get('linkage_rank1'))} |"
            )
    return "\n".join(lines)


START, END = "<!-- privacy-table:start -->", "<!-- privacy-table:end -->"


def write_markdown(path: Path, table: str) -> None:
    """Replace the table between the markers in ``path`` (or write the table alone)."""
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    else:
        path.write_text(table + "\n")


def calibration(checkpoint_sha256: str | None, data_name: str, delta: float, draws: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's calibration file for one encoder: its measured rank-1 / mAP per ε (``app/services/calibration.py`` reads it)."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "data": data_name,
        "delta": delta,
        "draws": draws,
        "points": [{k: r[k] for k in ("epsilon", "sigma", "rank1", "mAP") if k in r} for r in rows],
    }
