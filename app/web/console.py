"""The operators' console: one static page (no build step, no CDN) that talks to the admin API with the admin key."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["console"])


@router.get(
    "/console",
    response_class=HTMLResponse,
    summary="Operators' console (HTML; sign in with the admin key)",
    responses={200: {"description": "the console page", "content": {"text/html": {"schema": {"type": "string"}, "example": "<!doctype html>…"}}}},
)
def console_page() -> HTMLResponse:
    page = files("app.web").joinpath("static/console.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP})


# Everything is inline and same-origin; nothing is fetched from elsewhere.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
