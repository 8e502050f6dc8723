"""What the lifespan builds and every request reads (``request.app.state.reid``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.metrics import Metrics
from app.index.faiss_store import IndexRegistry
from app.services.embedding import EmbeddingService
from app.services.gallery import GalleryService
from app.services.ratelimit import RateLimiter


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    embedding: EmbeddingService
    indexes: IndexRegistry
    gallery: GalleryService
    metrics: Metrics
    admin_key: str
    calibration: dict[str, Any] | None
    rate_limiter: RateLimiter
    indexes_ready: bool = False
