"""The operators' console in a real browser: Debian's chromium driven by Playwright (no browser download).

Signs in, creates a tenant, sets ε with the slider (the plot's marker and the readout follow before saving), saves,
issues a key (shown once, copied), finds the audit entries, and deletes the tenant after typing its name. Screenshots
go to ``REID_CONSOLE_SCREENSHOTS`` (``docs`` refreshes the ones in the repository), else to the test's temp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("REID_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def console_url(db_backend, settings, tiny_embedder):
    if db_backend != "sqlite":
        pytest.skip("the console is browser-side; one backend is enough")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    from app.main import create_app
    from app.services.calibration import load_calibration
    from models import DEFAULT_CHECKPOINT
    from tests.api.fuzzing import serve

    app = create_app(settings, embedder=tiny_embedder)
    with serve(app) as url:
        # The tiny test encoder has no measured tradeoff; show the shipped encoder's measured curve instead.
        app.state.reid.calibration = load_calibration(DEFAULT_CHECKPOINT)
        yield url


def test_console_end_to_end(console_url, tmp_path):
    shots = Path(os.environ.get("REID_CONSOLE_SCREENSHOTS") or tmp_path)
    if not shots.is_absolute():
        shots = ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console_url)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{console_url}/console")

        page.fill("#admin-key", "wrong-key")
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#signin-error")).to_have_text("That key was refused.")
        page.fill("#admin-key", ADMIN_KEY)
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#app")).to_be_visible()

        page.fill("#new-name", "north-gate")
        page.fill("#new-retention", "30")
        page.click("#create-tenant button[type=submit]")
        expect(page.locator("#tenant-title")).to_contain_text("north-gate")
        expect(page.locator("#policy-current")).to_contain_text("No policy yet")
        expect(page.locator("#plot polyline")).to_have_count(2)  # rank-1 and mAP curves drawn
        page.screenshot(path=str(shots / "console_tenant.png"), full_page=True)

        # Move ε with the slider (keyboard, as a person would): the marker and the readout follow before saving.
        slider = page.locator("#epsilon-slider")
        before = float(page.locator("#epsilon-marker").get_attribute("data-epsilon") or "nan")
        slider.focus()
        for _ in range(48):
            page.keyboard.press("ArrowRight")
        chosen = float(page.input_value("#epsilon"))
        assert chosen > before * 7  # 48 steps of 2^(1/16): x8
        expect(page.locator("#epsilon-marker")).to_have_attribute("data-epsilon", str(page.input_value("#epsilon")))
        expect(page.locator("#epsilon-readout")).to_contain_text(f"At ε = {page.input_value('#epsilon')}")
        expect(page.locator("#epsilon-readout")).to_contain_text("Expected rank-1")
        expect(page.locator("#epsilon-readout")).to_contain_text("with pooled tracks")  # the shipped calibration has those rows
        page.screenshot(path=str(shots / "console_privacy.png"), full_page=True)
        expect(page.locator("#pool-tracks")).to_be_checked()  # the default
        page.uncheck("#pool-tracks")
        page.click("#save-policy")
        expect(page.locator("#policy-notice")).to_contain_text("Saved")
        expect(page.locator("#policy-current")).to_contain_text("tracks not pooled")

        page.fill("#key-label", "gateway-1")
        page.click("#issue-form button[type=submit]")
        secret = page.locator("#new-key-value")
        expect(secret).to_contain_text("rk_")
        api_key = secret.inner_text()
        page.click("#copy-key")
        expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
        assert page.evaluate("navigator.clipboard.readText()") == api_key
        expect(page.locator("#keys tr")).to_have_count(1)
        audit = page.locator("#audit")
        for action in ("tenant.create", "privacy.update", "key.issue"):
            expect(audit).to_contain_text(action)
        page.screenshot(path=str(shots / "console_keys_audit.png"), full_page=True)

        tenant_id = int(page.locator("#tenant-list button[aria-current=true]").get_attribute("data-tenant-id") or 0)
        with httpx.Client(base_url=console_url) as http:
            policy = http.get(f"/v1/admin/tenants/{tenant_id}/privacy", headers={"X-Admin-Key": ADMIN_KEY}).json()
            assert policy["epsilon"] == pytest.approx(chosen) and policy["pool_tracks"] is False
            assert http.get("/v1/gallery", headers={"X-API-Key": api_key}).status_code == 200  # the issued key works

        page.click("#delete-tenant")
        expect(page.locator("#confirm-delete-button")).to_be_disabled()
        page.fill("#confirm-name", "north-gate")
        page.click("#confirm-delete-button")
        expect(page.locator("#list-notice")).to_contain_text("Deleted")
        expect(page.locator("#tenant-list li")).to_have_count(0)
        assert errors == []
        browser.close()
