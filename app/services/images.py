"""Defensive decoding of uploaded crops: size caps, allowed formats, bomb guard, EXIF, RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
ALLOWED_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream", ""}


EXIF_ORIENTATION = 0x0112


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


def decode_crop(data: bytes, *, name: str, content_type: str | None, limits: ImageLimits, size: tuple[int, int], decode: str = "cpu") -> torch.Tensor:
    """Validate and decode one crop to uint8 ``[3, H, W]`` (on the CPU) at the encoder's input ``size``.

    Raises a 4xx domain error naming ``name`` for empty, oversized, undecodable,
    disallowed or over-large (decompression-bomb) images. ``decode="cuda"``: a JPEG whose header
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
                if decode == "cuda" and img.format == "JPEG" and img.getexif().get(EXIF_ORIENTATION, 1) == 1 and cuda_decode_available():
                    return decode_jpeg_torch(data, size, device="cuda")
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
