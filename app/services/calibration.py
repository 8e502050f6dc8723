"""Utility-at-ε from the calibration file shipped beside the encoder checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.privacy import gaussian_sigma
from models.privacy.mechanism import sensitivity_for


def calibration_path(checkpoint: Path | None) -> Path | None:
    return None if checkpoint is None else checkpoint.with_suffix(".calibration.json")


def load_calibration(checkpoint: Path | None) -> dict[str, Any] | None:
    path = calibration_path(checkpoint)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


RECORD_NOTE = "expected search quality of clean queries against a gallery noised at each epsilon, measured offline on the calibration split"
GROUPINGS = {
    "record": "per-record search: clean queries against single released records",
    "track": (
        "track search (group_by=track_ref): clean queries against the mean of each track's released records, scored as the "
        "service scores them (the encoder's noise-aware likelihood ratio where it has one, else cosine)"
    ),
    "pooled_track": (
        "track search where each track's crops were enrolled in one request and released as one noisy mean (the policy's "
        "pool_tracks: sigma/n for n crops, the same epsilon per crop), scored as track search"
    ),
}


def _points(
    rows: list[dict[str, Any]], epsilons: list[float] | None, *, delta: float, clip_norm: float, grouping: str, domain: str
) -> dict[str, Any]:
    """Per candidate ε: σ, and the measured figures of ``rows`` interpolated in log ε (nothing outside their range)."""
    points = sorted((p for p in rows if p["epsilon"] != "inf"), key=lambda p: float(p["epsilon"]))
    clean = next((p for p in rows if p["epsilon"] == "inf"), None)
    grid = np.log([float(p["epsilon"]) for p in points])
    metrics = [m for m, v in points[0].items() if isinstance(v, dict) and "mean" in v] if points else []
    out = []
    for eps in epsilons or [float(p["epsilon"]) for p in points]:
        inside = bool(points) and bool(grid[0] - 1e-9 <= math.log(eps) <= grid[-1] + 1e-9)
        figures = {m: float(np.interp(math.log(eps), grid, [p[m]["mean"] for p in points])) if inside else None for m in metrics}
        out.append(
            {
                "epsilon": eps,
                "grouping": grouping,
                "delta": delta,
                "sigma": gaussian_sigma(eps, delta, sensitivity_for(domain, clip_norm)),
                "within_calibration": inside,
                "interpolated": inside and not any(math.isclose(eps, float(p["epsilon"])) for p in points),
                "rank1": figures.pop("rank1", None),
                "mAP": figures.pop("mAP", None),
                "extra": {m: v for m, v in figures.items() if v is not None},
            }
        )
    return {
        "points": out,
        "range": [float(points[0]["epsilon"]), float(points[-1]["epsilon"])] if points else None,
        "no_noise": {m: v["mean"] for m, v in clean.items() if isinstance(v, dict) and "mean" in v} if clean else None,
    }


def expected_utility(
    calibration: dict[str, Any] | None, epsilons: list[float] | None, *, delta: float, clip_norm: float, domain: str = "signed"
) -> dict[str, Any]:
    """Per candidate ε: σ (for the serving encoder's feature ``domain``), and the measured figures interpolated (in log ε)
    between calibration points.

    Outside the calibrated ε range nothing is extrapolated: the figures are null and ``within_calibration`` is false.
    Figures other than rank-1 and mAP that the calibration file holds (e.g. attack success) are passed on in ``extra``.
    Every point says its ``grouping``: ``points`` are per-record search (every calibration file has them; files written
    before groupings existed are per-record), ``track_points`` track search (empty when the file has no track rows),
    ``pooled_track_points`` track search of pooled releases (empty when the file has none).
    """
    if calibration is None:
        return {
            "available": False,
            "reason": "no calibration file beside the encoder checkpoint",
            "points": [],
            "track_points": [],
            "pooled_track_points": [],
        }
    record_rows = [p for p in calibration["points"] if p.get("grouping", "record") == "record"]
    track_rows = [p for p in calibration.get("track_points", []) if p.get("grouping", "track") == "track"]
    record = _points(record_rows, epsilons, delta=delta, clip_norm=clip_norm, grouping="record", domain=domain)
    track = _points(track_rows, epsilons, delta=delta, clip_norm=clip_norm, grouping="track", domain=domain) if track_rows else None
    pooled_rows = calibration.get("pooled_track_points", [])
    pooled = _points(pooled_rows, epsilons, delta=delta, clip_norm=clip_norm, grouping="pooled_track", domain=domain) if pooled_rows else None
    return {
        "available": True,
        "calibrated_delta": calibration.get("delta"),
        "calibrated_range": record["range"],
        "checkpoint_sha256": calibration.get("checkpoint_sha256"),
        "data": calibration.get("data"),
        "note": RECORD_NOTE,
        "groupings": GROUPINGS,
        "points": record["points"],
        "no_noise": record["no_noise"],
        "track_points": track["points"] if track else [],
        "track_no_noise": track["no_noise"] if track else None,
        "track_mean_size": next((float(p["mean_track_size"]) for p in track_rows if "mean_track_size" in p), None),
        "pooled_track_points": pooled["points"] if pooled else [],
        "pooled_track_no_noise": pooled["no_noise"] if pooled else None,
    }
