"""Per-tenant FAISS indexes whose ids are SQL primary keys; each one follows the tenant's change log in SQL.

SQL is the only source of truth. An index holds the items of every change up to its ``cursor`` (a change-log sequence
number); the gallery service applies newer changes (``apply``), or rebuilds from SQL. Searches take the index's read
lock and run beside each other; applying changes takes the write lock only for the FAISS mutation itself (FAISS drops
the GIL: a search beside an unlocked add or remove can crash the process). Each replica saves its own files, atomically
(a unique temp file, fsync, rename) with the cursor in the file's header, so a restart catches up from the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger("reid.index")
_faiss: Any = faiss  # parts of the SWIG API the stubs do not know (search parameters with selectors, callback I/O)

MAGIC = b"REIDIDX1"
HEADER = struct.Struct("<8sqq")  # magic, cursor (change-log seq), embedding dim
SUFFIX = ".index"


@dataclass(frozen=True)
class IndexConfig:
    dim: int
    kind: str = "flat"  # "flat" or "ivf"
    nlist: int = 1024
    nprobe: int = 32


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers (no writer starvation under steady searches)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class TenantIndex:
    """One tenant's index. ``sync_lock`` serialises whoever applies changes (the follower, a local write);
    ``rw`` guards the FAISS object against a search running beside a mutation."""

    def __init__(self, *, tenant_id: int, config: IndexConfig, path: Path) -> None:
        self.tenant_id = tenant_id
        self.config = config
        self.path = path
        self.rw = ReadWriteLock()
        self.sync_lock = threading.Lock()
        self.cursor = 0  # every change with seq <= cursor is applied
        self.loaded = False  # synced from SQL at least once in this process
        self.dirty = False
        self.dropped = False
        self.index: Any = self._empty()  # IndexIDMap2 over a flat or IVF index

    def _empty(self) -> faiss.IndexIDMap2:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.config.dim))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        with self.rw.read():
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    # -- changes (callers hold sync_lock) ------------------------------------------------------
    def apply(self, *, add_ids: np.ndarray, add_features: np.ndarray, remove_ids: Iterable[int], cursor: int) -> None:
        """Remove, then add, then advance the cursor: one write-locked step, so a search sees all of it or none."""
        remove = np.fromiter(remove_ids, dtype=np.int64)
        with self.rw.write():
            if remove.size:
                self.index.remove_ids(remove)
            if len(add_ids):
                self.index.add_with_ids(np.ascontiguousarray(add_features, dtype=np.float32), np.ascontiguousarray(add_ids, dtype=np.int64))
                self._maybe_train_ivf()
            self.cursor = max(self.cursor, cursor)
            self.dirty = True

    def replace(self, index: Any, cursor: int) -> None:
        """Swap in a rebuilt index (built outside the lock)."""
        with self.rw.write():
            self.index = index
            self.cursor = cursor
            self.dirty = True

    def add(self, ids: np.ndarray, features: np.ndarray) -> None:
        """Add without a change-log position (tests, rebuilds)."""
        self.apply(add_ids=ids, add_features=features, remove_ids=(), cursor=self.cursor)

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if id_array.size == 0:
            return 0
        with self.rw.write():
            removed = int(self.index.remove_ids(id_array))
            self.dirty = True
            return removed

    def new_index(self) -> Any:
        return self._empty()

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, only_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product top-k, optionally among ``only_ids`` (an IDSelector: no over-fetch, no feature read).

        Returns (scores [n, k], ids [n, k]) with -1 for empty slots."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        with self.rw.read():
            size = self.size
            k = max(1, min(k, max(1, size if only_ids is None else min(size, len(only_ids)))))
            if only_ids is None:
                return self.index.search(query, k)  # type: ignore[no-any-return]
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(only_ids, dtype=np.int64))
            inner = faiss.downcast_index(self.index.index)
            params = (
                _faiss.SearchParametersIVF(sel=selector, nprobe=self.config.nprobe)
                if isinstance(inner, faiss.IndexIVF)
                else _faiss.SearchParameters(sel=selector)
            )
            return self.index.search(query, k, params=params)  # type: ignore[no-any-return]

    def _maybe_train_ivf(self) -> None:
        """Switch to IVF once enough vectors exist to train it (index_type=ivf)."""
        cfg = self.config
        if cfg.kind != "ivf" or not isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlatIP):
            return
        if self.size < cfg.nlist * 39:
            return
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, self.size)
        quantizer = faiss.IndexFlatIP(cfg.dim)
        ivf = faiss.IndexIVFFlat(quantizer, cfg.dim, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.nprobe = cfg.nprobe
        new = faiss.IndexIDMap2(ivf)
        new.add_with_ids(vectors, ids)
        self.index = new

    # -- persistence ----------------------------------------------------------------------------
    def save(self) -> bool:
        """Atomic save (unique temp file, fsync, rename) of the index with its cursor; False if nothing to do."""
        if self.dropped or not self.dirty:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f, self.rw.read():
                f.write(HEADER.pack(MAGIC, self.cursor, self.config.dim))
                faiss.write_index(self.index, _faiss.PyCallbackIOWriter(f.write))
                self.dirty = False
                f.flush()
                os.fsync(f.fileno())
            if self.dropped:  # the tenant was deleted while this was written: never bring its file back
                return False
            os.replace(tmp, self.path)
            return True
        except BaseException:
            self.dirty = True
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def load(self) -> bool:
        """Read the saved index and its cursor; False (and empty) when absent, unreadable or for another encoder size."""
        if not self.path.exists():
            return False
        try:
            with self.path.open("rb") as f:
                magic, cursor, dim = HEADER.unpack(f.read(HEADER.size))
                if magic != MAGIC:
                    raise ValueError("not an index file of this service")
                if dim != self.config.dim:
                    raise ValueError(f"index dim {dim} != encoder dim {self.config.dim}")
                index: Any = faiss.read_index(_faiss.PyCallbackIOReader(f.read))
            inner = faiss.downcast_index(index.index)
            if isinstance(inner, faiss.IndexIVF):
                inner.nprobe = self.config.nprobe
        except (RuntimeError, ValueError, struct.error) as exc:
            log.warning("tenant %s: unreadable index file (%s); rebuilding from SQL", self.tenant_id, exc)
            return False
        with self.rw.write():
            self.index = index
            self.cursor = int(cursor)
        return True


def claim_directory(base: Path) -> tuple[Path, Any]:
    """An index folder no other process on this machine uses: ``base`` if its lock file is free, else ``base.1``, … .

    Returns the folder and the open lock file (an exclusive ``flock``, held as long as the file stays open; the kernel
    frees it when the process ends, so a restarted replica gets its folder back). Worker processes of one
    ``serve --workers N`` and replicas that were given the same REID_DATA_DIR thus never write the same file."""
    for slot in range(256):
        directory = base if slot == 0 else base.with_name(f"{base.name}.{slot}")
        directory.parent.mkdir(parents=True, exist_ok=True)
        handle = directory.with_name(directory.name + ".lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return directory, handle
    raise RuntimeError(f"no free index folder beside {base}")


class IndexRegistry:
    """All tenants' indexes of this process, created lazily, saved together. A dropped tenant stays dropped: its
    files are deleted and never written again (a late search or save cannot bring them back)."""

    def __init__(self, *, directory: Path, config: IndexConfig, lock: Any = None) -> None:
        self.directory = directory
        self.config = config
        self._dir_lock = lock  # the open lock file of claim_directory (kept open while this registry lives)
        self._indexes: dict[int, TenantIndex] = {}
        self._dropped: set[int] = set()
        self._lock = threading.Lock()

    def path(self, tenant_id: int) -> Path:
        return self.directory / f"tenant_{tenant_id}{SUFFIX}"

    def get(self, tenant_id: int) -> TenantIndex:
        with self._lock:
            index = self._indexes.get(tenant_id)
            if index is None:
                index = TenantIndex(tenant_id=tenant_id, config=self.config, path=self.path(tenant_id))
                if tenant_id in self._dropped:
                    index.dropped = True  # answers empty, never saved, not kept
                    return index
                self._indexes[tenant_id] = index
            return index

    def peek(self, tenant_id: int) -> TenantIndex | None:
        with self._lock:
            return self._indexes.get(tenant_id)

    def all(self) -> list[TenantIndex]:
        with self._lock:
            return list(self._indexes.values())

    def tenant_ids(self) -> list[int]:
        with self._lock:
            return list(self._indexes)

    def drop(self, tenant_id: int) -> None:
        with self._lock:
            index = self._indexes.pop(tenant_id, None)
            self._dropped.add(tenant_id)
        if index is not None:
            index.dropped = True
            with index.rw.write():
                index.index = index.new_index()
        self._remove_files(tenant_id)

    def _remove_files(self, tenant_id: int) -> None:
        base = self.directory / f"tenant_{tenant_id}"
        for path in (self.path(tenant_id), base.with_suffix(".faiss"), base.with_suffix(".json")):  # .faiss/.json: before 0004
            path.unlink(missing_ok=True)

    def remove_stray_files(self, live_tenants: Iterable[int]) -> None:
        """Delete index files of tenants that no longer exist, files of the old format, and temp files left by a crash."""
        if not self.directory.is_dir():
            return
        live = {f"tenant_{t}{SUFFIX}" for t in live_tenants}
        for path in self.directory.iterdir():
            if path.is_file() and path.name not in live and (path.name.startswith(("tenant_", ".tenant_"))):
                path.unlink(missing_ok=True)

    def save_all(self) -> None:
        for index in self.all():
            index.save()

    def close(self) -> None:
        """Save, then give the folder back (another process may claim it)."""
        self.save_all()
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None
