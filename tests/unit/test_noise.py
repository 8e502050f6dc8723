"""The CSPRNG noise source: ChaCha20 keystream -> uniforms -> Box–Muller normals, float64, fresh key per release."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from models.privacy import mechanism as mechanism_module
from models.privacy import noise as noise_module
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy
from models.privacy.noise import NOISE_SOURCE, NoiseStream, gaussian_noise


def test_keystream_is_rfc8439_chacha20():
    # RFC 8439 §2.4.2 test vector: key 00..1f, nonce 000000000000004a00000000, counter 1; the keystream is the
    # ciphertext XOR the plaintext. Our streams start at counter 0, so skip the first 64-byte block.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000000000004a00000000")
    stream = NoiseStream(key=key, nonce=nonce).keystream(192)[64:]
    plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
    ciphertext = bytes.fromhex(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d"
    )
    assert bytes(a ^ b for a, b in zip(plaintext, ciphertext, strict=True)) == stream[: len(plaintext)]


def test_normals_pass_moments_and_ks():
    z = gaussian_noise(200_000)
    assert z.dtype == np.float64 and z.shape == (200_000,)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # tails: P(|z| > 3) = 0.0027
    tail = np.mean(np.abs(z) > 3)
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)
    # the two halves of each Box–Muller pair are uncorrelated
    pairs = NoiseStream.from_os().gaussian((2, 50_000))
    assert abs(np.corrcoef(pairs)[0, 1]) < 5 / math.sqrt(50_000)


def test_uniform_words_are_uniform():
    words = NoiseStream.from_os().uniform_words(100_000)
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    bits = np.unpackbits(words.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / math.sqrt(bits.size)


def test_odd_sizes_and_shapes():
    assert NoiseStream.from_os().gaussian(7).shape == (7,)
    assert NoiseStream.from_os().gaussian((3, 5)).shape == (3, 5)
    assert NoiseStream.from_os().gaussian(0).shape == (0,)


def test_every_release_uses_a_fresh_os_key(monkeypatch):
    keys: list[bytes] = []
    real = noise_module.os.urandom

    def spy(n: int) -> bytes:
        out = real(n)
        keys.append(out)
        return out

    monkeypatch.setattr(noise_module.os, "urandom", spy)
    x = torch.nn.functional.normalize(torch.randn(4, 64), dim=1)
    policy = PrivacyPolicy(epsilon=8.0)
    mechanism = GaussianMechanism()
    a, params = mechanism.release(x, policy)
    b, _ = mechanism.release(x, policy)
    assert len(keys) == 2 and len(set(keys)) == 2 and all(len(k) == 32 for k in keys)
    assert NOISE_SOURCE in params.library and "os.urandom" in params.library and len(params.library) <= 200
    # no stream is continued or reused: the second release's noise is not a shift of the first's
    na, nb = (a - x).double().flatten().numpy(), (b - x).double().flatten().numpy()
    assert not np.any(np.isin(na, nb))


def test_release_adds_noise_in_float64_and_casts_at_the_end(monkeypatch):
    x = torch.nn.functional.normalize(torch.randn(3, 16, dtype=torch.float64), dim=1)
    policy = PrivacyPolicy(epsilon=50.0)
    sigma = policy.parameters().sigma
    out, _ = GaussianMechanism(seed=7).release(x, policy)
    z = NoiseStream.from_seed(7, 0).gaussian((3, 16))
    expected = (x.numpy() + sigma * z).astype(np.float32)
    assert out.dtype == torch.float32
    assert np.array_equal(out.numpy(), expected)
    # the same sum done in float32 would differ somewhere: the float64 path is the one taken
    in32 = x.float().numpy() + np.float32(sigma) * z.astype(np.float32)
    assert not np.array_equal(in32, expected)


def test_seeded_releases_repeat_per_index_and_say_so():
    x = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    policy = PrivacyPolicy(epsilon=8.0)
    m1, m2 = GaussianMechanism(seed=3), GaussianMechanism(seed=3)
    a1, params = m1.release(x, policy)
    b1, _ = m1.release(x, policy)
    a2, _ = m2.release(x, policy)
    assert torch.equal(a1, a2) and not torch.equal(a1, b1)
    assert "NOT private" in params.library and mechanism_module.GaussianMechanism(seed=3).source != GaussianMechanism().source


def test_bad_keys_are_refused():
    with pytest.raises(ValueError):
        NoiseStream(key=b"short")
