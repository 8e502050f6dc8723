"""Schemathesis over the whole OpenAPI document: every operation, every check, every phase, 0 failures.

It walks the schema the app serves, so endpoints added later are covered without touching this file. The service runs
in a thread (uvicorn, SQLite, the tiny test encoder); Schemathesis runs as its CLI in a subprocess against it, with
``tests/api/schemathesis.toml`` (credentials per security scheme; 413 accepted as a refusal of negative data) and
``tests/api/schemathesis_hooks.py`` (a victim tenant for destructive operator calls; real JPEGs in schema-valid uploads).

The same run by hand against a live service (``reid-gallery serve``), with REID_FUZZ_* set as ``FuzzTarget.env`` says:
    SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks st --config-file tests/api/schemathesis.toml run \
        http://127.0.0.1:8000/openapi.json --checks all --phases examples,coverage,fuzzing,stateful -n 40
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY

pytest.importorskip("schemathesis")
ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = int(os.environ.get("REID_FUZZ_MAX_EXAMPLES", "40"))
SEED = os.environ.get("REID_FUZZ_SEED", "20261127")
MIN_CASES = 1000


def test_whole_api_with_all_checks(db_backend, settings, tiny_embedder, tmp_path):
    if db_backend != "sqlite":
        pytest.skip("one run (SQLite) keeps CI within its time; the same code paths run on PostgreSQL in the other API tests")
    from app.main import create_app
    from tests.api.fuzzing import prepare, serve

    report = tmp_path / "schemathesis.json"
    with serve(create_app(settings, embedder=tiny_embedder)) as url:
        target = prepare(url, ADMIN_KEY)
        env = {
            **os.environ,
            **target.env(),
            "REID_FUZZ_API_KEY": target.api_key,
            "REID_FUZZ_ADMIN_KEY": target.admin_key,
            "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
            "NO_COLOR": "1",
        }
        command = [
            *(sys.executable, "-m", "schemathesis.cli"),
            *("--config-file", str(ROOT / "tests" / "api" / "schemathesis.toml")),
            *("run", f"{url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"),
            *("--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1", "--no-shrink"),
            *("--report", "json", "--report-json-path", str(report)),
        ]
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    summary = json.loads(report.read_text())
    generated = summary["test_cases"]["generated"] if isinstance(summary.get("test_cases"), dict) else None
    assert summary["failures"] == [] and summary["errors"] == [], output[-8000:]
    assert generated is not None and generated >= MIN_CASES, f"only {generated} cases generated\n{output[-4000:]}"
    print(f"schemathesis: {generated} cases over {summary['operations']}, 0 failures")
