"""Worker thread vs micro-batching: many concurrent single-crop requests through EmbeddingService.

python benchmarks/embedding_modes.py --concurrency 1 8 32 --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import torch

from app.services.embedding import EmbeddingService, load_embedder


async def run(service: EmbeddingService, crops: list[torch.Tensor], concurrency: int) -> dict[str, float]:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(crop: torch.Tensor) -> None:
        async with semaphore:
            started = time.perf_counter()
            await service.embed([crop])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in crops))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "images_per_s": round(len(crops) / elapsed, 1),
        "p50_ms": round(float(np.median(ms)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    embedder = load_embedder(Path(args.checkpoint) if args.checkpoint else None, device="cpu", allow_untrained=True)
    crops = [torch.randint(0, 256, (3, *embedder.input_size), dtype=torch.uint8) for _ in range(args.requests)]
    results = {}
    for mode in ("thread", "microbatch"):
        service = EmbeddingService(embedder=embedder, batch_size=64, mode=mode, wait_ms=2.0)
        await service.embed(crops[:4])
        for concurrency in args.concurrency:
            results[f"{mode}/c{concurrency}"] = await run(service, crops, concurrency)
            print(mode, concurrency, results[f"{mode}/c{concurrency}"], flush=True)
        service.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
