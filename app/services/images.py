"""Defensive decoding of uploaded crops: size caps, allowed formats, bomb guard, EXIF, RGB."""

from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
ALLOWED_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream", ""}


EXIF_ORIENTATION = 0x0112
log = logging.getLogger("reid.images")


TURBO_MODES = {"RGB", "L"}  # JPEG colour spaces libjpeg-turbo's RGB output decodes exactly as PIL's convert("RGB")
_CHECK_SIZE = (128, 64)  # the target size of turbo_agrees_with_pil's crops (their DCT scales: 1, 2, 4 and 8)


def jpeg_draft_scale(width: int, height: int, size: tuple[int, int]) -> int:
    """The DCT scale PIL's ``draft("RGB", (2W, 2H))`` picks for a ``width`` x ``height`` JPEG and target ``size`` = (H, W)."""
    ratio = min(width // (2 * size[1]), height // (2 * size[0]))
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


@functools.cache
def turbo_agrees_with_pil() -> bool:
    """Whether ``simplejpeg`` is installed and decodes exactly as Pillow here (each bundles its own libjpeg-turbo):
    checked once on generated crops: 4:2:0, 4:2:2, 4:4:4 and greyscale, baseline and progressive, DCT scales 1 to 8."""
    try:
        import simplejpeg
    except ImportError:
        return False
    rng = np.random.default_rng(0)
    cases = ((60, 150, 2, False, "RGB"), (64, 128, 0, True, "RGB"), (90, 200, 1, False, "RGB"), (70, 140, 2, False, "L"))
    scaled = ((300, 700, 2, True, "RGB"), (520, 1030, 2, False, "RGB"), (1100, 2300, 2, False, "RGB"))  # DCT scale 2, 4, 8
    for width, height, subsampling, progressive, mode in cases + scaled:
        image = Image.fromarray(rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)).resize((width, height))
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, format="JPEG", quality=90, subsampling=subsampling, progressive=progressive)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (_CHECK_SIZE[1] * 2, _CHECK_SIZE[0] * 2))  # as decode_crop's PIL path does
            pil = np.array(img.convert("RGB"))
        turbo = _turbo_rgb(simplejpeg, data, width, height, _CHECK_SIZE)
        if turbo is None or not np.array_equal(turbo, pil):
            log.warning("simplejpeg does not decode as Pillow does here: JPEG crops are decoded by Pillow (slower)")
            return False
    return True


def decode_jpeg_turbo(data: bytes, width: int, height: int, size: tuple[int, int]) -> torch.Tensor | None:
    """A validated JPEG (baseline or progressive) decoded by libjpeg-turbo through ``simplejpeg`` (about 4x faster than
    PIL's decoder on the service's crops; same library, same DCT and upsampling, so the same pixels as PIL's path, draft
    scale included: ``turbo_agrees_with_pil`` checks it once), then resized as ``pil_to_uint8`` does. None when
    simplejpeg is absent, disagrees with Pillow, or declines the file: PIL then decides (a file it declines is decoded
    twice, the price of PIL's leniency)."""
    if not turbo_agrees_with_pil():
        return None
    import simplejpeg

    from models.data.transforms import array_to_uint8

    rgb = _turbo_rgb(simplejpeg, data, width, height, size)
    return None if rgb is None else array_to_uint8(rgb, size)


def _turbo_rgb(simplejpeg: Any, data: bytes, width: int, height: int, size: tuple[int, int]) -> np.ndarray | None:
    """``data`` decoded to RGB ``[H, W, 3]`` by ``simplejpeg`` at PIL's draft scale for ``size``; None if it declines."""
    scale = jpeg_draft_scale(width, height, size)
    expected = (-(-height // scale), -(-width // scale))
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=expected[0], min_width=expected[1], min_factor=scale)
    except (ValueError, RuntimeError):  # corrupt or unusual (libjpeg warnings are errors here): PIL's lenient decoder decides
        return None
    return rgb if rgb.shape[:2] == expected else None


def cuda_decode_available() -> bool:
    return torch.cuda.is_available()


def decode_jpeg_torch(data: bytes, size: tuple[int, int], *, device: str) -> torch.Tensor:
    """A JPEG decoded by torchvision on ``device`` (nvJPEG on CUDA), resized there (bilinear, antialiased like PIL's
    downscaling) to ``size``; uint8 ``[3, H, W]`` on the CPU. The header was already validated with PIL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec; decode_jpeg still serves
        from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:  # decode_crop reports it as a corrupt image, naming the item
        raise ValueError(f"JPEG decoding failed on {device}") from exc
    assert isinstance(image, torch.Tensor)
    if tuple(image.shape[-2:]) != tuple(size):
        resized = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return image.cpu()


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_aspect: float  # longer side / shorter side (``Settings.max_image_aspect``)


def decode_crop(data: bytes, *, name: str, content_type: str | None, limits: ImageLimits, size: tuple[int, int], decode: str = "cpu") -> torch.Tensor:
    """Validate and decode one crop to uint8 ``[3, H, W]`` (on the CPU) at the encoder's input ``size``.

    Raises a 4xx domain error naming ``name`` for empty, oversized, undecodable,
    disallowed, over-large (decompression-bomb) or absurdly elongated images. ``decode="cuda"``: a JPEG whose header
    passed the same checks (and that needs no EXIF rotation) is decoded and resized on the GPU
    (``torchvision.io.decode_jpeg``, nvJPEG) when CUDA is available; everything else on the CPU.
    """
    from models.data.transforms import pil_to_uint8

    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in ALLOWED_CONTENT_TYPES:
        raise UnsupportedMediaType(f"{name}: content type {ctype!r} is not an accepted image type (JPEG, PNG, WebP)", details={"item": name})
    if len(data) == 0:
        raise InvalidImage(f"{name}: empty file", details={"item": name})
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{name}: {len(data)} bytes exceeds the {limits.max_bytes}-byte limit per image", details={"item": name})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise UnsupportedMediaType(f"{name}: image format {img.format} is not accepted (JPEG, PNG, WebP)", details={"item": name})
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise PayloadTooLarge(f"{name}: {width}x{height} pixels exceeds the {limits.max_pixels}-pixel limit", details={"item": name})
                if max(width, height) > limits.max_aspect * min(width, height):
                    raise InvalidImage(
                        f"{name}: {width}x{height} pixels is no person crop: its sides differ by more than {limits.max_aspect:g}:1",
                        details={"item": name},
                    )
                if decode == "cuda" and img.format == "JPEG" and img.getexif().get(EXIF_ORIENTATION, 1) == 1 and cuda_decode_available():
                    return decode_jpeg_torch(data, size, device="cuda")
                if img.format == "JPEG" and img.mode in TURBO_MODES and img.getexif().get(EXIF_ORIENTATION, 1) == 1:
                    fast = decode_jpeg_turbo(data, width, height, size)
                    if fast is not None:
                        return fast
                img.draft("RGB", (size[1] * 2, size[0] * 2))  # JPEG: decode at reduced scale when possible
                oriented = ImageOps.exif_transpose(img)
                rgb = oriented.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(
            f"{name}: image dimensions exceed the {limits.max_pixels}-pixel limit (decompression bomb guard)", details={"item": name}
        ) from None
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{name}: not a decodable JPEG, PNG or WebP image", details={"item": name, "reason": type(exc).__name__}) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{name}: corrupt or truncated image", details={"item": name, "reason": type(exc).__name__}) from None
    return pil_to_uint8(rgb, size)
