"""Do two replicas give the same grouped-search answers, to the bit, under concurrent load?

Start two ``reid-gallery serve`` replicas on one PostgreSQL database (each with its own data folder), then run this::

    createdb reid_check
    for p in 8801 8802; do REID_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/reid_check \\
      REID_ADMIN_KEY=check-admin-key REID_DATA_DIR=runs/replicas/var$p reid-gallery serve --port $p & done
    python benchmarks/replica_agreement.py --replicas http://127.0.0.1:8801 http://127.0.0.1:8802 --admin-key check-admin-key

It makes a tenant at ε = 32 and enrols the gallery crops of the first ``--people`` identities of the shared split with
``track_ref`` = person and camera (batches of 16, alternating replicas, 8 at once): five sixths of the people first,
then one grouped search on the first replica (its cache fills), erasures of 40 sampled items through it (an item of a
pooled release takes the release with it, so later samples from it are already gone), then the rest. It then sends
every query of those identities to both replicas twice, with and without a camera filter, 24 requests at once
(``group_by=track_ref``, k = 100). It counts queries whose answers (keys, item ids, score bits) differ between replicas
or repeats, and checks that hostile input on the grouped path gets a 422. Exit status 1 if any differ.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import sys
import time
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cuhk03-detected"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", nargs=2, required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--people", type=int, default=120)
    args = parser.parse_args()
    first, second = args.replicas
    admin = {"X-Admin-Key": args.admin_key}
    gallery = sorted((args.data / "bounding_box_test").glob("*.jpg"))
    people = sorted({p.name.split("_")[0] for p in gallery})[: args.people]
    crops = [p for p in gallery if p.name.split("_")[0] in people]
    queries = [p for p in sorted((args.data / "query").glob("*.jpg")) if p.name.split("_")[0] in people]
    client = httpx.Client(timeout=120)
    tenant = client.post(f"{first}/v1/admin/tenants", json={"name": f"replica-check-{time.time_ns()}"}, headers=admin).json()["id"]
    assert client.put(f"{first}/v1/admin/tenants/{tenant}/privacy", json={"epsilon": 32, "delta": 1e-5}, headers=admin).status_code == 200
    headers = {"X-API-Key": client.post(f"{first}/v1/admin/tenants/{tenant}/keys", json={"label": "check"}, headers=admin).json()["api_key"]}

    def enroll(base: str, batch: list[Path]) -> list[int]:
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        metas = [
            {
                "camera_id": "c" + p.name.split("_")[1][1],
                "captured_at": "2026-11-28T08:00:00Z",
                "track_ref": p.name.split("_")[0] + "_" + p.name.split("_")[1][:2],
            }
            for p in batch
        ]
        response = client.post(f"{base}/v1/gallery", files=files, data={"metadata": json.dumps(metas)}, headers=headers)
        assert response.status_code == 201, response.text
        return list(response.json()["ids"])

    def grouped(base: str, query: Path, form: dict[str, str]) -> str:
        files = {"image": (query.name, query.read_bytes(), "image/jpeg")}
        response = client.post(f"{base}/v1/search", files=files, data={"k": "100", "group_by": "track_ref", **form}, headers=headers)
        assert response.status_code == 200, response.text
        return json.dumps([(h["track_ref"], h["score"], h["item_ids"]) for h in response.json()["hits"]])

    def enroll_all(paths: list[Path]) -> list[int]:
        batches = [paths[i : i + 16] for i in range(0, len(paths), 16)]
        with cf.ThreadPoolExecutor(8) as pool:
            return [i for got in pool.map(lambda nb: enroll(second if nb[0] % 2 == 0 else first, nb[1]), enumerate(batches)) for i in got]

    # the first replica's cache is filled early and then follows erasures and more writes (dead rows, stale codes);
    # the second replica's is filled once, after all writes
    early = set(people[: len(people) * 5 // 6])
    ids = enroll_all([p for p in crops if p.name.split("_")[0] in early])
    grouped(first, queries[0], {})
    erased, gone = 0, 0
    for item in random.Random(1).sample(ids, 40):
        if client.get(f"{first}/v1/gallery/{item}", headers=headers).status_code == 404:
            gone += 1  # it went with an earlier erasure of its pooled release
            continue
        answer = client.delete(f"{first}/v1/gallery/{item}", headers=headers)
        assert answer.status_code == 200, answer.text
        erased += int(answer.json()["deleted"])
    ids += enroll_all([p for p in crops if p.name.split("_")[0] not in early])
    time.sleep(1.0)  # the per-record index follows the change log; grouped search reads SQL itself

    jobs = [(base, q, form) for q in queries for form in ({}, {"camera_ids": "c1"}) for base in (first, second)] * 2
    with cf.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda job: grouped(*job), jobs))
    seen: dict[tuple[str, str], set[str]] = {}
    for (_, query, form), answer in zip(jobs, answers, strict=True):
        seen.setdefault((query.name, json.dumps(form)), set()).add(answer)
    differ = sum(len(v) > 1 for v in seen.values())
    empty = sum(answer == "[]" for answer in answers)
    hostile = [
        client.post(f"{first}/v1/search", files={"image": ("x.jpg", b"not an image", "image/jpeg")}, data={"group_by": "track_ref"}, headers=headers),
        client.post(
            f"{first}/v1/search",
            files={"image": (queries[0].name, queries[0].read_bytes(), "image/jpeg")},
            data={"group_by": "nope"},
            headers=headers,
        ),
    ]
    print(f"enrolled {len(ids)} crops of {len(people)} people; {40 - gone} erasures took {erased} items (pooled releases go whole)")
    print(
        f"{len(jobs)} grouped searches on both replicas, {len(seen)} distinct (query, filter) pairs, {differ} with differing answers, {empty} empty"
    )
    print("hostile input:", [(r.status_code, r.json()["error"]["code"]) for r in hostile])
    sys.exit(1 if differ or empty or any(r.status_code != 422 for r in hostile) else 0)


if __name__ == "__main__":
    main()
