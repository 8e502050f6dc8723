"""Application factory: the lifespan builds engine, encoder, indexes and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.metrics import Metrics, serve_metrics
from app.index.faiss_store import IndexConfig, IndexRegistry, claim_directory
from app.services.embedding import EmbeddingService
from app.services.gallery import EncoderIdentity, GalleryService
from app.services.ratelimit import RateLimiter
from app.state import AppState
from app.web.body_limit import BodyLimitMiddleware
from models.evaluation.likelihood import TrackScorer

log = logging.getLogger("reid.app")

__all__ = ["AppState", "build_state", "create_app", "resolve_admin_key"]


def resolve_admin_key(settings: Settings) -> str:
    """Settings, then a secret file, else a generated key written to DATA_DIR/admin.key (0600)."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value()
    if settings.admin_key_file is not None:
        return settings.admin_key_file.read_text().strip()
    path = settings.data_dir / "admin.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
        log.warning("no REID_ADMIN_KEY set: generated an admin key in %s", path)
    return path.read_text().strip()


class PathOnlyAccessLog(logging.Filter):
    """Uvicorn's access lines without their query strings, which can carry subject and track references, camera ids and
    capture times (``GET /v1/gallery?subject_ref=…``): the line keeps the method, path and status."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def create_app(settings: Settings | None = None, *, embedder: Any = None) -> FastAPI:
    """Build the app. ``embedder`` overrides checkpoint loading (tests use a tiny one)."""
    settings = settings or get_settings()
    access = logging.getLogger("uvicorn.access")  # every worker process builds its app: each gets the filter
    if not any(isinstance(f, PathOnlyAccessLog) for f in access.filters):
        access.addFilter(PathOnlyAccessLog())
    MultiPartParser.spool_max_size = settings.max_request_bytes  # keep uploads in memory, never spooled to disk

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking work (sync routes and dependencies, SQL, FAISS) runs on this many threads; the pool matches them.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        state = await run_in_threadpool(build_state, settings, embedder)
        app.state.reid = state
        actions = await run_in_threadpool(state.gallery.sync_indexes)
        _log_follow(state, actions)
        for tenant_id, recorded in state.gallery.mismatched.items():
            log.warning("tenant %s: gallery enrolled with %s; its searches answer 409 model_mismatch", tenant_id, recorded.describe())
        state.indexes_ready = True
        metrics_listener = serve_metrics(settings.metrics_address, state.metrics.registry) if settings.metrics_address else None
        tasks = [asyncio.create_task(_periodic(settings.index_save_seconds, state.indexes.save_all, "index save"))]
        tasks.append(asyncio.create_task(_periodic(settings.retention_interval_seconds, lambda: _purge(state), "retention")))
        tasks.append(asyncio.create_task(_periodic(settings.index_poll_seconds, lambda: _log_follow(state, state.gallery.follow()), "index follow")))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if metrics_listener is not None:
                metrics_listener[0].shutdown()
            await run_in_threadpool(state.indexes.close)
            state.embedding.close()
            state.engine.dispose()

    app = FastAPI(
        title="Re-ID gallery",
        version="0.1.0",
        description="Privacy-protected person re-identification gallery: enroll crops as differentially private features, search by image.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    from app.api.routes import admin, gallery, health
    from app.web import console

    app.include_router(health.router)
    app.include_router(gallery.router)
    app.include_router(admin.router)
    app.include_router(console.router)

    @app.middleware("http")
    async def _timing(request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        status = 500  # an exception passes through here on its way to the 500 handler: counted as one
        try:
            response = await call_next(request)
            status = response.status_code
        finally:
            state = getattr(request.app.state, "reid", None)
            if state is not None:
                path = getattr(request.scope.get("route"), "path", "unmatched")
                state.metrics.request_seconds.labels(request.method, path, str(status)).observe(time.perf_counter() - started)
        return response

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    return app


def track_scorer_for(embedder: Any) -> TrackScorer | None:
    """The checkpoint's track scorer when it fits the emitted features (a mismatched one is dropped: cosine)."""
    scorer = embedder.track_scorer
    if scorer is not None and scorer.dim != embedder.embedding_dim:
        log.warning("the track scorer has %d coordinates, the features %d: grouped search uses cosine", scorer.dim, embedder.embedding_dim)
        return None
    return scorer


def build_state(settings: Settings, embedder: Any = None) -> AppState:
    """Blocking start-up work: migrations, engine, encoder, registries."""
    from app.db.session import is_sqlite, make_engine, make_session_factory, run_migrations
    from app.services.calibration import load_calibration
    from app.services.embedding import load_embedder
    from models import DEFAULT_CHECKPOINT
    from models.privacy.mechanism import GaussianMechanism

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if settings.workers > 1 and is_sqlite(url):
        raise ValueError(single_process_message(settings.workers))
    if settings.auto_migrate:
        run_migrations(url)
    engine = make_engine(url, pool_size=settings.pool_size)
    sessions = make_session_factory(engine)
    if embedder is None:
        embedder = load_embedder(
            settings.checkpoint,
            device=settings.device,
            allow_untrained=settings.allow_untrained,
            backend=settings.encoder_backend,
            artifact=settings.encoder_artifact,
        )
    checkpoint = settings.checkpoint or (DEFAULT_CHECKPOINT if not embedder.untrained else None)
    index_dir, index_dir_lock = claim_directory(settings.index_dir)
    indexes = IndexRegistry(
        directory=index_dir,
        lock=index_dir_lock,
        config=IndexConfig(
            dim=embedder.embedding_dim // (2 if embedder.split_sign else 1),  # split-sign features are indexed signed
            kind=settings.index_type,
            nlist=settings.ivf_nlist,
            nprobe=settings.ivf_nprobe,
        ),
    )
    gallery = GalleryService(
        engine=engine,
        sessions=sessions,
        indexes=indexes,
        mechanism=GaussianMechanism(),
        encoder=EncoderIdentity(embedder.sha256 or "untrained", embedder.embedding_dim),
        change_log_days=settings.change_log_days,
        feature_domain=embedder.feature_domain,
        split_sign=embedder.split_sign,
        track_scorer=track_scorer_for(embedder),
        pool_max_crops=settings.pool_max_crops,
    )
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        embedding=EmbeddingService(
            embedder=embedder,
            batch_size=settings.encode_batch,
            mode=settings.embed_mode,
            wait_ms=settings.microbatch_wait_ms,
            forward_chunk=settings.forward_chunk,
            max_queue_crops=settings.encoder_queue_crops,
            max_queue_seconds=settings.encoder_queue_seconds,
        ),
        indexes=indexes,
        gallery=gallery,
        metrics=Metrics(),
        admin_key=resolve_admin_key(settings),
        calibration=load_calibration(checkpoint) if not embedder.untrained else None,
        rate_limiter=RateLimiter(),
    )


def single_process_message(workers: int) -> str:
    return (
        f"{workers} workers asked for, but the database is SQLite: SQLite serves one process (its writes are serialised by a "
        "lock inside that process, and each process would keep its own copy of the indexes). Run one worker, or point "
        "REID_DATABASE_URL at PostgreSQL to run several workers or replicas."
    )


def _log_follow(state: AppState, actions: dict[int, str]) -> None:
    for tenant_id, action in actions.items():
        if action == "dropped":
            state.metrics.forget_tenant(tenant_id)
            log.info("tenant %s was deleted: index dropped", tenant_id)
            continue
        size = state.indexes.get(tenant_id).size
        state.metrics.gallery_size.labels(str(tenant_id)).set(size)
        if action != "caught up":
            log.info("tenant %s index %s (%d items)", tenant_id, action, size)


def _purge(state: AppState) -> None:
    purged = state.gallery.purge_expired(min_interval_s=state.settings.retention_interval_seconds * 0.9)
    for tenant_id, count in purged.items():
        state.metrics.purged.labels(str(tenant_id)).inc(count)
        log.info("retention purged %d items of tenant %s", count, tenant_id)


async def _periodic(seconds: float, work: Any, name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(work)
        except Exception:  # a failed round must not stop the loop; logged with traceback
            log.exception("%s failed", name)
