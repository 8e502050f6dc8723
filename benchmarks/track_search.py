"""Track search over HTTP on the shared split: per-record vs track-level search quality at a given ε.

Starts `reid-gallery serve` on a fresh SQLite data folder (or uses --url with --admin-key), creates
one tenant per ε, enrols the gallery crops of the shared CUHK03 split with
``track_ref = "{person}_c{camera}"`` (a person seen by one camera), then searches every query crop
twice — per record and with ``group_by=track_ref`` — and scores the answers with the Market-1501
protocol: a query's own-camera records/track of its identity are ignored, the other camera's are
the matches. With one relevant track per query, track AP is 1/rank when the track is in the
top-k answer (k = 100, the API's maximum), else 0; per-record AP is computed from the top-k
answer the same way (mAP@k: a lower bound of the full mAP, which needs every match's rank).

    python benchmarks/track_search.py --epsilons 32 inf --json runs/track_search.json
    python benchmarks/track_search.py --epsilons 32 inf --max-ids 20        # a quick sanity run on 20 identities

Crops go in requests of ``--batch`` in file order (a track's crops are adjacent, so most tracks land in one request),
or one request per track (``--batching track``), or one per crop (``--batching crop``: nothing can be pooled). With the
tenant policy's ``pool_tracks`` (on unless ``--no-pool``) the crops of one track in one request are released as one
noisy mean; the run counts the pooled releases from the enrollment answers.

    python benchmarks/track_search.py --epsilons 32 inf --batching track --json runs/track_search_pooled.json
    python benchmarks/track_search.py --epsilons 32 --no-pool --json runs/track_search_per_record.json

``--query-tracks`` adds a third pass: each query is sent as a query track, its crop plus the same person's other
crops from the same camera (the integrator holds a track, not one crop; those crops are in the gallery too, as the
query's own-camera track, which the protocol ignores), one request with several ``image`` parts.

Each grouped hit is read as the API answers it (``track_ref``, ``score``, ``item_ids``, ``cameras``, ``first_seen``,
``last_seen``, ``count``); the run also checks that every hit's ``item_ids`` are records of that track.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

NAME = re.compile(r"([-\d]+)_c(\d)")
K = 100
MAX_QUERY_CROPS = 16  # the service's default REID_MAX_QUERY_CROPS


def parse(path: Path) -> tuple[int, int]:
    match = NAME.search(path.name)
    assert match is not None, path
    return int(match.group(1)), int(match.group(2))


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One call, retried while the service answers 429/503 with Retry-After."""
    for _ in range(50):
        response = client.request(method, url, **kwargs)
        if response.status_code not in (429, 503):
            response.raise_for_status()
            return response
        details = (response.json().get("error") or {}).get("details") or {}
        wait_ms = details.get("retry_after_ms") if isinstance(details, dict) else None
        time.sleep((wait_ms / 1000) if wait_ms else float(response.headers.get("retry-after", "1")))
    raise RuntimeError(f"{method} {url}: still overloaded after 50 tries")


def start_server(port: int, data_dir: Path, admin_key: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"REID_DATA_DIR": str(data_dir), "REID_ADMIN_KEY": admin_key, "REID_LOG_LEVEL": "WARNING"}
    exe = Path(sys.executable).with_name("reid-gallery")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("the service did not become ready in 300 s")


def make_tenant(client: httpx.Client, url: str, admin_key: str, epsilon: float, pool_tracks: bool = True) -> str:
    headers = {"X-Admin-Key": admin_key}
    name = f"tracks-eps-{epsilon}-{secrets.token_hex(3)}"
    tenant = request(client, "POST", f"{url}/v1/admin/tenants", headers=headers, json={"name": name}).json()
    policy = {"epsilon": "inf" if np.isinf(epsilon) else epsilon, "delta": 1e-5, "pool_tracks": pool_tracks}
    request(client, "PUT", f"{url}/v1/admin/tenants/{tenant['id']}/privacy", headers=headers, json=policy)
    return str(request(client, "POST", f"{url}/v1/admin/tenants/{tenant['id']}/keys", headers=headers, json={}).json()["api_key"])


def chunked(paths: list[Path], batch: int, batching: str) -> list[list[Path]]:
    """Requests of ``batch`` crops in file order, one per track (person and camera), or one per crop."""
    if batching == "crop":
        return [[p] for p in paths]
    if batching == "track":
        tracks: dict[tuple[int, int], list[Path]] = {}
        for p in paths:
            tracks.setdefault(parse(p), []).append(p)
        return [crops[i : i + batch] for crops in tracks.values() for i in range(0, len(crops), batch)]
    return [paths[i : i + batch] for i in range(0, len(paths), batch)]


def enrol(url: str, key: str, paths: list[Path], batch: int, workers: int, batching: str = "sorted") -> tuple[float, dict[str, int]]:
    """Enrol every crop; returns crops/s and what the answers say about pooling."""
    started = time.time()
    pooled: list[int] = []

    def send(chunk: list[Path]) -> int:
        meta = []
        for p in chunk:
            pid, cam = parse(p)
            meta.append({"camera_id": f"c{cam}", "captured_at": "2026-11-26T08:00:00Z", "track_ref": f"{pid:04d}_c{cam}", "external_id": p.name})
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
        with httpx.Client(timeout=300) as client:
            answer = request(client, "POST", f"{url}/v1/gallery", headers={"X-API-Key": key}, files=files, data={"metadata": json.dumps(meta)}).json()
        pooled.extend(len(release["item_ids"]) for release in answer.get("pooled", []))
        return len(answer["ids"])

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        requests = chunked(paths, batch, batching)
        enrolled = sum(pool.map(send, requests))
    assert enrolled == len(paths)
    shape = {"requests": len(requests), "pooled_releases": len(pooled), "pooled_crops": sum(pooled)}
    return len(paths) / (time.time() - started), shape


def search_all(
    url: str, key: str, queries: list[Path], group_by: str | None, workers: int, companions: dict[Path, list[Path]] | None = None
) -> list[dict[str, Any]]:
    """One search per query; with ``companions``, each query's crop and its companions are one query track."""

    def one(path: Path) -> dict[str, Any]:
        data = {"k": str(K)} | ({"group_by": group_by} if group_by else {})
        with httpx.Client(timeout=120) as client:
            crops = [path, *(companions or {}).get(path, [])]
            files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in crops]
            return dict(request(client, "POST", f"{url}/v1/search", headers={"X-API-Key": key}, files=files, data=data).json())

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, queries))


def enrolled_ids(client: httpx.Client, url: str, key: str) -> list[dict[str, Any]]:
    """Every record of the tenant (id, track_ref), through the list endpoint."""
    items, after = [], 0
    while True:
        page = request(client, "GET", f"{url}/v1/gallery", headers={"X-API-Key": key}, params={"limit": 1000, "after_id": after}).json()
        items += [{"id": i["id"], "track_ref": i["track_ref"]} for i in page["items"]]
        if page["next_after_id"] is None:
            return items
        after = page["next_after_id"]


def ids_by_track(items: list[dict[str, Any]]) -> dict[str, set[int]]:
    tracks: dict[str, set[int]] = {}
    for item in items:
        tracks.setdefault(item["track_ref"], set()).add(item["id"])
    return tracks


def check_groups(answers: list[dict[str, Any]], tracks: dict[str, set[int]]) -> None:
    """Each grouped hit holds exactly its track's records (no filters here), best first."""
    for answer in answers:
        assert answer["group_by"] == "track_ref", answer
        scores = [h["score"] for h in answer["hits"]]
        assert scores == sorted(scores, reverse=True), scores
        for hit in answer["hits"]:
            assert set(hit["item_ids"]) == tracks[hit["track_ref"]] and hit["count"] == len(hit["item_ids"]), hit
            assert hit["first_seen"] <= hit["last_seen"] and hit["cameras"], hit


def score(queries: list[Path], answers: list[dict[str, Any]], *, tracks: bool) -> dict[str, float]:
    """Rank-1 and mAP@k from the answers, Market-1501 protocol (own camera of the same identity ignored)."""
    ranks1, aps = [], []
    for path, answer in zip(queries, answers, strict=True):
        pid, cam = parse(path)
        hits = answer["hits"]
        labels = []
        for hit in hits:
            if tracks:
                hit_pid, hit_cam = (int(v) for v in re.fullmatch(r"(\d+)_c(\d)", hit["track_ref"]).groups())  # type: ignore[union-attr]
            else:
                hit_pid, hit_cam = parse(Path(hit["external_id"]))
            if hit_pid == pid and hit_cam == cam:
                continue  # junk: the query's own camera
            labels.append(hit_pid == pid)
        hits_at = np.flatnonzero(labels)
        ranks1.append(bool(labels and labels[0]))
        if tracks:
            aps.append(1.0 / (hits_at[0] + 1) if hits_at.size else 0.0)
        else:
            relevant = answer["_relevant"]
            precision = [(i + 1) / (r + 1) for i, r in enumerate(hits_at)]
            aps.append(sum(precision) / relevant if relevant else 0.0)
    return {"rank1": float(np.mean(ranks1)), f"mAP@{K}": float(np.mean(aps)), "queries": len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cuhk03-detected")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[32.0, float("inf")])
    parser.add_argument("--url", help="use a running service (with --admin-key) instead of starting one")
    parser.add_argument("--admin-key")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--batch", type=int, default=32, help="crops per enrollment request (at most)")
    parser.add_argument("--batching", choices=["sorted", "track", "crop"], default="sorted", help="how crops are grouped into requests (above)")
    parser.add_argument("--no-pool", action="store_true", help="tenant policy pool_tracks=false: every crop released alone")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-queries", type=int, default=0, help="search only the first N queries (quick runs)")
    parser.add_argument("--max-ids", type=int, default=0, help="only the first N identities' gallery and query crops (quick runs)")
    parser.add_argument("--query-tracks", action="store_true", help="also search with query tracks (see above)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    gallery = sorted((args.data / "bounding_box_test").glob("*.jpg"))
    gallery = [p for p in gallery if parse(p)[0] >= 0]
    queries = sorted((args.data / "query").glob("*.jpg"))
    if args.max_ids:
        ids = sorted({parse(p)[0] for p in gallery})[: args.max_ids]
        gallery = [p for p in gallery if parse(p)[0] in ids]
        queries = [q for q in queries if parse(q)[0] in ids]
    if args.max_queries:
        queries = queries[: args.max_queries]
    # per-record mAP needs each query's number of matches (the other camera's crops of its identity)
    crops_of: dict[tuple[int, int], list[Path]] = {}  # (person, camera) -> that track's gallery crops
    for p in gallery:
        crops_of.setdefault(parse(p), []).append(p)
    counts = {track: len(crops) for track, crops in crops_of.items()}
    keep = [q for q in queries if counts.get((parse(q)[0], 3 - parse(q)[1]), 0) > 0]

    proc = None
    admin_key = args.admin_key or secrets.token_urlsafe(24)
    url = args.url
    tmp = tempfile.TemporaryDirectory(prefix="track-search-")
    if url is None:
        proc = start_server(args.port, Path(tmp.name), admin_key)
        url = f"http://127.0.0.1:{args.port}"
    results: dict[str, Any] = {"gallery": len(gallery), "queries": len(keep), "k": K, "runs": []}
    try:
        with httpx.Client(timeout=60) as client:
            results["model"] = client.get(f"{url}/v1/model").json()
            for epsilon in args.epsilons:
                key = make_tenant(client, url, admin_key, epsilon, pool_tracks=not args.no_pool)
                rate, shape = enrol(url, key, gallery, args.batch, args.workers, args.batching)
                per_record = search_all(url, key, keep, None, args.workers)
                for q, a in zip(keep, per_record, strict=True):
                    pid, cam = parse(q)
                    a["_relevant"] = counts.get((pid, 3 - cam), 0)
                grouped = search_all(url, key, keep, "track_ref", args.workers)
                check_groups(grouped, ids_by_track(enrolled_ids(client, url, key)))
                run = {
                    "epsilon": "inf" if np.isinf(epsilon) else epsilon,
                    "enrol_crops_per_s": round(rate, 1),
                    "batching": args.batching,
                    "pool_tracks": not args.no_pool,
                    **shape,
                    "records": score(keep, per_record, tracks=False),
                    "tracks": score(keep, grouped, tracks=True),
                }
                if args.query_tracks:
                    companions = {q: crops_of.get(parse(q), [])[: MAX_QUERY_CROPS - 1] for q in keep}
                    by_track = search_all(url, key, keep, "track_ref", args.workers, companions)
                    run["query_tracks"] = score(keep, by_track, tracks=True) | {
                        "mean_query_crops": float(np.mean([1 + len(c) for c in companions.values()]))
                    }
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        tmp.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
