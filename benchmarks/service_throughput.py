"""Enrollment throughput and search latency over HTTP at two gallery sizes, beside the raw encoder.

Starts ``reid-gallery serve`` on loopback with a fresh SQLite database, enrolls real crops
(cycled from the shared CUHK03 split) in batches until each target size is reached,
then times single-crop searches. Prints one JSON document.

    python benchmarks/service_throughput.py --sizes 10000 100000 --searches 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected"
ADMIN_KEY = "benchmark-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_encoder_throughput(checkpoint: str | None, paths: list[Path], seconds: float = 20.0) -> float:
    """Images/s of the encoder alone on pre-decoded crops (batches of 64), same machine, same run."""
    import torch

    from app.services.embedding import load_embedder
    from models.data.transforms import load_images

    embedder = load_embedder(Path(checkpoint) if checkpoint else None, device="cpu", allow_untrained=True)
    batch = load_images(paths[:64], embedder.input_size)
    embedder.embed(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed(batch)
        done += batch.shape[0]
    del torch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epsilon", default="8")
    parser.add_argument("--checkpoint", help="encoder checkpoint (default: the shipped one)")
    args = parser.parse_args()
    if not (DATA / "bounding_box_test").is_dir():
        sys.exit(f"shared data not found at {DATA}")
    paths = sorted((DATA / "bounding_box_test").glob("*.jpg")) + sorted((DATA / "bounding_box_train").glob("*.jpg"))
    queries = sorted((DATA / "query").glob("*.jpg"))
    blobs = [(p.name, p.read_bytes()) for p in paths]

    result: dict[str, object] = {"machine": f"{os.cpu_count()} CPUs", "batch": args.batch, "epsilon": args.epsilon}
    result["raw_encoder_images_per_s"] = round(raw_encoder_throughput(args.checkpoint, paths), 1)

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, REID_DATA_DIR=tmp, REID_ADMIN_KEY=ADMIN_KEY, REID_DEVICE="cpu", REID_LOG_LEVEL="WARNING", REID_MAX_BATCH="256")
        if args.checkpoint:
            env["REID_CHECKPOINT"] = args.checkpoint
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            admin = {"X-Admin-Key": ADMIN_KEY}
            tenant = httpx.post(f"{base}/v1/admin/tenants", json={"name": "bench"}, headers=admin).json()["id"]
            epsilon = args.epsilon if args.epsilon == "inf" else float(args.epsilon)
            httpx.put(f"{base}/v1/admin/tenants/{tenant}/privacy", json={"epsilon": epsilon}, headers=admin)
            key = httpx.post(f"{base}/v1/admin/tenants/{tenant}/keys", json={}, headers=admin).json()["api_key"]
            headers = {"X-API-Key": key}
            source = cycle(blobs)
            size = 0
            meta = json.dumps([{"camera_id": "c1", "captured_at": "2026-01-01T00:00:00Z"}] * args.batch)
            with httpx.Client(timeout=120) as client:
                for target in args.sizes:
                    started, enrolled = time.perf_counter(), 0
                    while size < target:
                        files = [("images", (name, data, "image/jpeg")) for name, data in (next(source) for _ in range(args.batch))]
                        response = client.post(f"{base}/v1/gallery", files=files, data={"metadata": meta}, headers=headers)
                        response.raise_for_status()
                        size += args.batch
                        enrolled += args.batch
                    enroll_rate = enrolled / (time.perf_counter() - started)
                    latencies = []
                    for q in queries[: args.searches]:
                        t0 = time.perf_counter()
                        r = client.post(
                            f"{base}/v1/search", files={"image": (q.name, q.read_bytes(), "image/jpeg")}, data={"k": "10"}, headers=headers
                        )
                        r.raise_for_status()
                        latencies.append(time.perf_counter() - t0)
                    ms = np.array(latencies) * 1000
                    result[f"gallery_{size}"] = {
                        "enroll_images_per_s": round(enroll_rate, 1),
                        "search_p50_ms": round(float(np.percentile(ms, 50)), 1),
                        "search_p99_ms": round(float(np.percentile(ms, 99)), 1),
                        "searches": len(latencies),
                    }
                    print(json.dumps(result), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
