"""Utility-at-ε from a calibration file (what the tradeoff endpoint serves)."""

from __future__ import annotations

import json

import pytest

from app.services.calibration import expected_utility, load_calibration


def calibration() -> dict:
    def point(eps, r1, m):
        return {"epsilon": eps, "sigma": 0.0, "rank1": {"mean": r1, "std": 0.0}, "mAP": {"mean": m, "std": 0.0}}

    return {"delta": 1e-5, "points": [point(1.0, 0.0, 0.01), point(100.0, 0.2, 0.21), point("inf", 0.3, 0.31)]}


def test_interpolates_in_log_epsilon_and_reports_sigma():
    out = expected_utility(calibration(), [10.0, 100.0], delta=1e-5, clip_norm=1.0)
    ten, hundred = out["points"]
    assert ten["rank1"] == pytest.approx(0.1) and ten["interpolated"] is True  # halfway between 1 and 100 in log
    assert hundred["mAP"] == pytest.approx(0.21) and hundred["interpolated"] is False
    assert ten["sigma"] > hundred["sigma"] > 0
    assert out["no_noise"] == {"rank1": 0.3, "mAP": 0.31} and out["calibrated_range"] == [1.0, 100.0]


def test_no_figures_outside_the_calibrated_range():
    """Issue 10: epsilon = 1e6 used to report the largest calibrated point's numbers as 'interpolated'."""
    below, above = expected_utility(calibration(), [0.5, 1e6], delta=1e-5, clip_norm=1.0)["points"]
    for point in (below, above):
        assert point["within_calibration"] is False and point["interpolated"] is False
        assert point["rank1"] is None and point["mAP"] is None and point["sigma"] > 0


def test_other_measured_figures_are_passed_on():
    data = calibration()
    for p in data["points"]:
        p["attack_top1"] = {"mean": 0.05, "std": 0.0}
    point = expected_utility(data, [10.0], delta=1e-5, clip_norm=1.0)["points"][0]
    assert point["extra"] == {"attack_top1": pytest.approx(0.05)}


def test_file_beside_checkpoint(tmp_path):
    checkpoint = tmp_path / "enc.pt"
    assert load_calibration(checkpoint) is None
    checkpoint.with_suffix(".calibration.json").write_text(json.dumps(calibration()))
    assert load_calibration(checkpoint)["delta"] == 1e-5
    assert expected_utility(None, None, delta=1e-5, clip_norm=1.0)["available"] is False


def test_track_rows_are_served_apart_and_labelled():
    data = calibration()
    data["track_points"] = [
        {"epsilon": 1.0, "grouping": "track", "sigma": 0.0, "rank1": {"mean": 0.1}, "mAP": {"mean": 0.1}, "mean_track_size": 3.8},
        {"epsilon": 100.0, "grouping": "track", "sigma": 0.0, "rank1": {"mean": 0.5}, "mAP": {"mean": 0.6}, "mean_track_size": 3.8},
        {"epsilon": "inf", "grouping": "track", "sigma": 0.0, "rank1": {"mean": 0.7}, "mAP": {"mean": 0.8}, "mean_track_size": 3.8},
    ]
    out = expected_utility(data, [100.0], delta=1e-5, clip_norm=1.0)
    assert [p["grouping"] for p in out["points"]] == ["record"] and out["points"][0]["mAP"] == pytest.approx(0.21)
    assert [p["grouping"] for p in out["track_points"]] == ["track"] and out["track_points"][0]["mAP"] == pytest.approx(0.6)
    assert out["track_no_noise"] == {"rank1": 0.7, "mAP": 0.8} and out["no_noise"] == {"rank1": 0.3, "mAP": 0.31}
    assert out["track_mean_size"] == 3.8 and set(out["groupings"]) == {"record", "track", "pooled_track"}
    assert out["pooled_track_points"] == [] and out["pooled_track_no_noise"] is None
    data["pooled_track_points"] = [{**row, "grouping": "pooled_track", "mAP": {"mean": 0.7}} for row in data["track_points"][1:]]
    pooled = expected_utility(data, [100.0, 1.0], delta=1e-5, clip_norm=1.0)
    assert [p["grouping"] for p in pooled["pooled_track_points"]] == ["pooled_track", "pooled_track"]
    assert pooled["pooled_track_points"][0]["mAP"] == pytest.approx(0.7) and pooled["pooled_track_points"][1]["within_calibration"] is False
    assert pooled["pooled_track_no_noise"] == {"rank1": 0.7, "mAP": 0.7}


def test_shipped_calibration_files_still_load_as_per_record():
    from pathlib import Path

    from app.api.schemas import TradeoffOut

    for path in sorted((Path(__file__).resolve().parents[2] / "models" / "checkpoints").glob("*.calibration.json")):
        out = expected_utility(json.loads(path.read_text()), None, delta=1e-5, clip_norm=1.0)
        assert out["points"] and all(p["grouping"] == "record" for p in out["points"])
        assert all(p["grouping"] == "track" for p in out["track_points"])
        TradeoffOut.model_validate(out)


def test_sigma_follows_the_serving_encoders_feature_domain():
    """A non-negative (split-sign) encoder is released with sensitivity √2: the tradeoff's σ must be that one."""
    from models.privacy import gaussian_sigma

    signed = expected_utility(calibration(), [32.0], delta=1e-5, clip_norm=1.0)["points"][0]["sigma"]
    orthant = expected_utility(calibration(), [32.0], delta=1e-5, clip_norm=1.0, domain="nonnegative")["points"][0]["sigma"]
    assert signed == pytest.approx(gaussian_sigma(32.0, 1e-5, 2.0)) and orthant == pytest.approx(gaussian_sigma(32.0, 1e-5, 2**0.5))
