"""The analytic Gaussian mechanism: validity, tightness, library cross-check, noise statistics, accounting."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from models.privacy import classic_gaussian_sigma, composed_mu, epsilon_for_mu, gaussian_sigma, max_mu
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

mpmath.mp.dps = 60


def exact_delta(epsilon: float, sigma: float, sensitivity: float) -> mpmath.mpf:
    """Balle & Wang (2018), Theorem 8, in 60-digit arithmetic (independent of the code under test)."""
    eps, s, d = mpmath.mpf(epsilon), mpmath.mpf(sigma), mpmath.mpf(sensitivity)
    return mpmath.ncdf(d / (2 * s) - eps * s / d) - mpmath.exp(eps) * mpmath.ncdf(-d / (2 * s) - eps * s / d)


EPSILONS = [0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 128.0, 256.0, 500.0]
DELTAS = [1e-9, 1e-7, 1e-5, 1e-4, 1e-3]


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_sigma_is_valid_and_tight(epsilon, delta):
    for sensitivity in (2.0, 0.5):
        sigma = gaussian_sigma(epsilon, delta, sensitivity)
        assert exact_delta(epsilon, sigma, sensitivity) <= delta
        assert exact_delta(epsilon, 0.999 * sigma, sensitivity) > delta


def test_infinite_epsilon_means_no_noise_and_bad_arguments_raise():
    assert gaussian_sigma(math.inf, 1e-5, 2.0) == 0.0
    for bad in ((0.0, 1e-5, 2.0), (-1.0, 1e-5, 2.0), (1.0, 0.0, 2.0), (1.0, 1.0, 2.0), (1.0, 1e-5, 0.0)):
        with pytest.raises(ValueError):
            gaussian_sigma(*bad)


def test_analytic_is_never_looser_than_classic_where_classic_holds():
    for epsilon in (0.05, 0.1, 0.5, 0.9):
        for delta in DELTAS:
            assert gaussian_sigma(epsilon, delta, 2.0) <= classic_gaussian_sigma(epsilon, delta, 2.0)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 4.0, 16.0, 64.0])
def test_cross_check_against_opendp(epsilon):
    """OpenDP's zCDP-based curve is valid but looser: at our σ it must certify a slightly larger ε."""
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    delta, sensitivity = 1e-5, 2.0
    sigma = gaussian_sigma(epsilon, delta, sensitivity)
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=4), dp.l2_distance(T=float)
    measurement = dp.c.make_zCDP_to_approxDP(space >> dp.m.then_gaussian(scale=sigma))
    opendp_epsilon = measurement.map(sensitivity).epsilon(delta)
    assert epsilon <= opendp_epsilon <= 1.25 * epsilon


def test_noise_has_the_claimed_sigma_and_is_independent():
    policy = PrivacyPolicy(epsilon=4.0, delta=1e-5)
    sigma = policy.parameters().sigma
    n, d = 6000, 48
    base = torch.nn.functional.normalize(torch.randn(1, d), dim=1).repeat(n, 1)
    noisy, params = GaussianMechanism().release(base, policy)
    noise = (noisy - base).double().numpy()
    assert params.sigma == sigma and params.sensitivity == 2.0
    # Per-dimension std within a 5-sigma band of its sampling error (std of sample std ~ sigma/sqrt(2n)).
    per_dim = noise.std(axis=0)
    assert np.all(np.abs(per_dim - sigma) < 5 * sigma / math.sqrt(2 * n))
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n * d)
    # Independence across dimensions and across records: correlations at the level of chance.
    corr_dims = np.corrcoef(noise.T)[np.triu_indices(d, 1)]
    assert np.max(np.abs(corr_dims)) < 5 / math.sqrt(n)
    corr_records = np.corrcoef(noise[:d])[np.triu_indices(d, 1)]
    assert np.max(np.abs(corr_records)) < 5 / math.sqrt(d) + 0.1
    # Not one scalar per vector: within each record the noise varies like N(0, sigma^2).
    within = noise.std(axis=1)
    assert np.median(within) == pytest.approx(sigma, rel=0.1)


def test_two_releases_differ_and_only_the_seed_hook_repeats():
    x = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    policy = PrivacyPolicy(epsilon=8.0)
    mechanism = GaussianMechanism()
    a, _ = mechanism.release(x, policy)
    b, _ = mechanism.release(x, policy)
    c, _ = GaussianMechanism().release(x, policy)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    s1, _ = GaussianMechanism(seed=123).release(x, policy)
    s2, _ = GaussianMechanism(seed=123).release(x, policy)
    assert torch.equal(s1, s2)


@pytest.mark.parametrize("domain", ["signed", "nonnegative"])
def test_a_pooled_release_is_the_clipped_mean_with_n_times_less_noise_and_the_same_epsilon_per_record(domain):
    """The DP mean: replacing one of n clipped rows moves their mean by at most Δ/n (checked on adversarial pairs), so
    σ/n gives each row the policy's (ε, δ); the release is the mean of the clipped rows plus N(0, (σ/n)²) noise."""
    policy = PrivacyPolicy(epsilon=8.0, delta=1e-5, domain=domain)
    single, pooled = policy.parameters(), policy.parameters(pooled=4)
    assert pooled.pooled == 4 and math.isclose(pooled.sensitivity, single.sensitivity / 4) and math.isclose(pooled.sigma, single.sigma / 4)
    assert math.isclose(pooled.mu, single.mu) and math.isclose(pooled.group_mu, 4 * single.mu) and single.group_mu == single.mu
    with pytest.raises(ValueError):
        policy.parameters(pooled=0)
    rows = torch.rand(4, 32) * 3  # norms above C: clipped first
    if domain == "signed":
        rows -= 1.5
    mechanism = GaussianMechanism()
    clean = mechanism._clipped(rows, policy).mean(axis=0)
    draws = np.stack([mechanism.release_pooled(rows, policy)[0].double().numpy()[0] for _ in range(3000)])
    noise = draws - clean
    assert abs(noise.mean()) < 5 * pooled.sigma / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(pooled.sigma, rel=0.02)
    # the sensitivity claim, at the worst replacement of one row: the antipode (signed), or a row of disjoint support
    # (non-negative); every clipped row has norm C = 1 here
    first = torch.cat([torch.rand(1, 16) + 0.5, torch.zeros(1, 16)], dim=1)
    worst = -first if domain == "signed" else torch.flip(first, dims=[1])
    before, after = (mechanism._clipped(torch.cat([row, rows[1:]]), policy).mean(axis=0) for row in (first, worst))
    assert math.isclose(float(np.linalg.norm(after - before)), pooled.sensitivity, rel_tol=1e-9)


def test_clipping_bounds_the_norm_and_inf_adds_nothing():
    x = torch.randn(8, 16) * 10
    out, params = GaussianMechanism().release(x, PrivacyPolicy(epsilon=math.inf, clip_norm=1.0))
    assert params.sigma == 0 and params.mechanism == "none"
    assert torch.all(out.norm(dim=1) <= 1.0 + 1e-6)


def test_mu_gdp_composition_round_trips():
    epsilon, delta = 2.0, 1e-5
    mu = max_mu(epsilon, delta)
    assert epsilon_for_mu(mu, delta) == pytest.approx(epsilon, rel=1e-4)
    assert 2.0 / gaussian_sigma(epsilon, delta, 2.0) == pytest.approx(mu, rel=1e-12)
    # k identical releases compose to sqrt(k) * mu, worth more epsilon than one release but less than k.
    four = composed_mu([mu] * 4)
    assert four == pytest.approx(2 * mu)
    assert epsilon < epsilon_for_mu(four, delta) < 4 * epsilon


def toy_split(*, seed: int, ids: int, per_id: int, spread: float, g_cams: list[int]) -> dict:
    """A small split: one clean query per identity, ``per_id`` gallery features around each identity's centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, 16))
    g_pids, q_pids = np.repeat(np.arange(ids), per_id), np.arange(ids)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return {
        "gf": unit(centres[g_pids] + spread * rng.standard_normal((ids * per_id, 16))),
        "qf": unit(centres[q_pids] + spread * rng.standard_normal((ids, 16))),
        "g_pids": g_pids, "q_pids": q_pids, "g_cams": np.tile(g_cams, ids * per_id // len(g_cams)), "q_cams": np.zeros(ids, int),
    }  # fmt: skip


def test_privacy_curve_rows_and_markdown_markers(tmp_path):
    from models.privacy.curve import curve_for, markdown_table, write_markdown

    feats = toy_split(seed=0, ids=10, per_id=4, spread=0.1, g_cams=[0, 1])
    rows = curve_for(feats, [1.0, 1e4, math.inf], 1e-5, draws=3, attack=False)
    assert [r["draws"] for r in rows] == [3, 3, 1]
    assert rows[0]["sigma"] > rows[1]["sigma"] > rows[2]["sigma"] == 0
    assert rows[2]["rank1"]["mean"] == 1.0 and rows[0]["mAP"]["mean"] < rows[2]["mAP"]["mean"]
    doc = tmp_path / "privacy.md"
    doc.write_text("intro\n<!-- privacy-table:start -->\nold\n<!-- privacy-table:end -->\noutro\n")
    write_markdown(doc, markdown_table({"m": rows}))
    text = doc.read_text()
    assert text.startswith("intro") and text.endswith("outro\n") and "old" not in text and "| m | inf | record |" in text
    page = tmp_path / "page.md"
    page.write_text("a page without the markers\n")
    with pytest.raises(ValueError, match="markers"):
        write_markdown(page, "| table |")
    assert page.read_text() == "a page without the markers\n"


def test_privacy_curve_track_rows_and_calibration_groupings():
    from models.privacy.curve import calibration, curve_for

    feats = toy_split(seed=1, ids=8, per_id=6, spread=0.3, g_cams=[0, 0, 0, 1, 1, 1])
    rows = curve_for(feats, [8.0, math.inf], 1e-5, draws=2, attack=False, tracks=True)
    assert [(r["grouping"], r["epsilon"]) for r in rows] == [("record", 8.0), ("record", "inf"), ("track", 8.0), ("track", "inf")]
    track = rows[2]
    assert track["num_tracks"] == 16 and track["mean_track_size"] == 3.0 and track["sigma"] == rows[0]["sigma"]
    assert "linkage_rank1" not in track and track["draws"] == 2
    # averaging a track's noisy records helps at this epsilon (same draws)
    assert track["mAP"]["mean"] > rows[0]["mAP"]["mean"]
    payload = calibration("x", "toy", 1e-5, 2, rows)
    assert [p["grouping"] for p in payload["points"]] == ["record", "record"]
    assert [p["grouping"] for p in payload["track_points"]] == ["track", "track"]
    assert set(payload["groupings"]) == {"record", "track", "pooled_track"} and "pooled_track_points" not in payload


def test_privacy_curve_pooled_track_rows_release_each_track_once_and_are_attacked():
    from models.privacy.curve import calibration, curve_for

    feats = toy_split(seed=1, ids=8, per_id=6, spread=0.3, g_cams=[0, 0, 0, 1, 1, 1])
    rows = curve_for(feats, [4.0, math.inf], 1e-5, draws=3, attack=True, tracks=True, pooled=True)
    assert [(r["grouping"], r["epsilon"]) for r in rows][-2:] == [("pooled_track", 4.0), ("pooled_track", "inf")]
    record, track, pooled = rows[0], rows[2], rows[4]
    assert pooled["num_tracks"] == 16 and pooled["mean_track_size"] == 3.0 and pooled["sigma"] == record["sigma"] and pooled["draws"] == 3
    assert {"id_acc_linear", "linkage_rank1"} <= set(pooled)
    # a track's mean released at σ/3 instead of three records at σ each: better search, and a stronger attacker
    assert pooled["mAP"]["mean"] > track["mAP"]["mean"]
    assert pooled["linkage_rank1"]["mean"] >= record["linkage_rank1"]["mean"]
    # without noise a pooled track is the mean of its clipped crops: the same ranking as averaging them
    assert math.isclose(rows[5]["mAP"]["mean"], rows[3]["mAP"]["mean"], rel_tol=1e-6)
    payload = calibration("x", "toy", 1e-5, 3, rows)
    assert [p["grouping"] for p in payload["pooled_track_points"]] == ["pooled_track", "pooled_track"]
