"""Two replicas (two app objects, each with its own data dir) on one PostgreSQL database: writes through one show in
the other's searches within a second, budgets are never overspent, deleted tenants stay deleted everywhere."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.api.helpers import ADMIN, enroll, make_tenant, meta, search
from tests.conftest import ADMIN_KEY


@pytest.fixture
def replicas(db_backend, db_url, tmp_path, tiny_embedder) -> Iterator[list[Any]]:
    if db_backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database (SQLite serves one process)")
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    with ExitStack() as stack:
        clients = []
        for name in ("a", "b"):
            settings = Settings(
                data_dir=tmp_path / name, database_url=db_url, admin_key=ADMIN_KEY, max_batch=32, device="cpu", index_poll_seconds=0.1
            )
            clients.append(stack.enter_context(TestClient(create_app(settings, embedder=tiny_embedder))))
        yield clients


def indexed(client: Any, tenant_id: int) -> set[int]:
    """The ids in this replica's index of the tenant (what its searches see)."""
    return {int(i) for i in client.app.state.reid.indexes.get(tenant_id).ids()}


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the deadline"
        time.sleep(0.02)
    return time.monotonic() - started


def test_enrollment_and_erasure_through_one_replica_show_in_the_others_search(replicas):
    a, b = replicas
    tenant_id, key = make_tenant(a, "shared")
    ids = enroll(a, key, [1, 2, 3]).json()["ids"]
    assert within(1.0, lambda: indexed(b, tenant_id) == set(ids)) < 1.0
    assert search(b, key, 2, k=1).json()["hits"][0]["id"] == ids[1]
    assert b.post("/v1/gallery/erase", json={"before": "9999-01-01T00:00:00Z"}, headers={"X-API-Key": key}).json() == {"deleted": 3}
    assert within(1.0, lambda: indexed(a, tenant_id) == set()) < 1.0
    assert search(a, key, 2, k=3).json()["hits"] == []
    more = enroll(b, key, [4]).json()["ids"]
    within(1.0, lambda: indexed(a, tenant_id) == set(more))
    assert [h["id"] for h in search(a, key, 4, k=3).json()["hits"]] == more


def test_concurrent_charges_on_two_replicas_never_exceed_a_subject_budget(replicas):
    from app.services.privacy import TenantPolicy, release_mu_squared

    a = replicas[0]
    tenant_id, key = make_tenant(a, "budgeted", epsilon=16.0, subject_epsilon=40.0)
    policy = TenantPolicy(epsilon=16.0, delta=1e-5, subject_epsilon=40.0)
    allowed = math.floor(policy.subject_mu_budget() ** 2 / release_mu_squared(policy.record_policy.parameters()) + 1e-9)
    assert 2 <= allowed < 20
    codes: list[int] = []
    lock = threading.Lock()

    def one(client: Any, seed: int) -> None:
        response = enroll(client, key, [seed], [meta(subject_ref="the-same-person")])
        with lock:
            codes.append(response.status_code)

    threads = [threading.Thread(target=one, args=(replicas[i % 2], i)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(codes)) == [201, 409] and codes.count(201) == allowed
    listed = a.get("/v1/gallery", params={"subject_ref": "the-same-person"}, headers={"X-API-Key": key}).json()["items"]
    assert len(listed) == allowed
    info = [c.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).json() for c in replicas]
    within(1.0, lambda: all(len(indexed(c, tenant_id)) == allowed for c in replicas))
    assert info[0]["gallery_size"] == allowed


def test_a_deleted_tenant_is_dropped_by_every_replica_and_its_files_stay_gone(replicas, tmp_path):
    a, b = replicas
    tenant_id, key = make_tenant(a, "doomed")
    enroll(a, key, [1, 2])
    within(1.0, lambda: len(indexed(b, tenant_id)) == 2)
    for client in replicas:
        client.app.state.reid.indexes.save_all()
    files = [tmp_path / name / "indexes" / f"tenant_{tenant_id}.index" for name in ("a", "b")]
    assert all(f.exists() for f in files)
    assert a.delete(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 200
    within(1.0, lambda: not any(f.exists() for f in files))
    for client in replicas:
        client.app.state.reid.indexes.save_all()
    assert not any(f.exists() for f in files)


def test_a_replica_that_starts_later_catches_up_from_sql(replicas, db_url, tmp_path, tiny_embedder):
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    a, _ = replicas
    _, key = make_tenant(a, "late")
    ids = enroll(a, key, [5, 6]).json()["ids"]
    settings = Settings(data_dir=tmp_path / "c", database_url=db_url, admin_key=ADMIN_KEY, device="cpu")
    with TestClient(create_app(settings, embedder=tiny_embedder)) as c:
        assert search(c, key, 6, k=1).json()["hits"][0]["id"] == ids[1]


def test_retention_runs_once_however_many_replicas_try(replicas):
    a, b = replicas
    tenant_id, key = make_tenant(a, "expiring")
    a.patch(f"/v1/admin/tenants/{tenant_id}", json={"retention_days": 30}, headers=ADMIN)
    enroll(a, key, [1, 2], [meta(captured_at="2020-01-01T00:00:00Z"), meta()])
    results: list[dict[int, int]] = []
    runs = [threading.Thread(target=lambda c=c: results.append(c.app.state.reid.gallery.purge_expired(min_interval_s=3600))) for c in (a, b, a, b)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert sorted(results, key=len) == [{}, {}, {}, {tenant_id: 1}]
    assert b.app.state.reid.gallery.purge_expired(min_interval_s=3600) == {}  # ran within the interval: skipped
