"""Gaussian noise from a cryptographically secure source.

A :class:`NoiseStream` is one ChaCha20 keystream (RFC 8439 cipher, OpenSSL through the
``cryptography`` package) under a 256-bit key. The service keys a new stream from the operating
system's CSPRNG (``os.urandom``) for every release, so a stream is never continued, shared
between threads or inherited by a forked worker; an observer of released records cannot
recover generator state the way one can for a Mersenne Twister. The keystream's 64-bit words
become uniforms on the 2⁻⁵³ grid (53 random bits each), and pairs of uniforms become pairs
of independent standard normals by the Box–Muller transform, all in float64:

    u₁ ∈ (0, 1], u₂ ∈ [0, 1),  r = √(−2 ln u₁),  z₁ = r cos 2πu₂,  z₂ = r sin 2πu₂.

The smallest u₁ is 2⁻⁵³, so |z| ≤ √(106 ln 2) ≈ 8.57: the tail beyond that (probability
about 10⁻¹⁷ per sample) is not drawn. The samples are floating-point numbers, not exact
draws: like every float sampler (and unlike OpenDP's exact discrete samplers, measured slower
in ``benchmarks/noise_throughput.py``) they do not close the floating-point side channels
of Mironov (2012) / Holohan & Braghin (2021) in a formal sense.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
from cryptography import __version__ as _cryptography_version
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
_BLOCK_BYTES = 64
_MAX_STREAM_BYTES = (2**32 - 1) * _BLOCK_BYTES  # the 32-bit block counter of one (key, nonce)
_TWO_PI = 2.0 * math.pi
_UNIT = 2.0**-53

NOISE_SOURCE = f"ChaCha20 keystream keyed by os.urandom per release (cryptography {_cryptography_version}), Box-Muller in float64"
SEEDED_SOURCE = "ChaCha20 keyed from a fixed seed (reproducible, NOT private: tests and offline tables only), Box-Muller in float64"


@dataclass(frozen=True)
class NoiseStream:
    """One ChaCha20 keystream; read it once (each call to a method starts a new stream)."""

    key: bytes
    nonce: bytes = bytes(12)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES or len(self.nonce) != 12:
            raise ValueError("ChaCha20 needs a 32-byte key and a 12-byte nonce")

    @classmethod
    def from_os(cls) -> NoiseStream:
        """A stream under a fresh key from the operating system's CSPRNG."""
        return cls(key=os.urandom(KEY_BYTES))

    @classmethod
    def from_seed(cls, seed: int, index: int = 0) -> NoiseStream:
        """A reproducible stream: the key is SHA-256 of the seed, the nonce the release's index."""
        key = hashlib.sha256(b"reid-gallery noise seed\x00" + str(int(seed)).encode()).digest()
        return cls(key=key, nonce=int(index).to_bytes(12, "little"))

    def keystream(self, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of the stream (the encryption of zeros)."""
        if nbytes > _MAX_STREAM_BYTES:
            raise ValueError("one stream holds at most 256 GiB; split the release")
        # cryptography's 16-byte ChaCha20 nonce is the 32-bit little-endian block counter, then the 96-bit nonce.
        cipher = Cipher(algorithms.ChaCha20(self.key, bytes(4) + self.nonce), mode=None)
        encryptor = cipher.encryptor()
        out = bytearray(nbytes)
        encryptor.update_into(bytes(nbytes), out)
        return bytes(out)

    def uniform_words(self, count: int) -> np.ndarray:
        """``count`` independent uniform 64-bit words."""
        return np.frombuffer(self.keystream(8 * count), dtype="<u8")

    def gaussian(self, shape: tuple[int, ...] | int) -> np.ndarray:
        """Independent N(0, 1) samples in float64, of the given shape."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        pairs = (n + 1) // 2
        words = self.uniform_words(2 * pairs).reshape(2, pairs) >> np.uint64(11)  # 53 random bits each
        u1 = (words[0] + np.uint64(1)).astype(np.float64) * _UNIT  # (0, 1]: log is finite
        u2 = words[1].astype(np.float64) * _UNIT  # [0, 1)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = _TWO_PI * u2
        out = np.empty(2 * pairs, dtype=np.float64)
        np.multiply(radius, np.cos(angle), out=out[:pairs])
        np.multiply(radius, np.sin(angle), out=out[pairs:])
        return out[:n].reshape(shape)


def gaussian_noise(shape: tuple[int, ...] | int) -> np.ndarray:
    """N(0, 1) float64 samples from a fresh OS-keyed stream."""
    return NoiseStream.from_os().gaussian(shape)
