"""Encoder crops/s on a CUDA device: fp32 vs bf16 (and fp16, what the Embedder's autocast uses), contiguous vs
channels_last, batch 64 to 512; then the whole ``Embedder.embed`` path (uint8 crops on the CPU → GPU → resize and
normalise → encoder) at the best setting. Features of each precision are compared with fp32's (cosine).

    python benchmarks/gpu_encoder.py --json gpu_encoder.json                 # the shipped checkpoint
    python benchmarks/gpu_encoder.py --checkpoint runs/x/encoder.pt --batch-sizes 64 128 256 512

Needs a CUDA device (exits with a message otherwise). Timing: CUDA events around ``--iters`` forward passes after
``--warmup`` passes, per cell; median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import torch

    from models import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark measures the GPU path")

    from models.checkpoint import load_encoder
    from models.data.transforms import eval_transform

    torch.backends.cudnn.benchmark = True
    embedder = load_encoder(args.checkpoint, "cuda")
    model = embedder.model
    h, w = embedder.input_size
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (max(args.batch_sizes), 3, h, w), dtype=torch.uint8, generator=g)
    inputs = eval_transform(crops.cuda(), (h, w))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "checkpoint": str(args.checkpoint),
        "input_size": [h, w],
        "cells": [],
    }

    def forward(x: torch.Tensor, precision: str) -> torch.Tensor:
        dtype = dtypes[precision]
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x).float()

    reference = {}
    for channels_last in (False, True):
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)  # type: ignore[call-overload]
        for precision in args.precisions:
            for batch in args.batch_sizes:
                x = inputs[:batch].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                for _ in range(args.warmup):
                    forward(x, precision)
                rates = []
                for _ in range(args.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(args.iters):
                        forward(x, precision)
                    end.record()
                    torch.cuda.synchronize()
                    rates.append(args.iters * batch / (start.elapsed_time(end) / 1000))
                feats = forward(inputs[:64].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format), precision)
                if precision == "fp32" and not channels_last:
                    reference["fp32"] = feats
                cosine = float(torch.nn.functional.cosine_similarity(feats, reference["fp32"]).min()) if "fp32" in reference else None
                cell = {"precision": precision, "channels_last": channels_last, "batch": batch, "crops_per_s": round(statistics.median(rates), 1)}
                cell["min_cosine_to_fp32"] = None if cosine is None else round(cosine, 6)
                result["cells"].append(cell)
                print(json.dumps(cell), flush=True)
    best = max(result["cells"], key=lambda c: c["crops_per_s"])
    result["best"] = best
    # The service's path at the best batch: uint8 crops on the CPU, copied, transformed and embedded by Embedder.embed
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    batch = best["batch"]
    embedder.embed(crops[:batch], batch)
    torch.cuda.synchronize()
    import time

    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        embedder.embed(crops[:batch], batch)
        done += batch
    result["embedder_embed_fp16_autocast"] = {"batch": batch, "crops_per_s": round(done / (time.perf_counter() - started), 1)}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
