"""``reid-gallery``: serve the API, run database migrations, or use the service as a client (enroll, search).

The client subcommands import only ``reid_client`` (httpx, pydantic, tqdm): no torch, no service code.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reid-gallery", description="privacy-protected Re-ID gallery service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service (settings from REID_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None, help="worker processes (PostgreSQL only; default REID_WORKERS or 1)")
    sub.add_parser("migrate", help="alembic upgrade head on REID_DATABASE_URL")
    from reid_client.cli import add_enroll_parser, add_search_parser, enroll_command, search_command

    add_enroll_parser(sub)
    add_search_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "enroll":
        sys.exit(enroll_command(args))
    if args.command == "search":
        sys.exit(search_command(args))

    from app.core.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "migrate":
        from app.db.session import run_migrations

        run_migrations(settings.resolved_database_url)
        return
    import uvicorn

    from app.db.session import is_sqlite
    from app.main import create_app, single_process_message

    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        parser.error("--workers must be at least 1")
    if workers > 1 and is_sqlite(settings.resolved_database_url):
        parser.exit(2, f"reid-gallery serve: {single_process_message(workers)}\n")
    options = {"host": args.host, "port": args.port, "log_level": settings.log_level.lower(), "access_log": True}
    if workers > 1:  # each worker builds its app from the same REID_* environment
        uvicorn.run("app.main:create_app", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
