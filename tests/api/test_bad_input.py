"""Every kind of bad input gets a specific 4xx and leaves the gallery unchanged."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest

from tests.api.helpers import count, enroll, make_tenant, meta, search
from tests.conftest import jpeg_bytes


def png_header_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def tenant(client):
    _, key = make_tenant(client, "victim")
    assert enroll(client, key, [1, 2]).status_code == 201
    return key


def post_files(client, key, files, metadata=None):
    data = {"metadata": json.dumps(metadata if metadata is not None else [meta() for _ in files])}
    return client.post("/v1/gallery", files=[("images", f) for f in files], data=data, headers={"X-API-Key": key})


@pytest.mark.parametrize(
    ("upload", "status", "code"),
    [
        (("bad.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg", "image/jpeg"), 422, "invalid_image"),
        (("empty.jpg", b"", "image/jpeg"), 422, "invalid_image"),
        (("notes.jpg", b"hello, I am a text file\n" * 10, "image/jpeg"), 422, "invalid_image"),
        (("bomb.png", png_header_bomb(), "image/png"), 413, "payload_too_large"),
        (("crop.jpg", jpeg_bytes(3), "text/plain"), 415, "unsupported_media_type"),
        (("crop.gif", b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;", "image/gif"), 415, "unsupported_media_type"),
        (("strip.png", png_header_bomb(1, 4_000_000), "image/png"), 422, "invalid_image"),  # within the pixel limit; 5 s and 1.3 GB to resize
        (("band.png", png_header_bomb(20_000, 10), "image/png"), 422, "invalid_image"),
    ],
    ids=["corrupt", "zero-byte", "text-as-jpg", "png-bomb", "wrong-content-type", "gif", "tall-strip", "wide-band"],
)
def test_bad_images_rejected_and_nothing_stored(client, tenant, upload, status, code):
    before = count(client, tenant)
    # The bad crop rides with a good one: the batch is atomic, so neither is stored.
    response = post_files(client, tenant, [("good.jpg", jpeg_bytes(9), "image/jpeg"), upload])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "image[1]" in error["message"] and error["details"][0]["item"] == 1
    assert count(client, tenant) == before


def test_fifty_megabyte_upload_is_rejected(client, tenant):
    before = count(client, tenant)
    big = jpeg_bytes(1) + b"\x00" * (50 * 1024 * 1024)
    response = post_files(client, tenant, [("big.jpg", big, "image/jpeg")])
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert count(client, tenant) == before


def test_request_body_over_the_limit_is_rejected_early(client, tenant, settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    small = settings.model_copy(update={"max_request_bytes": 64 * 1024})
    with TestClient(create_app(small, embedder=client.app.state.reid.embedding.embedder)) as limited:
        response = post_files(limited, tenant, [("a.jpg", jpeg_bytes(1) + b"\x00" * 200_000, "image/jpeg")])
        assert response.status_code == 413
        assert "request body exceeds" in response.json()["error"]["message"]
    assert count(client, tenant) == 2


def test_missing_fields(client, tenant):
    before = count(client, tenant)
    no_meta = client.post("/v1/gallery", files=[("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))], headers={"X-API-Key": tenant})
    assert no_meta.status_code == 422 and "metadata" in no_meta.json()["error"]["message"]
    no_images = client.post("/v1/gallery", data={"metadata": "[]"}, headers={"X-API-Key": tenant})
    assert no_images.status_code == 422 and "images" in no_images.json()["error"]["message"]
    missing_camera = post_files(client, tenant, [("a.jpg", jpeg_bytes(1), "image/jpeg")], [{"captured_at": "2026-01-01T00:00:00Z"}])
    assert missing_camera.status_code == 422 and missing_camera.json()["error"]["details"][0]["item"] == 0
    naive_time = post_files(client, tenant, [("a.jpg", jpeg_bytes(1), "image/jpeg")], [{"camera_id": "c", "captured_at": "2026-01-01T00:00:00"}])
    assert naive_time.status_code == 422
    wrong_count = post_files(client, tenant, [("a.jpg", jpeg_bytes(1), "image/jpeg")], [meta(), meta()])
    assert wrong_count.status_code == 422 and "2 entries for 1 images" in wrong_count.json()["error"]["message"]
    not_json = client.post(
        "/v1/gallery", files=[("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))], data={"metadata": "{oops"}, headers={"X-API-Key": tenant}
    )
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]["message"]
    reserved = post_files(client, tenant, [("a.jpg", jpeg_bytes(1), "image/jpeg")], [meta(subject_ref="track:t-1")])
    assert reserved.status_code == 422 and "must not start with 'track:'" in str(reserved.json()["error"]["details"])  # a track's budget key
    assert count(client, tenant) == before


def test_a_camera_filter_naming_no_camera_is_refused(client, tenant, monkeypatch):
    """``camera_ids=",,,"`` is an error, not a filter that keeps nothing (and not "no filter"), found before any crop is
    decoded."""
    from app.api.routes import gallery

    decoded: list[str] = []
    real_decode = gallery.decode_crop
    monkeypatch.setattr(gallery, "decode_crop", lambda *a, **kw: decoded.append("crop") or real_decode(*a, **kw))
    empty = search(client, tenant, 1, camera_ids=",, ,")
    assert not decoded and search(client, tenant, 1, camera_ids="  ").status_code == 422
    assert empty.status_code == 422 and "camera_ids names no camera" in empty.json()["error"]["message"]
    assert search(client, tenant, 1, camera_ids="").status_code == 200  # an empty field is a field left out


@pytest.mark.parametrize("k", [0, 10**6, -1])
def test_k_out_of_range(client, tenant, k):
    files = {"image": ("q.jpg", jpeg_bytes(1), "image/jpeg")}
    response = client.post("/v1/search", files=files, data={"k": str(k)}, headers={"X-API-Key": tenant})
    assert response.status_code == 422 and "body.k" in response.json()["error"]["message"]


def test_batch_over_the_limit(client, tenant, settings):
    before = count(client, tenant)
    n = settings.max_batch + 1
    response = post_files(client, tenant, [(f"{i}.jpg", jpeg_bytes(i), "image/jpeg") for i in range(n)])
    assert response.status_code == 413 and f"batch limit of {settings.max_batch}" in response.json()["error"]["message"]
    assert count(client, tenant) == before


def test_unknown_malformed_and_revoked_keys(client, tenant):
    for key in ("rk_000000000000_nope", "garbage", ""):
        response = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(1), "image/jpeg")}, headers={"X-API-Key": key})
        assert response.status_code == 401
    from tests.api.helpers import ADMIN

    tenant_id = client.get("/v1/admin/tenants", headers=ADMIN).json()[0]["id"]
    issued = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=ADMIN).json()
    bearer = {"Authorization": f"Bearer {issued['api_key']}"}
    assert client.get("/v1/gallery", headers=bearer).status_code == 200
    client.delete(f"/v1/admin/tenants/{tenant_id}/keys/{issued['id']}", headers=ADMIN)
    revoked = client.get("/v1/gallery", headers=bearer)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert count(client, tenant) == 2


def test_exif_orientation_and_png_and_webp_accepted(client, tenant):
    from PIL import Image

    crops = []
    for fmt, ctype in (("PNG", "image/png"), ("WEBP", "image/webp")):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 128), (200, 10, 10)).save(buffer, format=fmt)
        crops.append((f"c.{fmt.lower()}", buffer.getvalue(), ctype))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (128, 64), (10, 200, 10)).save(rotated, format="JPEG", exif=exif)
    crops.append(("r.jpg", rotated.getvalue(), "image/jpeg"))
    assert post_files(client, tenant, crops).status_code == 201


def test_x_api_key_wins_over_a_bearer_token(client, tenant):
    """Both headers sent (a gateway may add its own Authorization): X-API-Key names the tenant, as documented."""
    _, other = make_tenant(client, "other-tenant")
    both = client.get("/v1/gallery", headers={"X-API-Key": other, "Authorization": f"Bearer {tenant}"})
    assert both.status_code == 200 and both.json()["items"] == []  # the other tenant's empty gallery, not the victim's


def test_a_metadata_field_over_the_form_parsers_limit_is_a_413_that_says_so(client, tenant):
    """256 crops with attributes near their 4 KiB limit make a metadata field over Starlette's 1 MiB per text field:
    a 413 naming the field and the way out, not a bare 400; nothing stored."""
    before = count(client, tenant)
    metas = [meta(attributes={"k": "v" * 4080}) for _ in range(256)]
    files = [("images", (f"crop{i}.jpg", jpeg_bytes(1), "image/jpeg")) for i in range(256)]
    answer = client.post("/v1/gallery", files=files, data={"metadata": json.dumps(metas)}, headers={"X-API-Key": tenant})
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and "metadata" in error["message"] and "fewer crops" in error["message"]
    assert count(client, tenant) == before
