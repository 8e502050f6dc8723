"""Load test: C concurrent clients for S seconds on one tenant, half enrolling batches of crops with a subject_ref, half
searching; spread over one or more replicas. Prints the status histogram, crops/s and latency percentiles as JSON.

It creates its own tenant (ε given by --epsilon) through the operator API of the first URL, and checks at the end that
the gallery holds exactly the acknowledged ids and that every replica's index has them (within 1 s of the end).
Clients honour Retry-After on 429/503 (as ``reid_client`` does); those answers are counted, not failures.

    reid-gallery serve --port 8000 &                                   # REID_ADMIN_KEY=… or var/admin.key
    python benchmarks/load.py --url http://127.0.0.1:8000 --admin-key-file var/admin.key --clients 50 --seconds 60
    python benchmarks/load.py --url http://127.0.0.1:8001 --url http://127.0.0.1:8002 --url http://127.0.0.1:8003 ...
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected" / "bounding_box_test"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[str] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: {"enroll": [], "search": [], "answered_2xx": []})
    acknowledged: list[int] = field(default_factory=list)
    crops_enrolled: int = 0
    searches_ok: int = 0
    retry_after_missing: int = 0
    errors: list[str] = field(default_factory=list)


def load_crops(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(folder.glob("*.jpg"))[:limit]
    if not paths:
        raise SystemExit(f"no crops in {folder} (the shared CUHK03 copy)")
    return [p.read_bytes() for p in paths]


def setup_tenant(url: str, admin_key: str, epsilon: str) -> tuple[int, str]:
    admin = {"X-Admin-Key": admin_key}
    with httpx.Client(base_url=url, timeout=60) as http:
        tenant = http.post("/v1/admin/tenants", json={"name": f"load-{time.time_ns()}"}, headers=admin).raise_for_status().json()["id"]
        value: float | str = epsilon if epsilon == "inf" else float(epsilon)
        http.put(f"/v1/admin/tenants/{tenant}/privacy", json={"epsilon": value, "delta": 1e-5}, headers=admin).raise_for_status()
        key = http.post(f"/v1/admin/tenants/{tenant}/keys", json={"label": "load"}, headers=admin).raise_for_status().json()["api_key"]
    return tenant, key


def client_loop(n: int, url: str, key: str, crops: list[bytes], batch: int, deadline: float, tally: Tally, backoff: bool) -> None:
    enrolling = n % 2 == 0
    serial = count()
    rng = np.random.default_rng(n)
    with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": key}) as http:
        while time.monotonic() < deadline:
            i = next(serial)
            picks = [crops[int(j)] for j in rng.integers(0, len(crops), batch if enrolling else 1)]
            started = time.perf_counter()
            try:
                if enrolling:
                    files = [("images", (f"{j}.jpg", data, "image/jpeg")) for j, data in enumerate(picks)]
                    meta = [{"camera_id": f"cam-{n % 8}", "captured_at": "2026-11-27T08:00:00Z", "subject_ref": f"c{n}-{i}"}] * batch
                    response = http.post("/v1/gallery", files=files, data={"metadata": json.dumps(meta)})
                else:
                    response = http.post("/v1/search", files={"image": ("q.jpg", picks[0], "image/jpeg")}, data={"k": "10"})
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.statuses["connection_error"] += 1
                    tally.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            kind = "enroll" if enrolling else "search"
            wait = 0.0
            with tally.lock:
                tally.statuses[str(response.status_code)] += 1
                tally.latency[kind].append(elapsed)
                if response.status_code < 300:
                    tally.latency["answered_2xx"].append(elapsed)
                if response.status_code == 201:
                    ids = response.json()["ids"]
                    tally.acknowledged.extend(ids)
                    tally.crops_enrolled += len(ids)
                elif response.status_code == 200:
                    tally.searches_ok += 1
                elif response.status_code in (429, 503):
                    if "Retry-After" not in response.headers:
                        tally.retry_after_missing += 1
                    details = (response.json().get("error") or {}).get("details") or {}
                    wait = details.get("retry_after_ms", 1000) / 1000 if isinstance(details, dict) else 1.0
                else:
                    tally.errors.append(f"{response.status_code}: {response.text[:200]}")
            if backoff and wait:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    arr = np.array(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", help="a replica's base URL (repeat for several; clients are spread over them)")
    parser.add_argument("--admin-key")
    parser.add_argument("--admin-key-file", type=Path)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--batch", type=int, default=4, help="crops per enrollment")
    parser.add_argument("--epsilon", default="64")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of JPEG crops (read into memory)")
    parser.add_argument("--crops", type=int, default=500, help="how many distinct crops to cycle through")
    parser.add_argument("--no-backoff", action="store_true", help="do not wait Retry-After after a 429/503")
    args = parser.parse_args()
    urls = args.url or ["http://127.0.0.1:8000"]
    admin_key = args.admin_key or (args.admin_key_file.read_text().strip() if args.admin_key_file else None)
    if not admin_key:
        parser.error("give --admin-key or --admin-key-file")

    crops = load_crops(args.data, args.crops)
    tenant, key = setup_tenant(urls[0], admin_key, args.epsilon)
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.seconds
    threads = [
        threading.Thread(target=client_loop, args=(n, urls[n % len(urls)], key, crops, args.batch, deadline, tally, not args.no_backoff))
        for n in range(args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started

    admin = {"X-Admin-Key": admin_key}
    replica_sizes: list[int | None] = []
    consistent_after_s = None
    gallery_size = None
    end = time.monotonic()
    while time.monotonic() - end < 5:
        replica_sizes = []
        for url in urls:
            try:
                info = httpx.get(f"{url}/v1/admin/tenants/{tenant}", headers=admin, timeout=30).json()
                replica_sizes.append(info["index_size"])
                gallery_size = info["gallery_size"]
            except (httpx.HTTPError, KeyError, ValueError):
                replica_sizes.append(None)
        if all(size == len(tally.acknowledged) for size in replica_sizes):
            consistent_after_s = round(time.monotonic() - end, 2)
            break
        time.sleep(0.05)
    alive = all(httpx.get(f"{url}/healthz", timeout=10).status_code == 200 for url in urls)
    requests_total = sum(tally.statuses.values())
    server_errors = sum(v for k, v in tally.statuses.items() if k.isdigit() and int(k) >= 500 and k != "503")
    report = {
        "urls": urls,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "batch": args.batch,
        "epsilon": args.epsilon,
        "requests": requests_total,
        "statuses": dict(sorted(tally.statuses.items())),
        "answers_5xx_other_than_503": server_errors,
        "connection_errors": tally.statuses.get("connection_error", 0),
        "retry_after_missing": tally.retry_after_missing,
        "requests_per_s": round(requests_total / wall, 1),
        "enrolled_crops_per_s": round(tally.crops_enrolled / wall, 1),
        "searches_per_s": round(tally.searches_ok / wall, 1),
        "latency_all": percentiles(tally.latency["enroll"] + tally.latency["search"]),
        "latency_enroll": percentiles(tally.latency["enroll"]),
        "latency_search": percentiles(tally.latency["search"]),
        "latency_2xx_only": percentiles(tally.latency["answered_2xx"]),
        "acknowledged_ids": len(tally.acknowledged),
        "gallery_size": gallery_size,
        "replica_index_sizes": replica_sizes,
        "replicas_consistent_after_s": consistent_after_s,
        "gallery_equals_acknowledged": gallery_size == len(tally.acknowledged) == len(set(tally.acknowledged)),
        "service_up": alive,
        "first_errors": tally.errors[:5],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
