"""The typed client (sync and async) against a real server, its retries, and the enroll/search CLI on it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from reid_client import AsyncReidClient, ReidClient, RetryPolicy, errors, models
from tests.conftest import ADMIN_KEY, jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(settings, tiny_embedder):
    from app.main import create_app
    from tests.api.fuzzing import serve

    with serve(create_app(settings, embedder=tiny_embedder)) as url:
        yield url


@pytest.fixture
def tenant(server):
    with ReidClient(server, admin_key=ADMIN_KEY) as admin:
        created = admin.create_tenant("client-test", retention_days=30)
        admin.set_privacy(created.id, epsilon="inf")
        key = admin.issue_key(created.id, label="client").api_key
    return created.id, key


def test_sync_client_covers_the_integrator_and_operator_flows(server, tenant):
    tenant_id, key = tenant
    with ReidClient(server, api_key=key, admin_key=ADMIN_KEY) as client:
        enrolled = client.enroll(
            [("a.jpg", jpeg_bytes(1)), jpeg_bytes(2), ("c.jpg", jpeg_bytes(3), "image/jpeg")],
            [
                {"camera_id": "c1", "captured_at": datetime(2026, 11, 26, 8, tzinfo=UTC), "track_ref": "t1"},
                {"camera_id": "c2", "captured_at": "2026-11-26T08:01:00Z", "subject_ref": "s2"},
                {"camera_id": "c3", "captured_at": "2026-11-26T08:02:00+01:00", "attributes": {"zone": "door"}},
            ],
        )
        assert isinstance(enrolled, models.Enrolled) and enrolled.count == 3 and enrolled.noise.epsilon == "inf"
        hits = client.search(jpeg_bytes(3), k=2)
        assert isinstance(hits, models.SearchResult) and hits.hits[0].id == enrolled.ids[2]
        assert hits.hits[0].captured_at == datetime(2026, 11, 26, 7, 2, tzinfo=UTC)  # answered in UTC
        assert [i.id for i in client.iter_items(page_size=2)] == enrolled.ids
        assert client.list_items(camera_id="c2").items[0].subject_ref == "s2"
        assert client.get_item(enrolled.ids[0]).track_ref == "t1"
        assert client.delete_item(enrolled.ids[0]) == 1
        assert client.erase(subject_ref="s2") == 1
        with pytest.raises(errors.NotFound) as missing:
            client.get_item(enrolled.ids[0])
        assert missing.value.status == 404 and missing.value.error_code == "not_found"
        # operator side
        assert client.update_tenant(tenant_id, name="renamed").name == "renamed"
        assert client.update_tenant(tenant_id, retention_days=None).retention_days is None
        assert client.get_privacy(tenant_id).noise is False
        # a pooled track release, typed: ε = 8, two crops of one track in one call
        policy = client.set_privacy(tenant_id, epsilon=8.0)
        assert policy.pool_tracks is True
        pair = client.enroll([jpeg_bytes(4), jpeg_bytes(5)], [{"camera_id": "c1", "captured_at": "2026-11-26T08:03:00Z", "track_ref": "t9"}] * 2)
        [release] = pair.pooled
        assert release.item_ids == pair.ids and release.track_ref == "t9" and release.noise.pooled == 2 and release.noise.release_id == pair.ids[0]
        assert abs(release.noise.sigma - pair.noise.sigma / 2) < 1e-9 and client.get_item(pair.ids[1]).noise.pooled == 2
        assert client.set_privacy(tenant_id, epsilon="inf", pool_tracks=False).pool_tracks is False
        assert client.tradeoff(tenant_id, [4.0]).available is False  # the tiny test encoder has no calibration
        keys = client.list_keys(tenant_id)
        assert keys[0].label == "client" and client.revoke_key(tenant_id, keys[0].id).revoked_at is not None
        actions = [e.action for e in client.audit(tenant_id=tenant_id)]
        assert actions[0] == "key.revoke" and "tenant.update" in actions
        assert client.health() and client.ready().ready and client.model().embedding_dim == 64
        assert "reid_http_request_seconds" in client.metrics()
        with pytest.raises(errors.Unauthorized):
            client.search(jpeg_bytes(1))  # the key was just revoked
        with pytest.raises(errors.InvalidInput) as invalid:
            client.set_privacy(tenant_id, epsilon=-1)
        assert invalid.value.details[0]["loc"][-1] == "epsilon"
        assert client.delete_tenant(tenant_id).deleted == 1


def test_async_client_enrolls_and_searches(server, tenant):
    _, key = tenant

    async def flow() -> tuple[models.Enrolled, object]:
        async with AsyncReidClient(server, api_key=key) as client:
            enrolled = await asyncio.gather(
                *(client.enroll([jpeg_bytes(seed)], [{"camera_id": "c", "captured_at": "2026-11-26T08:00:00Z"}]) for seed in (1, 2, 3))
            )
            found = await client.search(jpeg_bytes(2), k=1)
            with pytest.raises(errors.InvalidImage):
                await client.enroll([b"not an image"], [{"camera_id": "c", "captured_at": "2026-11-26T08:00:00Z"}])
            return enrolled[1], found

    second, found = asyncio.run(flow())
    assert found.hits[0].id == second.ids[0]  # type: ignore[attr-defined]


def test_grouped_search_against_the_server_is_typed(server, tenant):
    _, key = tenant
    with ReidClient(server, api_key=key) as client:
        metas = [
            {"camera_id": "c1", "captured_at": "2026-11-26T08:00:00Z", "track_ref": "t1", "subject_ref": "s1"},
            {"camera_id": "c2", "captured_at": "2026-11-26T08:05:00Z", "track_ref": "t1", "subject_ref": "s1"},
            {"camera_id": "c1", "captured_at": "2026-11-26T08:01:00Z", "track_ref": "t2"},
        ]
        ids = client.enroll([jpeg_bytes(1), jpeg_bytes(2), jpeg_bytes(3)], metas).ids
        tracks = client.search(jpeg_bytes(3), k=5, group_by="track_ref")
        assert isinstance(tracks, models.GroupedSearchResult) and tracks.group_by == "track_ref"
        assert [h.key for h in tracks.hits] == ["t2", "t1"] and tracks.hits[0].item_ids == [ids[2]]
        t1 = tracks.hits[1]
        assert t1.item_ids == ids[:2] and t1.cameras == ["c1", "c2"] and t1.count == 2 and t1.subject_ref is None
        assert t1.first_seen == datetime(2026, 11, 26, 8, tzinfo=UTC) and t1.last_seen == datetime(2026, 11, 26, 8, 5, tzinfo=UTC)
        subjects = client.search(jpeg_bytes(1), k=5, group_by="subject_ref", camera_ids=["c2"])
        assert isinstance(subjects, models.GroupedSearchResult) and [(h.subject_ref, h.item_ids) for h in subjects.hits] == [("s1", [ids[1]])]


def _scripted(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return httpx.MockTransport(handler), seen


def _limited(retry_after: str, ms: int | None = None, code: str = "rate_limited", status: int = 429) -> httpx.Response:
    details = {"retry_after_ms": ms} if ms is not None else None
    return httpx.Response(status, headers={"Retry-After": retry_after}, json={"error": {"code": code, "message": "slow down", "details": details}})


def test_retries_honour_retry_after_and_are_bounded(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("reid_client.client.time.sleep", waits.append)
    ok = httpx.Response(200, json={"status": "ok"})
    transport, seen = _scripted([_limited("2", ms=1500), _limited("3"), ok])
    client = ReidClient("http://reid.test", http=httpx.Client(base_url="http://reid.test", transport=transport))
    assert client.health() is True and len(seen) == 3
    assert 1.5 <= waits[0] < 1.61 and 3.0 <= waits[1] < 3.11  # details.retry_after_ms first, else the header

    waits.clear()
    transport, seen = _scripted([_limited("1", code="overloaded", status=503)])
    client = ReidClient("http://reid.test", retry=RetryPolicy(max_retries=2), http=httpx.Client(base_url="http://reid.test", transport=transport))
    with pytest.raises(errors.Overloaded) as refused:
        client.health()
    assert len(seen) == 3 and len(waits) == 2 and refused.value.retry_after == 1.0

    transport, seen = _scripted([httpx.Response(503, json={"ready": False, "checks": {}})])  # no Retry-After: not retried
    client = ReidClient("http://reid.test", http=httpx.Client(base_url="http://reid.test", transport=transport))
    with pytest.raises(errors.Unavailable):
        client.ready()
    assert len(seen) == 1


def test_async_retries_wait_without_blocking(monkeypatch):
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("reid_client.client.asyncio.sleep", fake_sleep)
    transport, seen = _scripted([_limited("1", ms=250), httpx.Response(200, json={"status": "ok"})])

    async def call() -> bool:
        async with AsyncReidClient("http://reid.test", http=httpx.AsyncClient(base_url="http://reid.test", transport=transport)) as client:
            return await client.health()

    assert asyncio.run(call()) is True and len(seen) == 2 and 0.25 <= waits[0] < 0.36


def test_search_group_by_is_sent_and_its_answer_typed():
    body = {
        "k": 2,
        "group_by": "track_ref",
        "hits": [
            {
                "track_ref": "0001_c1",
                "score": 0.9,
                "item_ids": [1, 2],
                "cameras": ["c1"],
                "first_seen": "2026-11-26T08:00:00Z",
                "last_seen": "2026-11-26T08:01:00Z",
                "count": 2,
            }
        ],
    }
    transport, seen = _scripted([httpx.Response(200, json=body)])
    client = ReidClient("http://reid.test", api_key="rk_x_y", http=httpx.Client(base_url="http://reid.test", transport=transport))
    result = client.search(jpeg_bytes(1), k=2, group_by="track_ref", camera_ids=["c1", "c2"])
    assert isinstance(result, models.GroupedSearchResult) and result.hits[0].item_ids == [1, 2]
    assert result.hits[0].key == "0001_c1" and result.hits[0].cameras == ["c1"] and result.hits[0].last_seen.minute == 1
    sent = seen[0].content
    assert b'name="group_by"\r\n\r\ntrack_ref' in sent and b'name="camera_ids"\r\n\r\nc1,c2' in sent
    assert sent.count(b'name="image"') == 1


def test_a_list_of_images_is_sent_as_one_query_track():
    transport, seen = _scripted([httpx.Response(200, json={"k": 3, "hits": []})])
    client = ReidClient("http://reid.test", api_key="rk_x_y", http=httpx.Client(base_url="http://reid.test", transport=transport))
    client.search([jpeg_bytes(1), jpeg_bytes(2), ("third.jpg", jpeg_bytes(3))], k=3)
    sent = seen[0].content
    assert sent.count(b'name="image"') == 3 and b'filename="third.jpg"' in sent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``reid-gallery`` in a fresh interpreter and fail if it imported torch."""
    code = (
        "import sys\nfrom app.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        "assert 'torch' not in sys.modules, 'the client CLI imported torch'\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def test_enroll_cli_is_resumable_and_search_cli_finds_the_crop(server, tenant, tmp_path):
    _, key = tenant
    folder = tmp_path / "crops"
    folder.mkdir()
    names = [f"{person:04d}_c{camera}s1_{frame:06d}_00.jpg" for person, camera, frame in [(1, 1, 1), (1, 2, 7), (2, 1, 3), (3, 2, 9), (3, 2, 10)]]
    for seed, name in enumerate(names):
        (folder / name).write_bytes(jpeg_bytes(seed))
    (folder / "notes.txt").write_text("not a crop")
    (folder / "0004_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8 broken")  # refused by the service: reported, the rest enrolled
    state = tmp_path / "state.jsonl"
    common = ["--url", server, "--api-key", key, "--state", str(state), "--no-progress", "--json", "--batch-size", "2"]
    first = _cli("enroll", str(folder), *common)
    summary = json.loads(first.stdout)
    assert first.returncode == 1, first.stderr  # one crop failed
    assert summary["enrolled"] == 5 and summary["failed"] == 1 and summary["failures"][0]["file"] == "0004_c1s1_000001_00.jpg"
    again = json.loads(_cli("enroll", str(folder), *common).stdout)
    assert again["skipped_already_enrolled"] == 5 and again["enrolled"] == 0
    with ReidClient(server, api_key=key) as client:
        items = {i.external_id: i for i in client.iter_items()}
    assert set(items) == set(names)
    assert items[names[1]].camera_id == "c2" and items[names[1]].track_ref == "0001_c2"
    found = _cli("search", str(folder / names[3]), "--url", server, "--api-key", key, "--json", "-k", "3")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["external_id"] == names[3]
    table = _cli("search", str(folder / names[3]), "--url", server, "--api-key", key, "-k", "2")
    assert table.returncode == 0 and names[3] in table.stdout.splitlines()[2]


def test_enroll_cli_reads_a_sidecar(server, tenant, tmp_path):
    _, key = tenant
    folder = tmp_path / "crops"
    folder.mkdir()
    (folder / "front.jpg").write_bytes(jpeg_bytes(1))
    (folder / "back.jpg").write_bytes(jpeg_bytes(2))
    (folder / "metadata.csv").write_text(
        'file,camera_id,captured_at,track_ref,attributes\nfront.jpg,gate-1,2026-11-26T08:00:00Z,t9,"{""zone"": ""A""}"\n'
        "back.jpg,gate-2,2026-11-26T09:00:00+02:00,,\n"
    )
    result = _cli("enroll", str(folder), "--url", server, "--api-key", key, "--state", str(tmp_path / "s.jsonl"), "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    with ReidClient(server, api_key=key) as client:
        items = {i.external_id: i for i in client.iter_items()}
    assert items["front.jpg"].attributes == {"zone": "A"} and items["front.jpg"].track_ref == "t9"
    assert items["back.jpg"].camera_id == "gate-2" and items["back.jpg"].captured_at == datetime(2026, 11, 26, 7, tzinfo=UTC)


def test_transport_errors_are_retried_only_for_idempotent_calls(monkeypatch):
    monkeypatch.setattr("reid_client.client.time.sleep", lambda _: None)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"status": "ok"})

    client = ReidClient("http://reid.test", api_key="rk_x_y", http=httpx.Client(base_url="http://reid.test", transport=httpx.MockTransport(handler)))
    assert client.health() is True and calls == ["GET", "GET", "GET"]
    calls.clear()
    with pytest.raises(errors.TransportError):  # an enrollment is not repeated blindly: it may have been stored
        client.enroll([jpeg_bytes(1)], [{"camera_id": "c", "captured_at": "2026-11-26T08:00:00Z"}])
    assert calls == ["POST"]


def test_client_package_does_not_import_torch_or_the_service():
    code = "import sys, reid_client, reid_client.cli, reid_client.bulk; assert not {'torch', 'app.main', 'fastapi'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_bulk_batches_keep_a_tracks_crops_together_where_they_fit():
    """The service pools the crops of one track sent in one request: the enroller must not cut a track that fits."""
    from pathlib import Path

    from reid_client.bulk import _batches

    def item(name: str, track: str | None) -> tuple[str, Path, dict]:
        return (name, Path(name), {"camera_id": "c1", **({"track_ref": track} if track else {})})

    items = [item("a1", "A"), item("a2", "A"), item("b1", "B"), item("x", None), item("a3", "A"), *(item(f"c{i}", "C") for i in range(5))]
    batches = [[name for name, _, _ in batch] for batch in _batches(items, 4)]
    assert batches == [["a1", "a2", "a3", "b1"], ["x"], ["c0", "c1", "c2", "c3"], ["c4"]]
    assert all(len(b) <= 4 for b in batches) and sorted(n for b in batches for n in b) == sorted(n for n, _, _ in items)
