"""Tests for the emulator's offline background removal (no Django, no network, no samples)."""

from __future__ import annotations

import io

import pytest

# The removal engine is the optional "emulator" extra; skip cleanly without it.
np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

from imagekit_bgremove.emulator.removal import (  # noqa: E402
    RemovalError,
    RemovalResult,
    compute_mask,
    remove_background,
)

W, H = 320, 240


def _subject_mask() -> np.ndarray:
    """A product-like silhouette: a body, a round knob and a thin antenna."""
    mask = np.zeros((H, W), np.uint8)
    cv2.rectangle(mask, (110, 70), (200, 190), 255, -1)
    cv2.circle(mask, (200, 75), 30, 255, -1)
    cv2.rectangle(mask, (140, 40), (148, 70), 255, -1)
    return mask > 0


def _paint_subject(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    stripes = np.where((np.arange(H) // 12) % 2 == 0, 0, 40)[:, None]
    body = np.stack(
        [np.full((H, W), 200) - stripes, np.full((H, W), 55) - stripes // 2, np.full((H, W), 50)],
        axis=-1,
    )
    out[mask] = body[mask]
    # A label the colour of a white backdrop, fully enclosed by the subject: it must stay.
    label = np.zeros_like(mask)
    label[120:150, 125:185] = True
    out[label] = 242
    return out


def _noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    return rng.normal(0, sigma, (H, W, 3))


def _white_scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = _subject_mask()
    y = np.linspace(0, 1, H)[:, None, None]
    x = np.linspace(0, 1, W)[None, :, None]
    bg = 225 + 20 * y + 8 * x + np.zeros((1, 1, 3))
    shadow = np.zeros((H, W), np.float32)
    shadow[14:, 10:] = mask[:-14, :-10]
    shadow = cv2.GaussianBlur(shadow, (0, 0), 6)
    scene = bg * (1 - 0.25 * shadow[..., None])
    scene = _paint_subject(scene, mask)
    scene = cv2.GaussianBlur(scene.astype(np.float32), (0, 0), 0.6) + _noise(rng, 3)
    return np.clip(scene, 0, 255).astype(np.uint8), mask


def _busy_scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    mask = _subject_mask()
    blocks = rng.integers(0, 256, (H // 16 + 1, W // 16 + 1, 3)).astype(np.float32)
    bg = cv2.resize(blocks, (W, H), interpolation=cv2.INTER_NEAREST)
    bg = cv2.GaussianBlur(bg, (0, 0), 3)
    scene = _paint_subject(bg, mask)
    scene = scene + _noise(rng, 4)
    return np.clip(scene, 0, 255).astype(np.uint8), mask


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _decode(result: RemovalResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.data)))


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted & truth).sum() / (predicted | truth).sum())


@pytest.fixture(scope="module")
def white_scene() -> tuple[np.ndarray, np.ndarray]:
    return _white_scene()


@pytest.fixture(scope="module")
def busy_scene() -> tuple[np.ndarray, np.ndarray]:
    return _busy_scene()


@pytest.fixture(scope="module")
def white_mask(white_scene) -> tuple[np.ndarray, str]:
    return compute_mask(white_scene[0])


@pytest.fixture(scope="module")
def busy_mask(busy_scene) -> tuple[np.ndarray, str]:
    return compute_mask(busy_scene[0])


# ------------------------------------------------------------------ segmentation


def test_plain_background_uses_border_method(white_scene, white_mask):
    _, truth = white_scene
    alpha, method = white_mask
    assert method == "border"
    assert alpha.dtype == np.float32
    assert alpha.shape == truth.shape
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert _iou(alpha >= 0.5, truth) >= 0.9


def test_enclosed_background_coloured_label_is_kept(white_mask):
    alpha, _ = white_mask
    assert alpha[125:145, 130:180].min() > 0.9


def test_drop_shadow_is_background(white_scene, white_mask):
    _, truth = white_scene
    alpha, _ = white_mask
    below_right = np.zeros_like(truth)
    below_right[14:, 10:] = truth[:-14, :-10]
    shadow_only = below_right & ~cv2.dilate(truth.view(np.uint8), np.ones((5, 5))).view(bool)
    assert (alpha[shadow_only] < 0.5).mean() > 0.95


def test_grey_subject_on_white_is_not_taken_for_a_shadow():
    rng = np.random.default_rng(3)
    truth = np.zeros((H, W), bool)
    truth[60:180, 100:220] = True
    scene = np.full((H, W, 3), 235.0)
    scene[truth] = 175.0  # as dark as a shadow, but with crisp edges
    scene = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
    alpha, method = compute_mask(scene)
    assert method == "border"
    assert _iou(alpha >= 0.5, truth) >= 0.9


def test_subject_crossing_the_frame_on_a_backdrop():
    rng = np.random.default_rng(4)
    truth = np.zeros((H, W), np.uint8)
    cv2.ellipse(truth, (160, 95), (40, 50), 0, 0, 360, 255, -1)
    cv2.ellipse(truth, (160, 280), (130, 130), 0, 0, 360, 255, -1)  # shoulders off-frame
    truth = truth > 0
    y = np.linspace(0, 1, H)[:, None, None]
    scene = np.concatenate([60 + 40 * y, 90 + 30 * y, 130 + 30 * y], axis=2) + np.zeros((H, W, 3))
    scene[truth] = (220, 170, 140)
    scene[truth & (np.arange(H)[:, None] > 165)] = (40, 40, 60)
    scene = np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255).astype(np.uint8)
    alpha, _ = compute_mask(scene)
    assert _iou(alpha >= 0.5, truth) >= 0.9


def test_busy_background_uses_grabcut(busy_scene, busy_mask):
    _, truth = busy_scene
    alpha, method = busy_mask
    assert method == "grabcut"
    assert _iou(alpha >= 0.5, truth) >= 0.9


def test_segmentation_is_deterministic(busy_scene, busy_mask):
    again, _ = compute_mask(busy_scene[0])
    assert np.array_equal(busy_mask[0], again)


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 50, 3), (20, 20, 3)])
def test_tiny_images_do_not_crash(shape):
    alpha, _ = compute_mask(np.full(shape, 128, np.uint8))
    assert alpha.shape == shape[:2]


def test_compute_mask_rejects_wrong_array():
    with pytest.raises(ValueError):
        compute_mask(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------ output


def test_default_output_is_rgba_png_with_soft_edges(white_scene):
    image, truth = white_scene
    result = remove_background(_png(image))
    assert result.mime == "image/png"
    assert result.data.startswith(b"\x89PNG")
    assert (result.width, result.height) == (W, H)
    assert result.has_alpha
    assert result.method == "border"
    rgba = _decode(result)
    assert rgba.shape == (H, W, 4)
    alpha = rgba[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any()
    assert _iou(alpha >= 128, truth) >= 0.9


def test_hard_alpha_without_semitransparency(white_scene):
    image, _ = white_scene
    alpha = _decode(remove_background(_png(image), semitransparency=False))[..., 3]
    assert set(np.unique(alpha).tolist()) <= {0, 255}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("81d4fa", (0x81, 0xD4, 0xFA)), ("0f0", (0, 255, 0)), ("green", (0, 128, 0))],
)
def test_bg_color_is_opaque_composite(white_scene, value, expected):
    image, truth = white_scene
    result = remove_background(_png(image), bg_color=value)
    assert not result.has_alpha
    rgb = _decode(result)
    assert rgb.shape == (H, W, 3)
    far = ~cv2.dilate(truth.view(np.uint8), np.ones((31, 31))).view(bool)
    assert (rgb[far] == expected).all()
    inside = cv2.erode(truth.view(np.uint8), np.ones((9, 9))).view(bool)
    assert np.abs(rgb[inside].astype(int) - image[inside]).max() <= 1


def test_bg_color_with_alpha_keeps_alpha(white_scene):
    image, truth = white_scene
    result = remove_background(_png(image), bg_color="ff000080")
    assert result.has_alpha
    rgba = _decode(result)
    far = ~cv2.dilate(truth.view(np.uint8), np.ones((31, 31))).view(bool)
    assert np.abs(rgba[far].astype(int) - (255, 0, 0, 128)).max() <= 1
    short = _decode(remove_background(_png(image), bg_color="ffff"))
    assert short.shape[2] == 3 and (short[far] == 255).all()


@pytest.mark.parametrize("value", ["12345", "zzzzzz", "not a colour", "#12", "nosuchcolour"])
def test_bad_bg_color(white_scene, value):
    image, _ = white_scene
    with pytest.raises(RemovalError, match="bg_color"):
        remove_background(_png(image), bg_color=value)


def test_background_image_is_cover_fitted_and_composited(white_scene):
    image, truth = white_scene
    # Twice as wide as the subject image: cover-fit scales by 0.5 and crops the sides.
    backdrop = np.zeros((2 * H, 4 * W, 3), np.uint8)
    backdrop[..., 2] = 200
    backdrop[:, : W // 2] = (0, 255, 0)  # cropped away by the centre crop
    result = remove_background(_png(image), background=_png(backdrop))
    assert not result.has_alpha
    rgb = _decode(result)
    far = ~cv2.dilate(truth.view(np.uint8), np.ones((31, 31))).view(bool)
    assert np.abs(rgb[far].astype(int) - (0, 0, 200)).max() <= 2


def test_background_must_be_an_image(white_scene):
    image, _ = white_scene
    with pytest.raises(RemovalError, match="background image is not a decodable image"):
        remove_background(_png(image), background=b"<html>nope</html>")


def test_bg_color_and_background_are_exclusive(white_scene):
    image, _ = white_scene
    with pytest.raises(RemovalError):
        remove_background(_png(image), bg_color="fff", background=_png(image))


def test_busy_background_end_to_end(busy_scene):
    image, truth = busy_scene
    result = remove_background(_png(image))
    assert result.method == "grabcut"
    assert _iou(_decode(result)[..., 3] >= 128, truth) >= 0.9


# ------------------------------------------------------------------ input handling


def test_exif_rotation_is_applied(white_scene):
    image, _ = white_scene
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=92, exif=exif)
    result = remove_background(buffer.getvalue())
    assert (result.width, result.height) == (H, W)
    assert _decode(result).shape[:2] == (W, H)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16"])
def test_input_modes(white_scene, mode):
    image, _ = white_scene
    im = Image.fromarray(image)
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    else:
        im = im.convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, "TIFF" if mode == "CMYK" else "PNG")
    result = remove_background(buffer.getvalue())
    assert (result.width, result.height) == (W, H)
    assert result.has_alpha


def test_existing_transparency_is_respected():
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = (30, 90, 200)
    rgba[60:180, 100:220, 3] = 255
    result = remove_background(_png(rgba))
    alpha = _decode(result)[..., 3]
    assert alpha[:50].max() == 0
    assert alpha[80:160, 120:200].min() == 255


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is plain text and not an image at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        b"\xff\xd8\xff\xe0" + b"garbage" * 20,
    ],
)
def test_undecodable_bytes(data):
    with pytest.raises(RemovalError):
        remove_background(data)


def test_truncated_png(white_scene):
    image, _ = white_scene
    data = _png(image)
    with pytest.raises(RemovalError, match="not a decodable image"):
        remove_background(data[: len(data) // 2])


def test_non_bytes_input():
    with pytest.raises(RemovalError):
        remove_background("not bytes")  # type: ignore[arg-type]


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares enormous dimensions but carries almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_declared_dimensions():
    with pytest.raises(RemovalError, match=r"too large: 9000x9000 exceeds 50 megapixels"):
        remove_background(_huge_png_header(9000, 9000))


def test_decompression_bomb_beyond_pillow_limit():
    with pytest.raises(RemovalError, match="too large"):
        remove_background(_huge_png_header(60000, 60000), max_pixels=10**10)


def test_max_pixels_is_configurable(white_scene):
    image, _ = white_scene
    with pytest.raises(RemovalError, match="too large: 320x240"):
        remove_background(_png(image), max_pixels=W * H - 1)
    with pytest.raises(RemovalError, match="background image too large"):
        remove_background(
            _png(image), background=_png(np.zeros((H, W + 1, 3), np.uint8)), max_pixels=W * H
        )
