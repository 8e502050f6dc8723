"""Encoder crops/s for every installed backend and batch size, side by side in one run on the same crops, and the
whole service's enrolment crops/s over HTTP with its default backend against the raw default encoder in the same run.

Encoder figures time ``Embedder.embed`` on pre-decoded uint8 crops at the model's input size (so the resize and
normalisation the service does are included); every (batch size, backend) cell is measured ``--rounds`` times,
the rounds interleaved across backends so that a busy neighbour slows them all alike, and the median is kept.
Each backend's features are checked against PyTorch's on the same crops first.

Service figure: ``reid-gallery serve`` on a fresh SQLite database in a temporary folder with default settings
(``REID_ENCODER_BACKEND=auto``), one tenant at a finite ε, ``--http-crops`` real JPEG crops enrolled with
``reid_client`` in batches of ``--http-batch``, ``--http-concurrency`` requests in flight. The raw default encoder
is timed just before and just after (same batch size as its best) and the mean of the two is the reference; this is
repeated ``--http-rounds`` times (raw, service, raw, service, …, raw) and the round with the median ratio is reported,
all rounds beside it (a shared 2-core host moves the raw figure by up to a quarter within minutes).

    python benchmarks/encoder_backends.py --json docs/encoder_backends.json

``--json`` writes {"backends": {NAME: {"crops_per_s", "best_batch", "by_batch", "parity_min_cosine", …}},
"default": NAME, "torch_eager": {"crops_per_s", "best_batch"}, "service_http": {…}, …}; each crops_per_s is at
that backend's best batch size. ``--int8`` adds INT8 exports (reid-export --int8) under "int8" (not a default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected"
ADMIN_KEY = "benchmark-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(embedder: Any, crops: Any, batch: int, seconds: float) -> float:
    """Crops/s of ``embedder.embed`` on ``crops`` in calls of ``batch`` crops, for at least ``seconds``."""
    x = crops[:batch] if crops.shape[0] >= batch else crops.repeat((batch + crops.shape[0] - 1) // crops.shape[0], 1, 1, 1)[:batch]
    embedder.embed(x, batch)  # warm-up: the runtime may specialise on a new batch shape
    done, started = 0, time.perf_counter()
    while True:
        embedder.embed(x, batch)
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def measure_backends(served: dict[str, Any], crops: Any, batches: list[int], rounds: int, seconds: float) -> dict[str, dict[int, list[float]]]:
    samples: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batches} for name in served}
    for r in range(rounds):
        for batch in batches:
            for name, embedder in served.items():
                samples[name][batch].append(rate(embedder, crops, batch, seconds))
        logging.info("round %d/%d: %s", r + 1, rounds, {n: {b: round(v[-1]) for b, v in s.items()} for n, s in samples.items()})
    return samples


def summarise(samples: dict[int, list[float]]) -> dict[str, Any]:
    by_batch = {b: statistics.median(v) for b, v in samples.items()}
    best = max(by_batch, key=lambda b: by_batch[b])
    return {
        "crops_per_s": round(by_batch[best], 1),
        "best_batch": best,
        "by_batch": {str(b): round(v, 1) for b, v in by_batch.items()},
        "rounds": {str(b): [round(x, 1) for x in v] for b, v in samples.items()},
    }


def http_enrolment(
    checkpoint: Path, blobs: list[tuple[str, bytes]], batch: int, concurrency: int, epsilon: float, *, device: str = "cpu", decode: str = "cpu"
) -> dict[str, Any]:
    """Start the service with default settings, enrol ``blobs`` through ``reid_client``; crops/s and the backend it chose."""
    from reid_client import ReidClient

    with tempfile.TemporaryDirectory(prefix="reid-bench-") as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
        env.update(REID_DATA_DIR=tmp, REID_ADMIN_KEY=ADMIN_KEY, REID_CHECKPOINT=str(checkpoint), REID_DEVICE=device, REID_LOG_LEVEL="INFO")
        env["REID_IMAGE_DECODE"] = decode
        log_path = Path(tmp) / "server.log"
        started_at = time.perf_counter()
        with log_path.open("wb") as log_file:
            server = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        try:
            import httpx

            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            ready_s = time.perf_counter() - started_at
            with ReidClient(base, admin_key=ADMIN_KEY) as admin:
                tenant = admin.create_tenant("bench")
                admin.set_privacy(tenant.id, epsilon=epsilon, delta=1e-5)
                key = admin.issue_key(tenant.id).api_key
            chunks = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]
            meta = [{"camera_id": "c1", "captured_at": "2026-11-27T08:00:00Z"}] * batch
            with ReidClient(base, api_key=key) as client:
                client.enroll(chunks[0][:2], meta[:2])  # warm-up (first request, first index)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=concurrency) as pool:
                    done = sum(len(r.ids) for r in pool.map(lambda c: client.enroll(c, meta[: len(c)]), chunks))
                seconds = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=60)
        text = log_path.read_text(errors="replace")
    chosen = re.search(r"encoder backend: (\w+)", text)
    return {
        "crops_per_s": round(done / seconds, 1),
        "crops": done,
        "seconds": round(seconds, 1),
        "batch": batch,
        "concurrency": concurrency,
        "epsilon": epsilon,
        "backend": chosen.group(1) if chosen else "unknown",
        "device": device,
        "image_decode": decode,
        "backend_log": next((line for line in text.splitlines() if "encoder backend:" in line), ""),
        "start_to_ready_s": round(ready_s, 1),
    }


def main() -> None:
    from models import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per cell (median kept)")
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per cell and round")
    p.add_argument("--crops", type=int, default=256, help="real crops decoded once and shared by every backend")
    p.add_argument("--int8", action="store_true", help="also measure INT8 exports (calibrated on training crops)")
    p.add_argument("--http-crops", type=int, default=1536, help="crops enrolled over HTTP (0: skip the service)")
    p.add_argument("--http-batch", type=int, default=32)
    p.add_argument("--http-concurrency", type=int, default=4)
    p.add_argument(
        "--http-rounds",
        type=lambda v: max(1, int(v)),
        default=3,
        help="service runs, each against the raw encoder timed just before and after it (median kept)",
    )
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: PyTorch on the GPU only (the runtimes here are CPU ones)")
    p.add_argument("--image-decode", nargs="+", default=["cpu"], choices=["cpu", "cuda"], help="service runs, one per REID_IMAGE_DECODE value")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import torch

    from models.checkpoint import load_encoder
    from models.data.transforms import load_images
    from models.inference.runners import installed_backends
    from models.inference.select import build_runner, min_cosine, select_backend, with_runner

    gallery = sorted((args.data / "bounding_box_test").glob("*.jpg"))
    if not gallery:
        sys.exit(f"shared data not found at {args.data}")
    embedder = load_encoder(args.checkpoint, args.device)
    crops = load_images(gallery[:: max(1, len(gallery) // args.crops)][: args.crops], embedder.input_size)
    reference = embedder.embed(crops)
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": embedder.sha256,
        "input_size": list(embedder.input_size),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_start": os.getloadavg(),
        "installed": installed_backends(),
    }
    served: dict[str, Any] = {}
    parity: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="reid-bench-export-") as tmp:
        for name in installed_backends() if args.device == "cpu" else ["torch"]:
            served[name] = with_runner(embedder, build_runner(embedder, name, artifact=None, workdir=Path(tmp)))
            parity[name] = min_cosine(reference, served[name].embed(crops))
        if args.int8 and args.device == "cpu":
            from models.inference.export import export
            from models.inference.quantize import calibration_crops

            calibration = calibration_crops(args.data, embedder.input_size, 256)
            graph = export(embedder, "onnx", Path(tmp) / "int8.onnx", int8=True, calibration=calibration)
            for name in ("onnxruntime", "openvino"):
                if name in served:
                    served[f"{name}-int8"] = select_backend(embedder, name, graph)
                    parity[f"{name}-int8"] = min_cosine(reference, served[f"{name}-int8"].embed(crops))
        samples = measure_backends(served, crops, args.batch_sizes, args.rounds, args.seconds)
    summary = {name: summarise(s) | {"parity_min_cosine": round(parity[name], 7)} for name, s in samples.items()}
    result["backends"] = {n: s | {"precision": "fp32"} for n, s in summary.items() if not n.endswith("-int8")}
    if any(n.endswith("-int8") for n in summary):
        result["int8"] = {n: s | {"precision": "int8"} for n, s in summary.items() if n.endswith("-int8")}
    result["torch_eager"] = {k: summary["torch"][k] for k in ("crops_per_s", "best_batch")}

    if args.http_crops:
        chosen = result["backends"]
        blobs = [(q.name, q.read_bytes()) for q in (gallery * (1 + args.http_crops // len(gallery)))[: args.http_crops]]
        readings: dict[str, list[float]] = {}  # the raw encoder, before the first service run and after each
        for name in chosen:
            readings[name] = [rate(served[name], crops, chosen[name]["best_batch"], args.seconds * 2)]
        rounds: list[dict[str, Any]] = []
        for _ in range(args.http_rounds):
            runs = [
                http_enrolment(args.checkpoint, blobs, args.http_batch, args.http_concurrency, args.epsilon, device=args.device, decode=decode)
                for decode in args.image_decode
            ]
            http = max(runs, key=lambda r: r["crops_per_s"])
            default = http["backend"] if http["backend"] in served else max(chosen, key=lambda n: chosen[n]["crops_per_s"])
            readings[default].append(rate(served[default], crops, chosen[default]["best_batch"], args.seconds * 2))
            before, after = readings[default][-2:]
            http["raw_default_encoder_crops_per_s"] = round((before + after) / 2, 1)
            http["raw_default_encoder_before_after"] = [round(before, 1), round(after, 1)]
            http["ratio_to_raw_encoder"] = round(http["crops_per_s"] / ((before + after) / 2), 3)
            rounds.append(http | ({"by_decode": {r["image_decode"]: r for r in runs}} if len(runs) > 1 else {}))
        # the round with the median ratio (each service run against the raw encoder timed just before and after it)
        http = dict(sorted(rounds, key=lambda r: r["ratio_to_raw_encoder"])[len(rounds) // 2])
        if len(rounds) > 1:
            http["rounds"] = [{k: r[k] for k in ("crops_per_s", "raw_default_encoder_before_after", "ratio_to_raw_encoder")} for r in rounds]
        default = http["backend"] if http["backend"] in served else max(chosen, key=lambda n: chosen[n]["crops_per_s"])
        if "by_decode" in http:
            result["service_http_by_decode"] = http.pop("by_decode")
        result["service_http"] = http
        result["default"] = default
    else:
        result["default"] = select_backend(embedder, "auto").backend
    default = result["default"]
    result["default_speedup_vs_torch_eager"] = round(result["backends"][default]["crops_per_s"] / result["torch_eager"]["crops_per_s"], 2)
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    rows = [f"{'backend':<18}" + "".join(f"{b:>9}" for b in args.batch_sizes) + "   best  parity"]
    for name, s in summary.items():
        rows.append(
            f"{name:<18}"
            + "".join(f"{s['by_batch'][str(b)]:>9.0f}" for b in args.batch_sizes)
            + f"  {s['best_batch']:>5}  {s['parity_min_cosine']:.6f}"
        )
    print("\n".join(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
