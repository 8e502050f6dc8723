"""The service's own CPU cost per enrolled crop, apart from the encoder: what HTTP enrolment pays beside the network.

Starts ``reid-gallery serve`` (SQLite in a temporary folder, one tenant at ε = 8) and enrols ``--crops`` real JPEG
crops of the shared split with ``reid_client`` (batches of ``--batch``, ``--concurrency`` in flight), reading the
server process's CPU time (user + system, all threads) and the client's own around the run. With ``--stub-encoder``
the server's encoder returns random unit features instead of running the network (its start-up self-checks still run
the real one), so the server figure is HTTP, multipart parsing, decoding, resizing, noise, SQL and FAISS alone.

    python benchmarks/service_overhead.py --stub-encoder          # the per-crop overhead
    python benchmarks/service_overhead.py                         # the same with the real encoder (default backend)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected"
ADMIN_KEY = "benchmark-admin-key"
STUB = """
import sys
import numpy as np
import models.checkpoint as checkpoint
real = checkpoint.Embedder.embed
def stub(self, images_uint8, batch_size=None):
    if images_uint8.shape[0] <= 16:  # start-up self-checks and the warm-up request run the real network
        return real(self, images_uint8, batch_size)
    x = np.random.default_rng().standard_normal((images_uint8.shape[0], self.embedding_dim)).astype(np.float32)
    return np.abs(x) / np.linalg.norm(x, axis=1, keepdims=True)
checkpoint.Embedder.embed = stub
from app.cli import main
main(sys.argv[1:])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stub-encoder", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from reid_client import ReidClient

    files = sorted((args.data / "bounding_box_test").glob("*.jpg"))
    if not files:
        sys.exit(f"shared data not found at {args.data}")
    blobs = [(f.name, f.read_bytes()) for f in (files * (1 + args.crops // len(files)))[: args.crops]]
    with tempfile.TemporaryDirectory(prefix="reid-overhead-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
        env.update(REID_DATA_DIR=tmp, REID_ADMIN_KEY=ADMIN_KEY, REID_LOG_LEVEL="WARNING")
        command = [sys.executable, "-c", STUB] if args.stub_encoder else [sys.executable, "-m", "app.cli"]
        server = subprocess.Popen([*command, "serve", "--port", str(port)], env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                if server.poll() is not None:
                    sys.exit("server exited")
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            with ReidClient(base, admin_key=ADMIN_KEY) as admin:
                tenant = admin.create_tenant("overhead")
                admin.set_privacy(tenant.id, epsilon=8, delta=1e-5)
                key = admin.issue_key(tenant.id).api_key
            chunks = [blobs[i : i + args.batch] for i in range(0, len(blobs), args.batch)]
            meta = [{"camera_id": "c1", "captured_at": "2026-11-27T08:00:00Z"}] * args.batch
            process = psutil.Process(server.pid)
            with ReidClient(base, api_key=key) as client:
                client.enroll(chunks[0][:2], meta[:2])  # warm-up
                server_before, client_before = process.cpu_times(), resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    done = sum(len(r.ids) for r in pool.map(lambda c: client.enroll(c, meta[: len(c)]), chunks))
                seconds = time.perf_counter() - started
                server_after, client_after = process.cpu_times(), resource.getrusage(resource.RUSAGE_SELF)
        finally:
            server.terminate()
            server.wait(timeout=60)
    server_cpu = (server_after.user + server_after.system) - (server_before.user + server_before.system)
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    result = {
        "stub_encoder": args.stub_encoder,
        "crops": done,
        "crops_per_s": round(done / seconds, 1),
        "server_cpu_ms_per_crop": round(1000 * server_cpu / done, 3),
        "client_cpu_ms_per_crop": round(1000 * client_cpu / done, 3),
        "batch": args.batch,
        "concurrency": args.concurrency,
        "load_average_end": os.getloadavg(),
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
