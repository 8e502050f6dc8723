"""P x K identity sampler: each batch holds P identities with K crops each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np


class PKSampler:
    """Yields index batches of ``num_identities * instances_per_identity`` items.

    Every identity's crops are cut into chunks of K (identities with fewer than K crops
    are sampled with replacement); chunks are dealt in random order into batches of P
    distinct identities. One epoch visits each crop about once.
    """

    def __init__(
        self,
        *,
        labels: Sequence[int],
        num_identities: int,
        instances_per_identity: int,
        seed: int = 0,
    ) -> None:
        if num_identities < 1 or instances_per_identity < 1:
            raise ValueError("P and K must be positive")
        by_id: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_id[int(label)].append(index)
        if len(by_id) < num_identities:
            raise ValueError(f"need at least P={num_identities} identities, have {len(by_id)}")
        self._by_id = {pid: np.asarray(idx) for pid, idx in by_id.items()}
        self.p = num_identities
        self.k = instances_per_identity
        self._rng = np.random.default_rng(seed)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        chunks = sum(max(1, len(v) // self.k) for v in self._by_id.values())
        return chunks // self.p

    def _chunks(self) -> list[tuple[int, np.ndarray]]:
        chunks: list[tuple[int, np.ndarray]] = []
        for pid, indices in self._by_id.items():
            if len(indices) < self.k:
                chunks.append((pid, self._rng.choice(indices, size=self.k, replace=True)))
                continue
            shuffled = self._rng.permutation(indices)
            for start in range(0, len(shuffled) - self.k + 1, self.k):
                chunks.append((pid, shuffled[start : start + self.k]))
        return [chunks[i] for i in self._rng.permutation(len(chunks))]

    def __iter__(self) -> Iterator[list[int]]:
        pending = self._chunks()
        for _ in range(len(self)):
            batch: list[int] = []
            used: set[int] = set()
            rest: list[tuple[int, np.ndarray]] = []
            for position, (pid, chunk) in enumerate(pending):
                if pid in used:
                    rest.append((pid, chunk))
                    continue
                used.add(pid)
                batch.extend(int(i) for i in chunk)
                if len(used) == self.p:
                    rest.extend(pending[position + 1 :])
                    break
            if len(used) < self.p:
                return
            pending = rest
            yield batch
