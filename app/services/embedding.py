"""The encoder seam: load once; embed on one worker thread, optionally merging concurrent requests."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from app.core.errors import Overloaded
from models.checkpoint import Embedder

log = logging.getLogger("reid.embedding")


def load_embedder(checkpoint: Path | None, *, device: str, allow_untrained: bool, backend: str = "torch", artifact: Path | None = None) -> Embedder:
    """The configured checkpoint, else the shipped one, else (if allowed) the labelled fallback.

    A checkpoint runs on ``backend`` (``auto``: the fastest that matches PyTorch; see models.inference.select).
    """
    from models import DEFAULT_CHECKPOINT
    from models.checkpoint import load_encoder, untrained_encoder
    from models.inference.select import select_backend

    path = checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None)
    if path is not None:
        embedder = load_encoder(path, device)
        log.info("encoder %s loaded on %s (sha256 %s)", path.name, embedder.device, (embedder.sha256 or "")[:12])
        return select_backend(embedder, backend, artifact)
    if not allow_untrained:
        raise FileNotFoundError("no encoder checkpoint found and REID_ALLOW_UNTRAINED is false")
    log.warning("no encoder checkpoint: serving the UNTRAINED fallback encoder (search results are meaningless)")
    return untrained_encoder(device)


class EmbeddingService:
    """Runs the encoder on one worker thread so torch never blocks the event loop.

    ``mode="thread"``: each request is one encoder call, queued on the worker thread.
    ``mode="microbatch"``: requests arriving within ``wait_ms`` of each other are merged
    into one encoder call (up to ``batch_size`` crops), then split back per request.
    Each call runs the network ``forward_chunk`` crops at a time (None: the embedder's default).
    The queue is bounded: a request that would take the crops waiting or running past ``max_queue_crops``, or past
    ``max_queue_seconds`` of work at the measured rate, is refused at once (``Overloaded``: 503 with Retry-After, the
    time the queue needs to drain) instead of waiting behind them; an idle encoder takes any request, whatever its size.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        batch_size: int,
        mode: str = "thread",
        wait_ms: float = 2.0,
        forward_chunk: int | None = None,
        max_queue_crops: int | None = None,
        max_queue_seconds: float | None = None,
    ) -> None:
        if mode not in {"thread", "microbatch"}:
            raise ValueError("mode must be 'thread' or 'microbatch'")
        self.embedder = embedder
        self.batch_size = batch_size
        self.forward_chunk = forward_chunk
        self.mode = mode
        self.wait_s = wait_ms / 1000
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.max_queue_crops = max_queue_crops
        self.max_queue_seconds = max_queue_seconds
        self.pending_crops = 0  # waiting or being encoded (changed on the event loop only)
        self._crops_per_s: float | None = None  # the encoder's measured throughput (None until its first call ends)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.embedder.input_size

    def retry_after_s(self) -> float:
        """How long the crops in the queue take at the measured rate."""
        return min(30.0, max(0.05, self.pending_crops / max(self._crops_per_s or 50.0, 1e-3)))

    def _full(self, count: int) -> bool:
        """Would ``count`` more crops pass the queue's bound in crops, or in seconds of work at the measured rate?

        The seconds bound applies once at least one full encoder batch is waiting: a slow machine with a request or
        two in the queue is busy, not overloaded (and a lone client must never be refused)."""
        if self.max_queue_crops is not None and self.pending_crops + count > self.max_queue_crops:
            return True
        if self.max_queue_seconds is None or self._crops_per_s is None or self.pending_crops < self.batch_size:
            return False
        return (self.pending_crops + count) / max(self._crops_per_s, 1e-3) > self.max_queue_seconds

    def admit(self, count: int) -> None:
        """Refuse (``Overloaded``) ``count`` crops the queue cannot take now. Routes call it before decoding, so an
        overloaded service decodes nothing for a request it will refuse; ``embed`` checks again (call on the event loop)."""
        if self.pending_crops and self._full(count):
            raise Overloaded(
                f"the encoder queue is full ({self.pending_crops} crops waiting, about {self.retry_after_s():.1f} s of work); "
                "retry after the delay given",
                retry_after_s=self.retry_after_s(),
            )

    async def embed(self, crops: list[torch.Tensor]) -> np.ndarray:
        count = len(crops)
        self.admit(count)
        self.pending_crops += count
        try:
            return await self._embed(crops)
        finally:
            self.pending_crops -= count

    async def _embed(self, crops: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(crops)
        if self.mode == "thread" or batch.shape[0] >= self.batch_size:
            return await self._run(batch)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._merge_loop())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((batch, future))
        return await future

    async def _run(self, batch: torch.Tensor) -> np.ndarray:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        features = await loop.run_in_executor(self._executor, self.embedder.embed, batch, self.forward_chunk)
        rate = batch.shape[0] / max(time.perf_counter() - started, 1e-6)
        self._crops_per_s = rate if self._crops_per_s is None else 0.5 * self._crops_per_s + 0.5 * rate
        return features

    async def _merge_loop(self) -> None:
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            size = pending[0][0].shape[0]
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while size < self.batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                pending.append(item)
                size += item[0].shape[0]
            try:
                features = await self._run(torch.cat([b for b, _ in pending]))
            except Exception as exc:  # hand the failure to every waiting request
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in pending:
                if not future.done():
                    future.set_result(features[start : start + batch.shape[0]])
                start += batch.shape[0]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)
