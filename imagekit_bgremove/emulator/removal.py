"""Offline background removal for the emulator's ``remove-bg`` extension.

ImageKit sends the image to remove.bg, a neural model. The emulator must work offline and
without downloading weights, so it uses classical segmentation instead (``segmentation.py``:
a border-colour model for plain backgrounds, GrabCut for busy ones, ``grabcut.py``), or a
deployer's own ONNX model (``onnx_model.py``, the emulator's ``--segmentation-model``),
whose foreground map takes the same path to alpha and compositing. This module decodes the
input and composes the result (transparency, ``bg_color``, a background image).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageColor, ImageOps

from .config import SegmentationModelError
from .onnx_model import SegmentationModel
from .segmentation import compute_mask

__all__ = [
    "RemovalError",
    "RemovalResult",
    "SegmentationModel",
    "SegmentationModelError",
    "compute_mask",
    "remove_background",
]


class RemovalError(Exception):
    """The input cannot be processed: undecodable or oversized image, or bad options."""


@dataclass(frozen=True)
class RemovalResult:
    data: bytes
    mime: str
    width: int
    height: int
    has_alpha: bool
    method: str


# Formats ImageKit accepts and Pillow decodes in-process; EPS/PDF-style plugins would shell
# out to Ghostscript, which has no place in a request path fed with user uploads.
_SAFE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_NAME_RE = re.compile(r"[A-Za-z]+")

# Formats ImageKit accepts and Pillow decodes in-process; EPS/PDF-style plugins would shell
# out to Ghostscript, which has no place in a request path fed with user uploads.
_SAFE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


# --------------------------------------------------------------------------- decoding


@functools.cache
def _allowed_formats() -> tuple[str, ...]:
    Image.init()
    # Image.open raises KeyError for format ids whose plugin is not compiled in (AVIF).
    return tuple(fmt for fmt in _SAFE_FORMATS if fmt in Image.OPEN)


def _too_large(what: str, width: int, height: int, max_pixels: int) -> RemovalError:
    return RemovalError(
        f"{what} too large: {width}x{height} exceeds {max_pixels / 1e6:g} megapixels"
    )


def _open(data: bytes, max_pixels: int, what: str) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemovalError(f"{what} must be bytes, not {type(data).__name__}")
    if not data:
        raise RemovalError(f"{what} is empty")
    try:
        im = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError as exc:
        raise RemovalError(f"{what} too large: {exc}") from exc
    except Exception as exc:
        # Pillow's plugins signal malformed input with a zoo of exception types
        # (OSError, SyntaxError, struct.error, ValueError...); callers need exactly one.
        raise RemovalError(f"{what} is not a decodable image") from exc
    width, height = im.size
    # Checked on the header, before decoding, so a bomb never allocates its pixels.
    if width * height > max_pixels:
        raise _too_large(what, width, height, max_pixels)
    try:
        im.load()
    except Exception as exc:
        raise RemovalError(f"{what} is not a decodable image") from exc
    # A broken EXIF block should not sink an otherwise good image; keep it as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (RGB uint8, alpha uint8 or None when fully opaque)."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        # Pillow's convert("RGB") clips 16-bit/float data instead of rescaling it.
        grey = np.asarray(im, dtype=np.float32)
        peak = float(grey.max()) if grey.size else 0.0
        if peak > 255.0:
            grey = grey * (255.0 / 65535.0)
        elif 0.0 < peak <= 1.0:
            grey = grey * 255.0
        grey8 = np.clip(grey, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2)), None
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not transparent:
        return np.asarray(im.convert("RGB")), None
    rgba = np.asarray(im.convert("RGBA"))
    alpha = rgba[..., 3]
    if int(alpha.min()) == 255:
        return np.ascontiguousarray(rgba[..., :3]), None
    return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(alpha)


def _decode(
    data: bytes, max_pixels: int, what: str
) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    im = _open(data, max_pixels, what)
    try:
        rgb, alpha = _to_arrays(im)
    except Exception as exc:
        raise RemovalError(f"{what} has an unsupported pixel format ({im.mode})") from exc
    # Only an RGB profile still describes the pixels after our conversion to RGB.
    icc = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA", "P") else None
    return rgb, alpha, icc


def _flatten_for_segmentation(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    # Transparent pixels carry arbitrary colour (often black); paint them one flat colour
    # that is rare among the visible pixels so the border method sees a clean background.
    palette = np.array([[255, 255, 255], [0, 0, 0], [0, 255, 0], [255, 0, 255]], dtype=np.float32)
    visible = rgb[alpha > 127]
    if len(visible) > 20000:
        visible = visible[:: len(visible) // 20000]
    if len(visible):
        dist = np.linalg.norm(visible[None].astype(np.float32) - palette[:, None], axis=2)
        colour = palette[int(np.argmin((dist < 80).mean(axis=1)))]
    else:
        colour = palette[0]
    a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
    return (rgb * a + colour * (1.0 - a) + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- output


def _parse_colour(value: str) -> tuple[int, int, int, int]:
    if not isinstance(value, str):
        raise RemovalError(f"invalid bg_color {value!r}: expected a string")
    text = value.strip().removeprefix("#")
    if _HEX_RE.fullmatch(text) and len(text) in (3, 4, 6, 8):
        if len(text) in (3, 4):
            text = "".join(ch * 2 for ch in text)
        if len(text) == 6:
            text += "ff"
        r, g, b, a = (int(text[i : i + 2], 16) for i in range(0, 8, 2))
        return r, g, b, a
    if _NAME_RE.fullmatch(text):
        try:
            r, g, b = ImageColor.getrgb(text.lower())[:3]
        except ValueError:
            pass
        else:
            return r, g, b, 255
    raise RemovalError(
        f"invalid bg_color {value!r}: expected hex RGB/RGBA (3, 4, 6 or 8 digits) "
        "or a CSS colour name"
    )


def _load_backdrop(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    rgb, alpha, _ = _decode(data, max_pixels, "background image")
    if alpha is not None:
        # The backdrop is the bottom layer of an opaque result; flatten its own
        # transparency onto white like most viewers would show it.
        a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
        rgb = (rgb * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
    fitted = ImageOps.fit(Image.fromarray(rgb), (width, height), Image.Resampling.LANCZOS)
    return np.asarray(fitted)


def _row_chunks(h: int, w: int, margin: int) -> Iterator[tuple[int, int, int, int]]:
    # Float intermediates for a 50 MP image would take gigabytes; bands of ~2 MP keep the
    # peak small, with a margin so the blur in _decontaminate sees its full support.
    rows = max(16, 2_000_000 // max(w, 1))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        yield y0, y1, max(0, y0 - margin), min(h, y1 + margin)


def _decontaminate(rgb: np.ndarray, alpha8: np.ndarray) -> np.ndarray:
    """Colour of partially transparent edge pixels borrowed from the nearby solid subject.

    Edge pixels mix subject and old background; left alone they draw a fringe of the old
    background around the subject on its new one.
    """
    out = rgb.astype(np.float32)
    partial = (alpha8 > 0) & (alpha8 < 255)
    if not partial.any():
        return out
    solid = (alpha8 == 255).astype(np.float32)
    num = cv2.GaussianBlur(out * solid[..., None], (0, 0), 2.0)
    den = cv2.GaussianBlur(solid, (0, 0), 2.0)
    usable = partial & (den > 1e-3)
    out[usable] = num[usable] / den[usable][:, None]
    return out


def _compose(
    rgb: np.ndarray,
    alpha8: np.ndarray,
    colour: tuple[int, int, int, int] | None,
    backdrop: np.ndarray | None,
) -> np.ndarray:
    h, w = alpha8.shape
    opaque = backdrop is not None or (colour is not None and colour[3] == 255)
    out = np.empty((h, w, 3 if opaque else 4), dtype=np.uint8)
    margin = 8
    for y0, y1, m0, m1 in _row_chunks(h, w, margin):
        fg = _decontaminate(rgb[m0:m1], alpha8[m0:m1])[y0 - m0 : y1 - m0]
        a = alpha8[y0:y1].astype(np.float32)[..., None] * (1.0 / 255.0)
        # The subject, in premultiplied form.
        premul = fg * a
        layer = a
        if backdrop is not None:
            pixels = premul + backdrop[y0:y1].astype(np.float32) * (1.0 - layer)
            out[y0:y1] = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
            continue
        if colour is not None:
            ca = colour[3] / 255.0
            premul = premul + np.array(colour[:3], np.float32) * (ca * (1.0 - layer))
            layer = layer + ca * (1.0 - layer)
        if opaque:
            out[y0:y1] = np.clip(premul + 0.5, 0, 255).astype(np.uint8)
            continue
        straight = np.divide(premul, layer, out=np.zeros_like(premul), where=layer > 0)
        out[y0:y1, :, :3] = np.clip(straight + 0.5, 0, 255).astype(np.uint8)
        out[y0:y1, :, 3] = np.clip(layer[..., 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def remove_background(
    data: bytes,
    *,
    semitransparency: bool = True,
    bg_color: str | None = None,
    background: bytes | None = None,
    max_pixels: int = 50_000_000,
    segmentation_model: SegmentationModel | None = None,
) -> RemovalResult:
    """Cut the subject out of an encoded image; see the module docstring for the method.

    Returns a PNG: RGBA with the background transparent, or RGB when composited onto an
    opaque ``bg_color``/``background``. ``semitransparency=False`` makes the subject's
    edges hard. No shadow: remove.bg adds one to photos of cars only, and this method cannot
    tell a car, so it answers as remove.bg does for every other photo. ``bg_color`` is hex RGB/RGBA
    (3, 4, 6 or 8 digits, ``#`` optional) or a CSS colour name. A ``segmentation_model``
    replaces the built-in methods for the foreground mask. Raises RemovalError for any
    unusable input.
    """
    if bg_color is not None and background is not None:
        raise RemovalError("bg_color and background are mutually exclusive")
    # Validate cheap options before spending seconds on segmentation.
    colour = _parse_colour(bg_color) if bg_color is not None else None
    rgb, src_alpha, icc = _decode(data, max_pixels, "image")
    h, w = rgb.shape[:2]
    backdrop = _load_backdrop(background, w, h, max_pixels) if background is not None else None

    seg_input = rgb if src_alpha is None else _flatten_for_segmentation(rgb, src_alpha)
    if segmentation_model is not None:
        alpha, method = segmentation_model.predict(seg_input), segmentation_model.method
    else:
        alpha, method = compute_mask(seg_input)
    if src_alpha is not None:
        # Already-transparent areas stay transparent whatever the segmentation says.
        alpha *= src_alpha.astype(np.float32) * (1.0 / 255.0)
    if semitransparency:
        alpha8 = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        alpha8 = np.where(alpha >= 0.5, np.uint8(255), np.uint8(0))
    del alpha

    pixels = _compose(rgb, alpha8, colour, backdrop)
    out_im = Image.fromarray(pixels)

    buffer = io.BytesIO()
    # zlib level 6 saves bytes but takes seconds on very large frames: those get level 3.
    save_args: dict[str, object] = {"compress_level": 6 if h * w <= 4_000_000 else 3}
    if icc:
        save_args["icc_profile"] = icc
    out_im.save(buffer, format="PNG", **save_args)
    return RemovalResult(
        data=buffer.getvalue(),
        mime="image/png",
        width=w,
        height=h,
        has_alpha=out_im.mode == "RGBA",
        method=method,
    )
