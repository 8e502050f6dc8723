"""Run the service for Schemathesis: a uvicorn server in a thread, a tenant for integrator calls, one for destruction."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import jpeg_bytes


@dataclass(frozen=True)
class FuzzTarget:
    base_url: str
    admin_key: str
    api_key: str
    integrator_tenant: int
    victim_tenant: int

    def env(self) -> dict[str, str]:
        """What the hooks module (tests/api/schemathesis_hooks.py) reads."""
        return {"REID_FUZZ_INTEGRATOR_TENANT": str(self.integrator_tenant), "REID_FUZZ_VICTIM_TENANT": str(self.victim_tenant)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, *, access_log: bool = False) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    level = "info" if access_log else "warning"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=level, access_log=access_log))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def prepare(base_url: str, admin_key: str) -> FuzzTarget:
    """Two tenants with policies and keys; the integrator one gets a few crops to find."""
    admin = {"X-Admin-Key": admin_key}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        ids, keys = [], []
        for name in ("fuzz-integrator", "fuzz-victim"):
            tenant = http.post("/v1/admin/tenants", json={"name": name}, headers=admin).raise_for_status().json()["id"]
            http.put(f"/v1/admin/tenants/{tenant}/privacy", json={"epsilon": 8.0}, headers=admin).raise_for_status()
            keys.append(http.post(f"/v1/admin/tenants/{tenant}/keys", json={"label": name}, headers=admin).raise_for_status().json()["api_key"])
            ids.append(tenant)
        files = [("images", (f"{i}.jpg", jpeg_bytes(i), "image/jpeg")) for i in range(4)]
        metadata = json.dumps([{"camera_id": f"cam-{i}", "captured_at": "2026-11-26T08:00:00Z", "track_ref": f"t{i}"} for i in range(4)])
        http.post("/v1/gallery", files=files, data={"metadata": metadata}, headers={"X-API-Key": keys[0]}).raise_for_status()
    return FuzzTarget(base_url, admin_key, keys[0], integrator_tenant=ids[0], victim_tenant=ids[1])
