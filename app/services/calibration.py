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
    """Per candidate ε: σ, and the measured figures interpolated (in log ε) between calibration points.

    Outside the calibrated ε range nothing is extrapolated: the figures are null and ``within_calibration`` is false.
    Figures other than rank-1 and mAP that the calibration file holds (e.g. attack success) are passed on in ``extra``.
    """
    if calibration is None:
        return {"available": False, "reason": "no calibration file beside the encoder checkpoint", "points": []}
    points = sorted((p for p in calibration["points"] if p["epsilon"] != "inf"), key=lambda p: float(p["epsilon"]))
    clean = next((p for p in calibration["points"] if p["epsilon"] == "inf"), None)
    grid = np.log([float(p["epsilon"]) for p in points])
    metrics = [m for m, v in points[0].items() if isinstance(v, dict) and "mean" in v] if points else []
    out = []
    for eps in epsilons or [float(p["epsilon"]) for p in points]:
        inside = bool(points) and bool(grid[0] - 1e-9 <= math.log(eps) <= grid[-1] + 1e-9)
        figures = {m: float(np.interp(math.log(eps), grid, [p[m]["mean"] for p in points])) if inside else None for m in metrics}
        out.append(
            {
                "epsilon": eps,
                "delta": delta,
                "sigma": gaussian_sigma(eps, delta, 2 * clip_norm),
                "within_calibration": inside,
                "interpolated": inside and not any(math.isclose(eps, float(p["epsilon"])) for p in points),
                "rank1": figures.pop("rank1", None),
                "mAP": figures.pop("mAP", None),
                "extra": {m: v for m, v in figures.items() if v is not None},
            }
        )
    return {
        "available": True,
        "calibrated_delta": calibration.get("delta"),
        "calibrated_range": [float(points[0]["epsilon"]), float(points[-1]["epsilon"])] if points else None,
        "checkpoint_sha256": calibration.get("checkpoint_sha256"),
        "data": calibration.get("data"),
        "note": "expected search quality of clean queries against a gallery noised at each epsilon, measured offline on the calibration split",
        "points": out,
        "no_noise": {m: v["mean"] for m, v in clean.items() if isinstance(v, dict) and "mean" in v} if clean else None,
    }
