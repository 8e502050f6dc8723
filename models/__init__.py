"""Pure PyTorch + numerics: Re-ID data, encoder, stage-one training, evaluation and DP.

Nothing heavy is imported here; ``load_encoder`` imports torch on first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.checkpoint import Embedder

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "stage1_ensemble_osnet_ep47_mnv2_dec256_lda48_split.pt"


def load_encoder(path: str | Path, device: str = "cpu") -> Embedder:
    """Load an encoder-only checkpoint (``strict=True``) for inference; see models.checkpoint."""
    from models.checkpoint import load_encoder as _load

    return _load(path, device)


__all__ = ["DEFAULT_CHECKPOINT", "load_encoder"]
