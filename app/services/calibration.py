"""Utility-at-ε from the calibration file shipped beside the encoder checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.privacy import gaussian_sigma


def calibration_path(checkpoint: Path | None) -> Path | None:
    return None if checkpoint is None else checkpoint.with_suffix(".calibration.json")


def load_calibration(checkpoint: Path | None) -> dict[str, Any] | None:
    path = calibration_path(checkpoint)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def expected_utility(calibration: dict[str, Any] | None, epsilons: list[float] | None, *, delta: float, clip_norm: float) -> dict[str, Any]:
    """Per candidate ε: σ, and rank-1 / mAP interpolated (in log ε) from the calibration points."""
    if calibration is None:
        return {"available": False, "reason": "no calibration file beside the encoder checkpoint", "points": []}
    points = [p for p in calibration["points"] if p["epsilon"] != "inf"]
    clean = next((p for p in calibration["points"] if p["epsilon"] == "inf"), None)
    grid = np.log([float(p["epsilon"]) for p in points])
    out = []
    for eps in epsilons or [float(p["epsilon"]) for p in points]:
        entry: dict[str, Any] = {"epsilon": eps, "delta": delta, "sigma": gaussian_sigma(eps, delta, 2 * clip_norm)}
        for metric in ("rank1", "mAP"):
            means = [p[metric]["mean"] for p in points]
            if math.isinf(eps) and clean is not None:
                entry[metric] = clean[metric]["mean"]
            else:
                entry[metric] = float(np.interp(math.log(eps), grid, means))
        entry["interpolated"] = not any(math.isclose(eps, float(p["epsilon"])) for p in points)
        out.append(entry)
    return {
        "available": True,
        "calibrated_delta": calibration.get("delta"),
        "checkpoint_sha256": calibration.get("checkpoint_sha256"),
        "data": calibration.get("data"),
        "note": "expected search quality of clean queries against a gallery noised at each epsilon, measured offline on the calibration split",
        "points": out,
        "no_noise": clean,
    }
