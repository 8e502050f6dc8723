"""Encoder-only checkpoints: save with metadata, load strictly, embed image batches.

This is the seam the service uses: ``load_encoder(path, device)`` returns an
:class:`Embedder` whose ``embed`` maps uint8 crops to L2-normalised features. By default the
PyTorch module runs them; :func:`models.inference.select.select_backend` can put an ONNX Runtime
or OpenVINO runner behind the same ``embed`` after checking that its features match.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.data.transforms import eval_transform
from models.encoder import EnsembleEncoder, ReIDEncoder
from models.evaluation.likelihood import TrackScorer

if TYPE_CHECKING:
    from models.inference.runners import Runner

FORMAT = "reid-encoder/1"
Encoder = ReIDEncoder | EnsembleEncoder


def save_encoder(encoder: Encoder, path: str | Path, metadata: dict[str, Any], track_scorer: TrackScorer | None = None) -> None:
    """Write ``{"format", "state_dict", "metadata"[, "track_scorer"]}``; atomic (temp file + rename).

    An ensemble's members are not copied: its ``metadata["members"]`` names their checkpoint files (with SHA-256),
    which must sit beside it, and its state dict holds what the ensemble adds (the projection head)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = encoder.state_dict()
    if isinstance(encoder, EnsembleEncoder):
        if len(metadata.get("members", [])) != len(encoder.members):
            raise ValueError("an ensemble's metadata must name each member's checkpoint file")
        state = {k: v for k, v in state.items() if not k.startswith("members.")}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "metadata": metadata,
    }
    if track_scorer is not None:
        payload["track_scorer"] = {k: torch.from_numpy(v) for k, v in track_scorer.as_arrays().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


@dataclass
class Embedder:
    """An encoder in eval mode on its device, with the metadata it was exported with."""

    model: Encoder
    device: torch.device
    input_size: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    untrained: bool = False
    source: str | None = None  # file name of the checkpoint it was loaded from
    runner: Runner | None = None  # another runtime behind ``embed`` (None: the PyTorch module)
    track_scorer: TrackScorer | None = None  # noise-aware track scoring fitted on the public split (None: cosine)

    @property
    def feature_domain(self) -> str:
        """``signed`` or ``nonnegative``: where emitted features lie (the privacy mechanism's sensitivity follows)."""
        return self.model.output_domain

    @property
    def split_sign(self) -> bool:
        """Whether features are ``[relu(f), relu(-f)]`` of a signed feature ``f`` (``ReIDEncoder.split_sign``)."""
        return bool(self.model.split_sign)

    @property
    def embedding_dim(self) -> int:
        """Coordinates of an emitted feature (the projection head's output where there is one)."""
        return self.model.feature_dim

    @property
    def backend(self) -> str:
        """Which runtime computes the features: ``torch``, ``onnxruntime`` or ``openvino``."""
        return self.runner.name if self.runner is not None else "torch"

    @property
    def default_chunk(self) -> int:
        """Crops per forward pass: small on CPU (activations stay in cache: measured 2.5x faster
        at 8 than at 64 on the development CPU), large on CUDA; a runner brings its own."""
        if self.runner is not None:
            return self.runner.default_chunk
        return 256 if self.device.type == "cuda" else 8

    @torch.inference_mode()
    def embed(self, images_uint8: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """uint8 ``[N, 3, H, W]`` (any H, W) -> float32 ``[N, D]`` L2-normalised features."""
        batch_size = batch_size or self.default_chunk
        if self.runner is not None:
            return self._embed_with_runner(self.runner, images_uint8, batch_size)
        outputs = []
        use_amp = self.device.type == "cuda"
        for start in range(0, images_uint8.shape[0], batch_size):
            chunk = images_uint8[start : start + batch_size].to(self.device, non_blocking=True)
            x = eval_transform(chunk, self.input_size)
            if use_amp:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use_amp):
                feats = self.model(x)
            outputs.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu())
        if not outputs:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return torch.cat(outputs).numpy().astype(np.float32, copy=False)

    def _embed_with_runner(self, runner: Runner, images_uint8: torch.Tensor, batch_size: int) -> np.ndarray:
        outputs = []
        for start in range(0, images_uint8.shape[0], batch_size):
            x = eval_transform(images_uint8[start : start + batch_size].cpu(), self.input_size)
            feats = torch.from_numpy(runner.run(x.numpy()))
            outputs.append(torch.nn.functional.normalize(feats.float(), dim=1))
        if not outputs:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return torch.cat(outputs).numpy().astype(np.float32, copy=False)


def _prepare(model: Encoder, device: torch.device) -> Encoder:
    model.eval().requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def read_checkpoint(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The ``{"format", "state_dict", "metadata"}`` payload of an encoder-only checkpoint (tensors on CPU); from
    ``data`` (the file's bytes, already read) when given."""
    payload = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} encoder checkpoint")
    return payload


def load_encoder(path: str | Path, device: str = "cpu") -> Embedder:
    """Load an encoder-only checkpoint strictly; raises on any missing or extra key."""
    path = Path(path)
    data = path.read_bytes()  # read once: the SHA-256 reported (and checked for ensemble members) is of what was loaded
    payload = read_checkpoint(path, data)
    meta = payload["metadata"]
    projection_dim = int(meta["projection"]["dim"]) if meta.get("projection") else None
    model: Encoder
    if meta["backbone"] == "ensemble":
        model = EnsembleEncoder(
            [_member(path, member) for member in meta["members"]],
            [(int(m["input_size"][0]), int(m["input_size"][1])) for m in meta["members"]],
            projection_dim=projection_dim,
            split_sign=bool(meta.get("split_sign", False)),
        )
        own = payload["state_dict"]
        if any(key.startswith("members.") for key in own):  # members come from their verified files, never from here
            raise ValueError(f"{path}: an ensemble checkpoint must not carry its members' weights")
        missing, unexpected = model.load_state_dict(own, strict=False)
        if unexpected or any(not key.startswith("members.") for key in missing):
            raise ValueError(f"{path}: the ensemble's weights do not match its structure ({sorted(unexpected) or sorted(missing)})")
    else:
        model = ReIDEncoder(
            backbone=meta["backbone"],
            embedding_dim=int(meta["embedding_dim"]),
            pretrained=False,
            last_stride=int(meta.get("last_stride", 1)),
            flip_average=bool(meta.get("flip_average", False)),
            feature_domain=str(meta.get("feature_domain", "signed")),
            projection_dim=projection_dim,
            split_sign=bool(meta.get("split_sign", False)),
        )
        model.load_state_dict(payload["state_dict"], strict=True)
    dev = resolve_device(device)
    scorer = payload.get("track_scorer")
    return Embedder(
        track_scorer=None if scorer is None else TrackScorer.from_arrays({k: v.numpy() for k, v in scorer.items()}),
        model=_prepare(model, dev),
        device=dev,
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        metadata=meta,
        sha256=hashlib.sha256(data).hexdigest(),
        source=path.name,
    )


def _member(ensemble_path: Path, member: dict[str, Any]) -> ReIDEncoder:
    """An ensemble member: its checkpoint beside the ensemble's, with the SHA-256 the ensemble was built from."""
    name = str(member["file"])
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{ensemble_path.name}: a member is named by a file name beside it, not a path ({name!r})")
    path = ensemble_path.parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{ensemble_path.name}: member checkpoint {name} must sit beside it")
    embedder = load_encoder(path)  # hashes the file it loads
    if embedder.sha256 != member["sha256"]:
        raise ValueError(f"{ensemble_path.name}: member {name} is not the file it was built from (SHA-256 differs)")
    if not isinstance(embedder.model, ReIDEncoder):
        raise ValueError(f"{ensemble_path.name}: member {name} is an ensemble itself")
    if list(embedder.input_size) != [int(v) for v in member["input_size"]]:
        raise ValueError(f"{ensemble_path.name}: member {name} takes {list(embedder.input_size)} crops, not {member['input_size']}")
    return embedder.model


def untrained_encoder(
    device: str = "cpu", *, backbone: str = "mobilenet_v2", embedding_dim: int = 512, input_size: tuple[int, int] = (128, 64), seed: int = 0
) -> Embedder:
    """A clearly labelled random-weight encoder (fallback and tests); never for real use."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReIDEncoder(backbone=backbone, embedding_dim=embedding_dim, pretrained=False)
    dev = resolve_device(device)
    meta = {"backbone": backbone, "embedding_dim": embedding_dim, "input_size": list(input_size), "name": "untrained-fallback"}
    return Embedder(model=_prepare(model, dev), device=dev, input_size=input_size, metadata=meta, untrained=True)
