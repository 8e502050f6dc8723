"""REID_IMAGE_DECODE: the torchvision JPEG path (nvJPEG on CUDA) agrees with PIL's, and without CUDA the service decodes on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.errors import InvalidImage
from app.services import images
from app.services.images import ImageLimits, decode_crop, decode_jpeg_torch

LIMITS = ImageLimits(max_bytes=5 * 1024 * 1024, max_pixels=4096 * 4096, max_aspect=16.0)


def jpeg(width: int = 60, height: int = 150, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 10, width // 10, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_without_cuda_the_cuda_setting_decodes_on_the_cpu_exactly_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "cuda_decode_available", lambda: False)
    data = jpeg()
    cpu = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    asked_cuda = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    assert torch.equal(cpu, asked_cuda) and cpu.dtype == torch.uint8 and cpu.shape == (3, 128, 64)


def test_torchvision_jpeg_path_agrees_with_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code the CUDA path runs, on the CPU device: same size and type, pixels within JPEG-decoder differences."""
    data = jpeg(width=100, height=240)
    pil = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64)).float()
    tv = decode_jpeg_torch(data, (128, 64), device="cpu")
    assert tv.dtype == torch.uint8 and tv.shape == (3, 128, 64) and tv.device.type == "cpu"
    assert (tv.float() - pil).abs().mean() < 4.0  # PIL's draft mode decodes at reduced scale; both then filter bilinearly


def test_cuda_path_still_validates_and_names_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(images, "cuda_decode_available", lambda: True)
    monkeypatch.setattr(images, "decode_jpeg_torch", lambda data, size, device: calls.append(device) or torch.zeros(3, *size, dtype=torch.uint8))
    decode_crop(jpeg(), name="ok", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    assert calls == ["cuda"]
    png = io.BytesIO()
    Image.new("RGB", (20, 40)).save(png, format="PNG")
    decode_crop(png.getvalue(), name="png", content_type="image/png", limits=LIMITS, size=(128, 64), decode="cuda")
    assert calls == ["cuda"]  # only JPEG goes to nvJPEG
    with pytest.raises(InvalidImage, match="bad"):
        decode_crop(b"\xff\xd8\xff" + b"0" * 50, name="bad", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")


def test_a_corrupt_jpeg_body_is_an_invalid_image_on_the_torchvision_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "cuda_decode_available", lambda: True)
    real = images.decode_jpeg_torch
    monkeypatch.setattr(images, "decode_jpeg_torch", lambda data, size, device: real(data, size, device="cpu"))
    data = jpeg()
    broken = data[:200] + bytes(len(data) - 400) + data[-200:]
    try:
        decode_crop(broken, name="broken", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    except InvalidImage as exc:
        assert "broken" in exc.message


def _pil_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "decode_jpeg_turbo", lambda *args, **kwargs: None)


@pytest.mark.parametrize(
    ("width", "height", "mode"),
    [
        (64, 128, "RGB"),
        (60, 150, "RGB"),
        (257, 513, "RGB"),
        (300, 700, "RGB"),
        (520, 1030, "RGB"),
        (1000, 2000, "RGB"),
        (1100, 2300, "RGB"),
        (90, 200, "L"),
        (64, 128, "progressive"),
        (520, 1030, "progressive"),
    ],
)
def test_the_libjpeg_turbo_path_gives_exactly_the_pil_paths_pixels(monkeypatch: pytest.MonkeyPatch, width: int, height: int, mode: str) -> None:
    """Same pixels as PIL's decoder, its draft scale (1/2, 1/4, 1/8 for large crops) included: features do not move."""
    data = jpeg(width=width, height=height, seed=width)
    if mode != "RGB":
        buf = io.BytesIO()
        image = Image.open(io.BytesIO(data))
        (image.convert("L") if mode == "L" else image).save(buf, format="JPEG", quality=90, progressive=mode == "progressive")
        data = buf.getvalue()
    size = (128, 64)
    scale = images.jpeg_draft_scale(width, height, size)
    turbo = images.decode_jpeg_turbo(data, width, height, size)
    assert turbo is not None, "simplejpeg is a dependency: the fast path must take a baseline or progressive JPEG"
    fast = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=size)
    _pil_only(monkeypatch)
    pil = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=size)
    assert torch.equal(turbo, pil) and torch.equal(fast, pil), f"scale {scale}"


def test_draft_scale_matches_pils_rule() -> None:
    for width, height in [(64, 128), (256, 512), (511, 1100), (512, 1024), (1024, 2048), (2048, 4096), (5000, 600)]:
        with Image.open(io.BytesIO(jpeg(width=width, height=height))) as img:
            img.draft("RGB", (128 * 2, 256 * 2))
            decoded = img.size
        scale = images.jpeg_draft_scale(width, height, (256, 128))
        assert decoded == (-(-width // scale), -(-height // scale))


def test_files_the_fast_path_declines_go_to_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG with libjpeg warnings (a corrupt stretch) is not refused by the fast path: PIL decides, as before."""
    data = jpeg()
    broken = data[:300] + bytes(200) + data[500:]
    assert images.decode_jpeg_turbo(broken, 60, 150, (128, 64)) is None
    _pil_only(monkeypatch)
    try:
        pil_result: torch.Tensor | str = decode_crop(broken, name="b", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    except InvalidImage as exc:
        pil_result = exc.message
    monkeypatch.undo()
    try:
        result: torch.Tensor | str = decode_crop(broken, name="b", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    except InvalidImage as exc:
        result = exc.message
    assert type(result) is type(pil_result) and (torch.equal(result, pil_result) if isinstance(result, torch.Tensor) else result == pil_result)


def test_rotated_and_cmyk_jpegs_stay_on_the_pil_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(images, "decode_jpeg_turbo", lambda data, w, h, size: calls.append(w) or None)
    img = Image.open(io.BytesIO(jpeg()))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = io.BytesIO()
    img.save(rotated, format="JPEG", exif=exif)
    out = decode_crop(rotated.getvalue(), name="r", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    assert out.shape == (3, 128, 64)
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, format="JPEG")
    decode_crop(cmyk.getvalue(), name="c", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    assert calls == []
    decode_crop(jpeg(), name="plain", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    assert calls == [60]


def test_a_simplejpeg_that_decodes_differently_from_pillow_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two libraries bundle their own libjpeg-turbo builds: the fast path runs only where they were seen to agree."""
    assert images.turbo_agrees_with_pil()
    monkeypatch.setattr(images, "turbo_agrees_with_pil", lambda: False)
    assert images.decode_jpeg_turbo(jpeg(), 60, 150, (128, 64)) is None
    assert decode_crop(jpeg(), name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64)).shape == (3, 128, 64)


def test_corrupted_jpegs_get_the_same_answer_and_pixels_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile input: 400 randomly corrupted crops (bytes flipped, cut, inserted). The fast path accepts exactly what PIL
    accepts, with the same pixels, and refuses the rest with the same 4xx; nothing else escapes."""
    from app.core.errors import DomainError

    rng = np.random.default_rng(7)
    sources = [jpeg(width=w, height=h, seed=w) for w, h in ((64, 128), (60, 150), (300, 700))]
    real = images.decode_jpeg_turbo

    def outcome(data: bytes, fast: bool) -> tuple[str, object]:
        monkeypatch.setattr(images, "decode_jpeg_turbo", real if fast else (lambda *args, **kwargs: None))
        try:
            return "ok", decode_crop(data, name="f", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
        except DomainError as exc:
            return "refused", (type(exc).__name__, exc.status_code)

    accepted = 0
    for n in range(400):
        corrupted = bytearray(sources[n % len(sources)])
        for _ in range(int(rng.integers(1, 6))):
            at, kind = int(rng.integers(2, len(corrupted))), int(rng.integers(0, 3))
            if kind == 0:
                corrupted[at] = int(rng.integers(0, 256))
            elif kind == 1:
                del corrupted[at : at + int(rng.integers(1, 50))]
            else:
                corrupted[at:at] = rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
        fast, pil = outcome(bytes(corrupted), True), outcome(bytes(corrupted), False)
        assert fast[0] == pil[0], n
        if fast[0] == "ok":
            accepted += 1
            assert torch.equal(fast[1], pil[1]), n  # type: ignore[arg-type]
        else:
            assert fast[1] == pil[1] and 400 <= pil[1][1] < 500, n  # type: ignore[index]
    assert 0 < accepted < 400  # both kinds of outcome were exercised


def test_the_agreement_check_fails_when_simplejpeg_decodes_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    import simplejpeg

    real = simplejpeg.decode_jpeg
    check = images.turbo_agrees_with_pil.__wrapped__  # the uncached check
    assert check()
    calls: list[int] = []

    def off_at_scale_eight(data: bytes, **kwargs: object) -> np.ndarray:  # a build that differs only in its 1/8 decoder
        calls.append(int(kwargs.get("min_factor", 1)))  # type: ignore[call-overload]
        pixels = real(data, **kwargs)
        return pixels ^ 1 if kwargs.get("min_factor") == 8 else pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", off_at_scale_eight)
    assert not check() and 8 in calls
