"""Does the privacy noise keep up with the encoder? Noise samples/s against the encoder's crops/s × D, in one run.

The encoder is the shipped default checkpoint (``models.DEFAULT_CHECKPOINT``) in eager PyTorch on the CPU, timed at
several forward batch sizes (random uint8 crops at its input size; the best one is what the noise must match). The
noise is the service's release path, ``GaussianMechanism().release`` at ε = 32 on batches of ``--release-batch``
L2-normalised [N, D] features (clip, a fresh ChaCha20 stream keyed by ``os.urandom``, Box–Muller in float64, cast),
and the raw sampler alone. Optionally (``--opendp``) OpenDP's exact Gaussian sampler on a D-vector, for comparison.

On a shared, busy machine the two rates drift with the load, so after the batch-size sweep the encoder (at its best
batch size) and the noise are timed alternately for ``--rounds`` rounds; the headroom is the median of the per-round
ratios noise samples/s ÷ (crops/s × D).

    python benchmarks/noise_throughput.py --json runs/noise_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import DEFAULT_CHECKPOINT, load_encoder
from models.checkpoint import Embedder
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


def encoder_work(embedder: Embedder, batch: int) -> Callable[[], int]:
    height, width = embedder.input_size
    crops = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)

    def work() -> int:
        embedder.embed(crops, batch_size=batch)
        return batch

    return work


def noise_work(dim: int, release_batch: int) -> tuple[Callable[[], int], Callable[[], int]]:
    """(the release path, the sampler alone), each returning the samples it drew."""
    features = torch.nn.functional.normalize(torch.randn(release_batch, dim), dim=1)
    mechanism, policy = GaussianMechanism(), PrivacyPolicy(epsilon=32.0, delta=1e-5)

    def release() -> int:
        mechanism.release(features, policy)
        return release_batch * dim

    def sampler() -> int:
        gaussian_noise((release_batch, dim))
        return release_batch * dim

    return release, sampler


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
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64], help="encoder forward batch sizes to try")
    parser.add_argument("--release-batch", type=int, default=64, help="crops per noise release (the service's encoder batch)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating encoder/noise rounds after the sweep")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--opendp", action="store_true", help="also time OpenDP's exact Gaussian sampler")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    embedder = load_encoder(args.checkpoint, "cpu")
    dim = embedder.embedding_dim
    sweep = {}
    for batch in args.batch_sizes:
        sweep[batch] = rate(encoder_work(embedder, batch), args.seconds)
        print(f"encoder, batch {batch:4d}: {sweep[batch]:10.1f} crops/s", flush=True)
    best = max(sweep, key=lambda b: sweep[b])
    encode, (release, sampler) = encoder_work(embedder, best), noise_work(dim, args.release_batch)
    rounds = []
    for r in range(args.rounds):
        crops = rate(encode, args.seconds)
        released, sampled = rate(release, args.seconds), rate(sampler, args.seconds)
        rounds.append({"crops_per_s": crops, "needed": crops * dim, "release": released, "sampler": sampled, "headroom": released / (crops * dim)})
        print(
            f"round {r + 1}: encoder {crops:.1f} crops/s x {dim} = {crops * dim:,.0f} samples/s needed; "
            f"noise {released:,.0f} samples/s (release path), {sampled:,.0f} (sampler alone); headroom {released / (crops * dim):.1f}x",
            flush=True,
        )

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "checkpoint": args.checkpoint.name,
        "checkpoint_sha256": embedder.sha256,
        "embedding_dim": dim,
        "encoder_sweep_crops_per_s": {str(b): round(v, 1) for b, v in sweep.items()},
        "encoder_best_batch": best,
        "encoder_crops_per_s": round(median("crops_per_s"), 1),
        "noise_samples_needed_per_s": round(median("needed")),
        "noise_source": NOISE_SOURCE,
        "noise_release_batch": args.release_batch,
        "noise_samples_per_s_release": round(median("release")),
        "noise_samples_per_s_sampler": round(median("sampler")),
        "headroom": round(median("headroom"), 1),
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
    }
    print(f"encoder (batch {best}): {result['encoder_crops_per_s']} crops/s x {dim} = {result['noise_samples_needed_per_s']:,} samples/s needed")
    print(f"noise (release path: clip + ChaCha20 + Box-Muller in float64): {result['noise_samples_per_s_release']:,} samples/s")
    print(f"noise (sampler alone): {result['noise_samples_per_s_sampler']:,} samples/s")
    print(f"headroom (median of {len(rounds)} rounds): {result['headroom']}x what the encoder needs")
    if args.opendp:
        opendp = opendp_rate(dim, args.seconds)
        result["opendp_samples_per_s"] = round(opendp)
        result["opendp_headroom"] = round(opendp / median("needed"), 3)
        print(f"OpenDP exact Gaussian sampler: {opendp:,.0f} samples/s ({result['opendp_headroom']}x what the encoder needs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
