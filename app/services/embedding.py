"""The encoder seam: load once, embed batches in a dedicated worker thread."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import Embedder

log = logging.getLogger("reid.embedding")


def load_embedder(checkpoint: Path | None, *, device: str, allow_untrained: bool) -> Embedder:
    """The configured checkpoint, else the shipped one, else (if allowed) the labelled fallback."""
    from models import DEFAULT_CHECKPOINT
    from models.checkpoint import load_encoder, untrained_encoder

    path = checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None)
    if path is not None:
        embedder = load_encoder(path, device)
        log.info("encoder %s loaded on %s (sha256 %s)", path.name, embedder.device, (embedder.sha256 or "")[:12])
        return embedder
    if not allow_untrained:
        raise FileNotFoundError("no encoder checkpoint found and REID_ALLOW_UNTRAINED is false")
    log.warning("no encoder checkpoint: serving the UNTRAINED fallback encoder (search results are meaningless)")
    return untrained_encoder(device)


class EmbeddingService:
    """Runs the encoder on one worker thread so torch never blocks the event loop."""

    def __init__(self, *, embedder: Embedder, batch_size: int) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

    @property
    def input_size(self) -> tuple[int, int]:
        return self.embedder.input_size

    async def embed(self, crops: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(crops)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embedder.embed, batch, self.batch_size)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
