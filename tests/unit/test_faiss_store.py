"""Per-tenant FAISS index: ids are SQL keys, atomic save with the change-log cursor, selectors, readers-writer lock."""

from __future__ import annotations

import threading
import time

import numpy as np

from app.index.faiss_store import IndexConfig, IndexRegistry, ReadWriteLock, TenantIndex, claim_directory


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_add_search_remove(tmp_path):
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=8), path=tmp_path / "t.index")
    feats = unit_rows(20, 8, 0)
    ids = np.arange(100, 120)
    index.add(ids, feats)
    scores, found = index.search(feats[3:4], 1)
    assert found[0, 0] == 103 and abs(scores[0, 0] - 1) < 1e-5
    assert index.remove([103, 999]) == 1 and index.size == 19
    assert 103 not in index.search(feats[3:4], 19)[1][0]


def test_search_among_selected_ids_only(tmp_path):
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=8), path=tmp_path / "t.index")
    feats, ids = unit_rows(50, 8, 3), np.arange(1, 51)
    index.add(ids, feats)
    _, found = index.search(feats[0:1], 10, only_ids=np.array([7, 9, 40]))
    assert sorted(found[0][found[0] >= 0]) == [7, 9, 40] and found.shape == (1, 3)


def test_save_and_load_keep_the_cursor_and_use_unique_temp_files(tmp_path):
    cfg, path = IndexConfig(dim=8), tmp_path / "t.index"
    feats, ids = unit_rows(30, 8, 1), np.arange(1, 31)
    saved = TenantIndex(tenant_id=1, config=cfg, path=path)
    saved.apply(add_ids=ids[:10], add_features=feats[:10], remove_ids=(), cursor=17)
    assert saved.save() and path.exists() and not list(tmp_path.glob("*.tmp"))
    assert not saved.save()  # nothing changed since

    fresh = TenantIndex(tenant_id=1, config=cfg, path=path)
    assert fresh.load() and fresh.cursor == 17 and sorted(fresh.ids()) == list(ids[:10])

    # Another encoder size, or a corrupt file: not loaded (the caller rebuilds from SQL).
    assert not TenantIndex(tenant_id=1, config=IndexConfig(dim=16), path=path).load()
    path.write_bytes(b"garbage")
    assert not TenantIndex(tenant_id=1, config=cfg, path=path).load()


def test_ivf_switches_over_and_keeps_ids(tmp_path):
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=8, kind="ivf", nlist=4, nprobe=4), path=tmp_path / "i.index")
    feats, ids = unit_rows(400, 8, 2), np.arange(1000, 1400)
    index.add(ids[:100], feats[:100])
    index.add(ids[100:], feats[100:])
    import faiss

    assert isinstance(faiss.downcast_index(index.index.index), faiss.IndexIVFFlat)
    assert index.size == 400 and index.search(feats[7:8], 1)[1][0, 0] == 1007
    assert index.search(feats[7:8], 5, only_ids=np.array([1007, 1008]))[1][0, 0] == 1007


def test_registry_drop_removes_files_and_they_never_come_back(tmp_path):
    registry = IndexRegistry(directory=tmp_path, config=IndexConfig(dim=4))
    registry.get(3).add(np.array([1]), unit_rows(1, 4, 0))
    registry.save_all()
    assert (tmp_path / "tenant_3.index").exists()
    late = registry.get(3)
    registry.drop(3)
    late.dirty = True  # a save that was under way, or a request that still held the index
    late.save()
    registry.get(3).add(np.array([2]), unit_rows(1, 4, 1))
    registry.save_all()
    assert not (tmp_path / "tenant_3.index").exists() and registry.get(3).size == 0


def test_claim_directory_gives_each_process_its_own_folder(tmp_path):
    first, lock1 = claim_directory(tmp_path / "indexes")
    second, lock2 = claim_directory(tmp_path / "indexes")
    assert first == tmp_path / "indexes" and second == tmp_path / "indexes.1"
    lock1.close()
    again, lock3 = claim_directory(tmp_path / "indexes")
    assert again == first
    lock2.close()
    lock3.close()


def test_writer_waits_for_readers_and_new_readers_wait_for_a_waiting_writer():
    lock, events, release = ReadWriteLock(), [], threading.Event()

    def write() -> None:
        with lock.write():
            events.append("w")
            release.wait(10)  # hold the write lock until the test has looked

    def read() -> None:
        with lock.read():
            events.append("r")

    with lock.read():
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.05)
        assert events == []  # the writer waits for the reader
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.05)
        assert events == []  # a new reader queues behind the waiting writer
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert events == ["w"]  # the writer went first; the queued reader still waits while it writes
    release.set()
    writer.join(10)
    reader.join(10)
    assert events == ["w", "r"]


def test_searches_beside_writes_do_not_crash(tmp_path):
    """FAISS drops the GIL: unlocked, a search beside add/remove crashed the process (exit 139)."""
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=64), path=tmp_path / "t.index")
    feats = unit_rows(4000, 64, 4)
    index.add(np.arange(1, 1001), feats[:1000])
    stop, errors = threading.Event(), []

    def search() -> None:
        while not stop.is_set():
            try:
                index.search(feats[:4], 10)
            except Exception as exc:  # pragma: no cover - the assertion below reports it
                errors.append(exc)

    readers = [threading.Thread(target=search) for _ in range(4)]
    for t in readers:
        t.start()
    for start in range(1001, 4001, 100):
        index.apply(
            add_ids=np.arange(start, start + 100),
            add_features=feats[start - 1 : start + 99],
            remove_ids=range(start - 500, start - 450),
            cursor=start,
        )
    stop.set()
    for t in readers:
        t.join()
    assert not errors and index.size == 4000 - 30 * 50
