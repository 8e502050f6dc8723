"""Per-tenant FAISS index: ids are SQL keys, atomic save, catch-up and rebuild from SQL."""

from __future__ import annotations

import numpy as np

from app.index.faiss_store import IndexConfig, IndexRegistry, TenantIndex


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def source_from(ids: np.ndarray, feats: np.ndarray):
    def source(_tenant: int, after: int | None):
        mask = ids > (after or 0)
        yield ids[mask], feats[mask]

    return source


def test_add_search_remove(tmp_path):
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=8), path=tmp_path / "t.faiss")
    feats = unit_rows(20, 8, 0)
    ids = np.arange(100, 120)
    index.add(ids, feats)
    scores, found = index.search(feats[3:4], 1)
    assert found[0, 0] == 103 and abs(scores[0, 0] - 1) < 1e-5
    assert index.remove([103, 999]) == 1 and index.size == 19
    assert 103 not in index.search(feats[3:4], 19)[1][0]


def test_save_load_catch_up_and_rebuild(tmp_path):
    cfg, path = IndexConfig(dim=8), tmp_path / "t.faiss"
    feats, ids = unit_rows(30, 8, 1), np.arange(1, 31)
    saved = TenantIndex(tenant_id=1, config=cfg, path=path)
    saved.add(ids[:10], feats[:10])
    saved.save()
    assert path.exists() and path.with_suffix(".json").exists() and not list(tmp_path.glob("*.tmp"))

    # SQL moved on by 20 rows after the save (crash before the next save): catch up.
    fresh = TenantIndex(tenant_id=1, config=cfg, path=path)
    assert fresh.load_and_sync(ids, source_from(ids, feats)) == "caught up"
    assert sorted(fresh.ids()) == list(ids)

    # SQL deleted rows the saved index still has: rebuild exactly.
    survivors = np.setdiff1d(ids, [2, 5])
    again = TenantIndex(tenant_id=1, config=cfg, path=path)
    assert again.load_and_sync(survivors, source_from(survivors, feats[survivors - 1])) == "rebuilt"
    assert sorted(again.ids()) == list(survivors)

    # A corrupt file is rebuilt from SQL, not trusted.
    path.write_bytes(b"garbage")
    broken = TenantIndex(tenant_id=1, config=cfg, path=path)
    assert broken.load_and_sync(ids, source_from(ids, feats)) == "rebuilt" and broken.size == 30


def test_ivf_switches_over_and_keeps_ids(tmp_path):
    index = TenantIndex(tenant_id=1, config=IndexConfig(dim=8, kind="ivf", nlist=4, nprobe=4), path=tmp_path / "i.faiss")
    feats, ids = unit_rows(400, 8, 2), np.arange(1000, 1400)
    index.add(ids[:100], feats[:100])
    index.add(ids[100:], feats[100:])
    import faiss

    assert isinstance(faiss.downcast_index(index.index.index), faiss.IndexIVFFlat)
    assert index.size == 400 and index.search(feats[7:8], 1)[1][0, 0] == 1007


def test_registry_drop_removes_files(tmp_path):
    registry = IndexRegistry(directory=tmp_path, config=IndexConfig(dim=4))
    registry.get(3).add(np.array([1]), unit_rows(1, 4, 0))
    registry.save_all()
    assert (tmp_path / "tenant_3.faiss").exists()
    registry.drop(3)
    assert not (tmp_path / "tenant_3.faiss").exists() and registry.get(3).size == 0
