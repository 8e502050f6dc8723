"""Liveness, readiness, Prometheus metrics and model information."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.api.contract import ADMIN_AUTH, PARAMS, AuthorizationHeader, admin_key_scheme, bearer_token, errors
from app.api.deps import get_state
from app.api.schemas import HealthOut, ModelOut, ReadyOut
from app.core.errors import Forbidden, Unauthorized

router = APIRouter(tags=["operations"])

METRICS_EXAMPLE = """# HELP reid_gallery_items items in a tenant's gallery
# TYPE reid_gallery_items gauge
reid_gallery_items{tenant="3"} 5317.0
"""


@router.get("/healthz", response_model=HealthOut, summary="Liveness", responses=errors())
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: model loaded, database reachable, indexes in sync with SQL",
    responses={503: {"model": ReadyOut, "description": "not ready yet; `checks` says which part is missing"}},
)
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
    mismatched = sorted(state.gallery.mismatched) if state is not None else []
    return JSONResponse({"ready": ready, "checks": checks, "model_mismatch_tenants": mismatched}, status_code=200 if ready else 503)


def require_metrics_reader(
    request: Request,
    x_admin_key: Annotated[str | None, Security(admin_key_scheme)] = None,
    authorization: AuthorizationHeader = None,
) -> None:
    """The admin key as X-Admin-Key or ``Authorization: Bearer`` (what Prometheus sends); none if REID_METRICS_AUTH=none."""
    state = get_state(request)
    if state.settings.metrics_auth == "none":
        return
    key = x_admin_key if x_admin_key is not None else bearer_token(authorization)
    if not key:
        raise Unauthorized("missing admin key: send X-Admin-Key or Authorization: Bearer <admin key>")
    if not hmac.compare_digest(key.encode(), state.admin_key.encode()):
        raise Forbidden("invalid admin key")


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key, unless REID_METRICS_AUTH=none; see also REID_METRICS_ADDRESS)",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}},
        },
        **errors(*ADMIN_AUTH, *PARAMS),
    },
)
def metrics(request: Request, _: Annotated[None, Security(require_metrics_reader)]) -> Response:
    return Response(generate_latest(get_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", response_model=ModelOut, tags=["model"], summary="The encoder that serves this gallery", responses=errors())
def model_info(request: Request) -> ModelOut:
    state = get_state(request)
    embedder = state.embedding.embedder
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
        model_mismatch_tenants=sorted(state.gallery.mismatched),
        feature_domain=state.gallery.feature_domain,
        track_scoring="likelihood" if state.gallery.track_scorer is not None else "cosine",
        members=[str(member.get("file")) for member in meta.get("members", [])],
        backend=embedder.backend,
    )
