"""Per-tenant FAISS indexes whose ids are SQL primary keys.

SQL commits first; the index follows. Each index is saved atomically (temp file +
rename) with a sidecar naming the id set it covers; at start an index whose ids differ
from SQL's is caught up (new ids) or rebuilt, so it always ends up holding exactly what
SQL holds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger("reid.index")

# (ids, features) batches for one tenant, in id order.
FeatureSource = Callable[[int, int | None], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class IndexConfig:
    dim: int
    kind: str = "flat"  # "flat" or "ivf"
    nlist: int = 1024
    nprobe: int = 32


class TenantIndex:
    """One tenant's index; searches run concurrently, writes take ``write_lock``."""

    def __init__(self, *, tenant_id: int, config: IndexConfig, path: Path) -> None:
        self.tenant_id = tenant_id
        self.config = config
        self.path = path
        self.write_lock = threading.Lock()
        self.dirty = False
        self.index: Any = self._empty()  # IndexIDMap2 over a flat or IVF index

    def _empty(self) -> faiss.IndexIDMap2:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.config.dim))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, features: np.ndarray) -> None:
        with self.write_lock:
            self._add(ids, features)

    def _add(self, ids: np.ndarray, features: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.index.add_with_ids(np.ascontiguousarray(features, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        self.dirty = True
        self._maybe_train_ivf()

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if id_array.size == 0:
            return 0
        with self.write_lock:
            removed = int(self.index.remove_ids(id_array))
            self.dirty = True
            return removed

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product top-k; returns (scores [n, k], ids [n, k]) with -1 for empty slots."""
        k = max(1, min(k, max(1, self.size)))
        scores, ids = self.index.search(np.ascontiguousarray(query, dtype=np.float32), k)
        return scores, ids

    def _maybe_train_ivf(self) -> None:
        """Switch to IVF once enough vectors exist to train it (index_type=ivf)."""
        cfg = self.config
        if cfg.kind != "ivf" or not isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlatIP):
            return
        if self.size < cfg.nlist * 39:
            return
        ids = self.ids()
        vectors = self.index.index.reconstruct_n(0, self.size)
        quantizer = faiss.IndexFlatIP(cfg.dim)
        ivf = faiss.IndexIVFFlat(quantizer, cfg.dim, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.nprobe = cfg.nprobe
        new = faiss.IndexIDMap2(ivf)
        new.add_with_ids(vectors, ids)
        self.index = new

    # -- persistence -------------------------------------------------------------------
    @property
    def _meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def save(self) -> None:
        """Atomic save: index to a temp file, fsync, rename; then the sidecar likewise."""
        with self.write_lock:
            if not self.dirty and self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ids = self.ids()
            tmp = self.path.with_suffix(".faiss.tmp")
            faiss.write_index(self.index, str(tmp))
            _fsync(tmp)
            os.replace(tmp, self.path)
            meta = {"count": int(ids.size), "max_id": int(ids.max()) if ids.size else 0, "dim": self.config.dim}
            tmp_meta = self._meta_path.with_suffix(".json.tmp")
            tmp_meta.write_text(json.dumps(meta))
            _fsync(tmp_meta)
            os.replace(tmp_meta, self._meta_path)
            self.dirty = False

    def load_and_sync(self, sql_ids: np.ndarray, source: FeatureSource) -> str:
        """Load the saved index and make its ids equal ``sql_ids``; returns what was done."""
        with self.write_lock:
            action = "loaded"
            if self.path.exists():
                try:
                    self.index = faiss.read_index(str(self.path))
                    if self.index.d != self.config.dim:
                        raise ValueError(f"index dim {self.index.d} != encoder dim {self.config.dim}")
                    inner = faiss.downcast_index(self.index.index)
                    if isinstance(inner, faiss.IndexIVF):
                        inner.nprobe = self.config.nprobe
                except (RuntimeError, ValueError) as exc:
                    log.warning("tenant %s: unreadable index (%s); rebuilding", self.tenant_id, exc)
                    self.index = self._empty()
                    action = "rebuilt"
            else:
                action = "built"
            have = self.ids()
            sql_ids = np.sort(sql_ids.astype(np.int64))
            if np.array_equal(np.sort(have), sql_ids):
                return action
            missing_new = sql_ids[sql_ids > (have.max() if have.size else 0)]
            extra = np.setdiff1d(have, sql_ids)
            if extra.size == 0 and np.setdiff1d(sql_ids, have).size == missing_new.size:
                after = int(have.max()) if have.size else 0
                for ids, feats in source(self.tenant_id, after):
                    self._add(ids, feats)
                action = "caught up" if action == "loaded" else action
            else:
                self.index = self._empty()
                for ids, feats in source(self.tenant_id, None):
                    self._add(ids, feats)
                action = "rebuilt"
            self.dirty = True
            return action


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IndexRegistry:
    """All tenants' indexes, created lazily, saved together."""

    def __init__(self, *, directory: Path, config: IndexConfig) -> None:
        self.directory = directory
        self.config = config
        self._indexes: dict[int, TenantIndex] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: int) -> TenantIndex:
        with self._lock:
            index = self._indexes.get(tenant_id)
            if index is None:
                index = TenantIndex(tenant_id=tenant_id, config=self.config, path=self.directory / f"tenant_{tenant_id}.faiss")
                self._indexes[tenant_id] = index
            return index

    def all(self) -> list[TenantIndex]:
        with self._lock:
            return list(self._indexes.values())

    def drop(self, tenant_id: int) -> None:
        with self._lock:
            index = self._indexes.pop(tenant_id, None)
        path = self.directory / f"tenant_{tenant_id}.faiss"
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)
        del index

    def save_all(self) -> None:
        for index in self.all():
            index.save()
