"""Liveness, readiness, Prometheus metrics and model information."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import get_state
from app.api.schemas import ModelOut

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "reid", None)
    checks = {"model": False, "database": False, "indexes": False}
    if state is not None:
        checks["model"] = state.embedding is not None
        checks["indexes"] = bool(state.indexes_ready)

        def ping() -> bool:
            try:
                with state.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                return False

        checks["database"] = await run_in_threadpool(ping)
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(get_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", response_model=ModelOut, tags=["model"])
def model_info(request: Request) -> ModelOut:
    embedder = get_state(request).embedding.embedder
    meta = embedder.metadata
    return ModelOut(
        name=embedder.source or str(meta.get("name", "encoder")),
        version=str(meta.get("code_revision", "unknown")),
        backbone=str(meta.get("backbone")),
        embedding_dim=embedder.embedding_dim,
        input_size=list(embedder.input_size),
        device=str(embedder.device),
        checkpoint_sha256=embedder.sha256,
        untrained_fallback=embedder.untrained,
        metrics=meta.get("metrics"),
    )
