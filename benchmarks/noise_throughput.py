"""Does the privacy noise keep up with the encoder? Noise samples/s against the encoder's crops/s × D, in one run.

The encoder is the shipped default checkpoint (``models.DEFAULT_CHECKPOINT``) in eager PyTorch on the CPU, timed at
several forward batch sizes (random uint8 crops at its input size; the best one is what the noise must match). The
noise is the service's release path, ``GaussianMechanism().release`` at ε = 32 on batches of ``--release-batch``
L2-normalised [N, D] features (clip, a fresh ChaCha20 stream keyed by ``os.urandom``, Box–Muller in float64, cast),
and the raw sampler alone. Optionally (``--opendp``) OpenDP's exact Gaussian sampler on a D-vector, for comparison.

    python benchmarks/noise_throughput.py --json runs/noise_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import DEFAULT_CHECKPOINT, load_encoder
from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy
from models.privacy.noise import NOISE_SOURCE, gaussian_noise


def rate(work: Callable[[], int], seconds: float, warmup: int = 1) -> float:
    """Units per second of ``work`` (which returns the units it did), run repeatedly for about ``seconds``."""
    for _ in range(warmup):
        work()
    done, started = 0, time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def encoder_rates(checkpoint: Path, batch_sizes: list[int], seconds: float) -> tuple[dict[int, float], int, str | None]:
    embedder = load_encoder(checkpoint, "cpu")
    height, width = embedder.input_size
    out = {}
    for batch in batch_sizes:
        crops = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)

        def work(crops: torch.Tensor = crops, batch: int = batch) -> int:
            embedder.embed(crops, batch_size=batch)
            return batch

        out[batch] = rate(work, seconds)
        print(f"encoder  batch {batch:4d}: {out[batch]:10.1f} crops/s", flush=True)
    return out, embedder.embedding_dim, embedder.sha256


def noise_rates(dim: int, release_batch: int, seconds: float) -> dict[str, float]:
    features = torch.nn.functional.normalize(torch.randn(release_batch, dim), dim=1)
    mechanism, policy = GaussianMechanism(), PrivacyPolicy(epsilon=32.0, delta=1e-5)

    def release() -> int:
        mechanism.release(features, policy)
        return release_batch * dim

    def sampler() -> int:
        gaussian_noise((release_batch, dim))
        return release_batch * dim

    return {"release": rate(release, seconds), "sampler": rate(sampler, seconds)}


def opendp_rate(dim: int, seconds: float) -> float:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=dim), dp.l2_distance(T=float)
    measurement = space >> dp.m.then_gaussian(scale=0.41)
    vector = [0.0] * dim

    def work() -> int:
        measurement(vector)
        return dim

    return rate(work, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64], help="encoder forward batch sizes to try")
    parser.add_argument("--release-batch", type=int, default=64, help="crops per noise release (the service's encoder batch)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--opendp", action="store_true", help="also time OpenDP's exact Gaussian sampler")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder, dim, sha = encoder_rates(args.checkpoint, args.batch_sizes, args.seconds)
    best_batch = max(encoder, key=lambda b: encoder[b])
    needed = encoder[best_batch] * dim
    noise = noise_rates(dim, args.release_batch, args.seconds)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        "checkpoint": args.checkpoint.name,
        "checkpoint_sha256": sha,
        "embedding_dim": dim,
        "encoder_crops_per_s": {str(b): round(v, 1) for b, v in encoder.items()},
        "encoder_best_batch": best_batch,
        "encoder_best_crops_per_s": round(encoder[best_batch], 1),
        "noise_samples_needed_per_s": round(needed),
        "noise_source": NOISE_SOURCE,
        "noise_release_batch": args.release_batch,
        "noise_samples_per_s_release": round(noise["release"]),
        "noise_samples_per_s_sampler": round(noise["sampler"]),
        "headroom_release": round(noise["release"] / needed, 1),
    }
    print(f"encoder (best batch {best_batch}): {encoder[best_batch]:.1f} crops/s x {dim} = {needed:,.0f} noise samples/s needed")
    print(f"noise, release path (clip + ChaCha20 + Box-Muller, float64): {noise['release']:,.0f} samples/s")
    print(f"noise, sampler alone:                                        {noise['sampler']:,.0f} samples/s")
    print(f"headroom: {noise['release'] / needed:.1f}x what the encoder needs")
    if args.opendp:
        opendp = opendp_rate(dim, args.seconds)
        result["opendp_samples_per_s"] = round(opendp)
        result["opendp_headroom"] = round(opendp / needed, 3)
        print(f"OpenDP exact Gaussian sampler: {opendp:,.0f} samples/s ({opendp / needed:.3f}x what the encoder needs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
