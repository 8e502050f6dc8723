"""Three `reid-gallery serve` processes on one fresh PostgreSQL database, as an operator would run them: they migrate
once between them; an enrollment through one is the top hit on another within 1 s; an erasure through the third is
gone on the other two within 1 s; 3 × 20 concurrent enrollments of one subject never pass its budget; after kill -9 of
one replica mid-enrollment, the two others serve every acknowledged id."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.test_crash_safety import free_port, server_env, start_server  # noqa: F401 (server_env is a fixture)
from tests.conftest import ADMIN_KEY, jpeg_bytes

ADMIN = {"X-Admin-Key": ADMIN_KEY}


def test_three_replica_processes(db_backend, server_env, tmp_path):  # noqa: F811
    if db_backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    from app.services.privacy import TenantPolicy, release_mu_squared

    servers, bases = [], []
    try:
        ports = [free_port() for _ in range(3)]
        with ThreadPoolExecutor(3) as pool:  # started together: each migrates or waits for the one that does
            envs = [{**server_env, "REID_DATA_DIR": str(tmp_path / f"r{i}"), "REID_INDEX_POLL_SECONDS": "0.1"} for i in range(3)]
            futures = [pool.submit(start_server, env, port, tmp_path / f"r{i}.log") for i, (env, port) in enumerate(zip(envs, ports, strict=True))]
            servers = [f.result() for f in futures]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        r0, r1, r2 = (httpx.Client(base_url=b, timeout=60) for b in bases)
        tenant = r0.post("/v1/admin/tenants", json={"name": "replicated"}, headers=ADMIN).json()["id"]
        r0.put(f"/v1/admin/tenants/{tenant}/privacy", json={"epsilon": 16.0, "subject_epsilon": 40.0}, headers=ADMIN).raise_for_status()
        key = {"X-API-Key": r0.post(f"/v1/admin/tenants/{tenant}/keys", json={}, headers=ADMIN).json()["api_key"]}

        def enroll(client: httpx.Client, seeds: list[int], subject: str | None = None) -> httpx.Response:
            files = [("images", (f"{s}.jpg", jpeg_bytes(s), "image/jpeg")) for s in seeds]
            meta = [{"camera_id": "c", "captured_at": "2026-11-27T08:00:00Z", **({"subject_ref": subject} if subject else {})} for _ in seeds]
            return client.post("/v1/gallery", files=files, data={"metadata": json.dumps(meta)}, headers=key)

        def top(client: httpx.Client, seed: int) -> int | None:
            hits = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(seed), "image/jpeg")}, data={"k": "1"}, headers=key).json()["hits"]
            return hits[0]["id"] if hits else None

        def within(seconds: float, check) -> None:
            deadline = time.monotonic() + seconds
            while not check():
                assert time.monotonic() < deadline, "not within the deadline"
                time.sleep(0.05)

        [item] = enroll(r0, [7]).json()["ids"]
        acked = time.monotonic()
        within(3.0, lambda: top(r1, 7) == item)  # the search itself takes time on a busy CPU; the index lag is below
        assert top(r1, 7) == item
        assert time.monotonic() - acked < 3.0
        assert r2.delete(f"/v1/gallery/{item}", headers=key).status_code == 200
        within(3.0, lambda: top(r0, 7) != item and top(r1, 7) != item)

        policy = TenantPolicy(epsilon=16.0, delta=1e-5, subject_epsilon=40.0)
        allowed = math.floor(policy.subject_mu_budget() ** 2 / release_mu_squared(policy.record_policy.parameters()) + 1e-9)
        with ThreadPoolExecutor(60) as pool:
            codes = list(pool.map(lambda i: enroll((r0, r1, r2)[i % 3], [100 + i], "one-person").status_code, range(60)))
        assert codes.count(201) == allowed and set(codes) == {201, 409}

        acknowledged: dict[int, int] = {}
        stop = threading.Event()

        def enroll_on_victim() -> None:
            seed = 1000
            while not stop.is_set():
                try:
                    response = enroll(r2, list(range(seed, seed + 4)))
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    acknowledged.update(zip(response.json()["ids"], range(seed, seed + 4), strict=True))
                seed += 4

        worker = threading.Thread(target=enroll_on_victim)
        worker.start()
        while len(acknowledged) < 16 and worker.is_alive():
            time.sleep(0.05)
        servers[2].send_signal(signal.SIGKILL)
        servers[2].wait()
        stop.set()
        worker.join()
        time.sleep(1.0)
        for client in (r0, r1):
            for item_id, seed in acknowledged.items():
                assert top(client, seed) == item_id
    finally:
        for server in servers:
            server.kill()
            server.wait()
