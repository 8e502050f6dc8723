"""Service settings: one ``Settings`` read from ``REID_*`` environment variables."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment (prefix ``REID_``)."""

    model_config = SettingsConfigDict(env_prefix="REID_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("var"), description="index files, the embedded SQLite database and the generated admin key")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file DATA_DIR/reid.db")
    auto_migrate: bool = Field(True, description="run Alembic migrations at start (compose runs them as a job instead)")
    admin_key: SecretStr | None = Field(None, description="operator key for /v1/admin (X-Admin-Key)")
    admin_key_file: Path | None = Field(None, description="file holding the operator key (Docker secret)")
    checkpoint: Path | None = Field(None, description="encoder checkpoint; default: the shipped stage-one model")
    allow_untrained: bool = Field(True, description="fall back to a labelled untrained encoder when no checkpoint exists")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the encoder runs")
    encoder_backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="encoder runtime; auto: the fastest installed one whose features match PyTorch's at load (cosine >= 0.9999)"
    )
    encoder_artifact: Path | None = Field(None, description="prebuilt reid-export file (.onnx or OpenVINO .xml) of the checkpoint")
    image_decode: Literal["cpu", "cuda"] = Field("cpu", description="cuda: decode JPEG crops on the GPU (nvJPEG) when CUDA is available")
    max_batch: int = Field(256, ge=1, le=4096, description="most crops per enrollment request")
    max_query_crops: int = Field(16, ge=1, le=256, description="most crops in one search request (a query track)")
    pool_max_crops: int = Field(
        16, ge=2, le=4096, description="most crops in one pooled track release; a larger track in one request is split into balanced pools"
    )
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest accepted file per crop")
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="largest accepted width x height per crop")
    max_image_aspect: float = Field(
        16.0, ge=1.0, description="largest accepted ratio of a crop's longer side to its shorter (a 1-pixel-wide strip is no person crop)"
    )
    max_request_bytes: int = Field(128 * 1024 * 1024, ge=1024, description="largest accepted request body")
    encode_batch: int = Field(64, ge=1, description="most crops merged into one encoder call (micro-batching)")
    forward_chunk: int | None = Field(
        None, ge=1, description="crops per encoder forward pass; default 8 on CPU (measured fastest: activations stay in cache), 256 on CUDA"
    )
    embed_mode: Literal["thread", "microbatch"] = Field(
        "microbatch", description="merge concurrent requests into one encoder call (measured faster under load), or one call per request"
    )
    microbatch_wait_ms: float = Field(2.0, ge=0, le=100, description="how long a micro-batch waits for more requests")
    worker_threads: int = Field(
        24, ge=2, le=1000, description="threads for blocking work (SQL, FAISS, decoding); the database pool holds as many connections, plus 4"
    )
    encoder_queue_crops: int = Field(
        512, ge=1, description="most crops waiting for the encoder; a request beyond it is refused with 503 overloaded and Retry-After"
    )
    encoder_queue_seconds: float = Field(
        10.0, gt=0, description="most seconds of encoder work (at the measured rate) waiting; beyond it: 503 overloaded with Retry-After"
    )
    rate_requests_per_second: int = Field(100, ge=0, description="requests per second per API key (0: unlimited); operators override it per tenant")
    rate_crops_per_second: int = Field(
        1000, ge=0, description="crops (enrolled or searched) per second per API key, over a 10 s window (0: unlimited); per-tenant override"
    )
    index_poll_seconds: float = Field(0.25, gt=0, le=1, description="how often this replica applies the change log to its indexes")
    change_log_days: float = Field(7.0, gt=0, description="change-log rows older than this are pruned (a replica further behind rebuilds)")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (PostgreSQL only; SQLite is one process)")
    default_epsilon: float | None = Field(
        None, gt=0, description="finite epsilon given to new tenants; unset: enrollment is refused until an operator sets a policy"
    )
    default_delta: float = Field(1e-5, gt=0, lt=1, description="delta for new tenants")
    clip_norm: float = Field(1.0, gt=0, description="features are clipped to this L2 norm (sensitivity 2C; √2·C for non-negative encoders)")
    index_type: Literal["flat", "ivf"] = Field("flat", description="per-tenant FAISS index: exact inner product or IVF")
    ivf_nlist: int = Field(1024, ge=1, description="IVF lists (index_type=ivf)")
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists probed per search")
    index_save_seconds: float = Field(30.0, gt=0, description="how often changed indexes are saved")
    retention_interval_seconds: float = Field(3600.0, gt=0, description="how often expired records are purged")
    log_level: str = Field("INFO", description="logging level")
    metrics_auth: Literal["admin", "none"] = Field(
        "admin", description="/metrics on the API port needs the admin key (X-Admin-Key or Authorization: Bearer), or nothing"
    )
    metrics_address: str | None = Field(
        None,
        pattern=r"^[^:\s]*:\d{1,5}$",
        description="host:port of a separate plain listener serving only the Prometheus metrics, without a key (e.g. 127.0.0.1:9464)",
    )

    @field_validator("default_epsilon")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("no-noise (inf) must be set per tenant by an operator, never as a default")
        return value

    @property
    def pool_size(self) -> int:
        """One connection per worker thread (no request waits for a connection a thread could use), plus the
        background tasks (index follower, saver, retention) and the readiness probe."""
        return self.worker_threads + 4

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'reid.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
