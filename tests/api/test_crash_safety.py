"""kill -9 during batch enrollments loses no acknowledged write and leaves SQL and FAISS equal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, jpeg_bytes

ADMIN = {"X-Admin-Key": ADMIN_KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not become ready")


@pytest.fixture
def server_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    import torch  # noqa: F401

    from models.checkpoint import save_encoder
    from models.encoder import ReIDEncoder

    checkpoint = tmp_path / "tiny.pt"
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 32, "input_size": [64, 32], "last_stride": 1, "name": "tiny-test"}
    save_encoder(ReIDEncoder(embedding_dim=32), checkpoint, meta)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
    env.update(
        REID_DATA_DIR=str(tmp_path / "data"), REID_DATABASE_URL=db_url, REID_ADMIN_KEY=ADMIN_KEY, REID_CHECKPOINT=str(checkpoint),
        REID_DEVICE="cpu", REID_INDEX_SAVE_SECONDS="0.5", REID_LOG_LEVEL="WARNING", REID_ENCODER_BACKEND="torch",  # start fast: no export at start
    )  # fmt: skip
    return env


def test_kill_9_mid_enrollment(server_env, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    server = start_server(server_env, port, log)
    try:
        tenant = httpx.post(f"{base}/v1/admin/tenants", json={"name": "crash"}, headers=ADMIN).json()["id"]
        httpx.put(f"{base}/v1/admin/tenants/{tenant}/privacy", json={"epsilon": "inf"}, headers=ADMIN)
        key = httpx.post(f"{base}/v1/admin/tenants/{tenant}/keys", json={}, headers=ADMIN).json()["api_key"]
        acknowledged: dict[int, int] = {}  # item id -> crop seed
        stop = threading.Event()

        def enroll_forever() -> None:
            seed = 0
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    seeds = list(range(seed, seed + 8))
                    seed += 8
                    files = [("images", (f"{s}.jpg", jpeg_bytes(s), "image/jpeg")) for s in seeds]
                    metadata = json.dumps([{"camera_id": "c", "captured_at": "2026-01-01T00:00:00Z"}] * 8)
                    try:
                        response = client.post(f"{base}/v1/gallery", files=files, data={"metadata": metadata}, headers={"X-API-Key": key})
                    except httpx.HTTPError:
                        return  # the server died mid-request: not acknowledged
                    if response.status_code == 201:
                        acknowledged.update(zip(response.json()["ids"], seeds, strict=True))

        worker = threading.Thread(target=enroll_forever)
        worker.start()
        while len(acknowledged) < 80 and worker.is_alive():
            time.sleep(0.05)
        time.sleep(0.13)  # land the kill somewhere inside a later request
        server.send_signal(signal.SIGKILL)
        server.wait()
        stop.set()
        worker.join()
        assert len(acknowledged) >= 80

        server = start_server(server_env, port, log)
        info = httpx.get(f"{base}/v1/admin/tenants/{tenant}", headers=ADMIN).json()
        assert info["gallery_size"] == info["index_size"] >= len(acknowledged)
        with httpx.Client(timeout=30) as client:
            for item_id, seed in acknowledged.items():
                files = {"image": ("q.jpg", jpeg_bytes(seed), "image/jpeg")}
                hits = client.post(f"{base}/v1/search", files=files, data={"k": "1"}, headers={"X-API-Key": key}).json()["hits"]
                assert hits and hits[0]["id"] == item_id
    finally:
        server.kill()
        server.wait()
