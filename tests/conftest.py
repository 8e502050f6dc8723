"""Shared fixtures: database URLs (SQLite always, PostgreSQL when configured), a tiny encoder, the app."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("REID_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cuhk03-detected"))
POSTGRES_ENV = "REID_TEST_POSTGRES_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--postgres-url", default=os.environ.get(POSTGRES_ENV), help=f"PostgreSQL server URL for DB tests (or ${POSTGRES_ENV})")


def _backends(config: pytest.Config) -> list[str]:
    return ["sqlite", "postgresql"] if config.getoption("--postgres-url") else ["sqlite"]


def pytest_report_header(config: pytest.Config) -> str:
    return f"database backends: {', '.join(_backends(config))}; shared data: {SHARED_DATA if SHARED_DATA.is_dir() else 'absent'}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many database-backed tests passed on each backend."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("passed", []):
        for backend in ("sqlite", "postgresql"):
            if f"[{backend}" in report.nodeid or f"-{backend}" in report.nodeid:
                counts[backend] = counts.get(backend, 0) + 1
    if counts:
        terminalreporter.write_line("database-backed tests passed per backend: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", _backends(metafunc.config), scope="session")


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--postgres-url")


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path, postgres_server: str | None) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL database."""
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    assert postgres_server is not None
    name = f"reid_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def tiny_embedder():
    """A small random-weight encoder on CPU (fast; identical crops give identical features)."""
    from models.checkpoint import untrained_encoder

    return untrained_encoder("cpu", embedding_dim=64, input_size=(64, 32), seed=1)


ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture
def settings(tmp_path: Path, db_url: str):
    from app.core.config import Settings

    return Settings(data_dir=tmp_path / "data", database_url=db_url, admin_key=ADMIN_KEY, max_batch=8, device="cpu")


@pytest.fixture
def client(settings, tiny_embedder) -> Iterator:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, embedder=tiny_embedder)) as test_client:
        yield test_client


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 128)) -> bytes:
    """A deterministic random JPEG crop (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def require_shared_data() -> Path:
    if not (SHARED_DATA / "query").is_dir():
        pytest.skip(f"shared CUHK03 data not found at {SHARED_DATA} (it lives in ../shared beside the checkout)")
    return SHARED_DATA
