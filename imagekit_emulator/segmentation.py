"""Classical foreground segmentation for the emulator's remove-bg (ImageKit itself sends the
image to remove.bg, a neural model; the emulator must work offline, without weights).

* ``border``: when the image border is close to a smooth colour field (studio white, a
  gradient, a plain wall), the background is modelled from the border; pixels that match
  it (soft cast shadows included) and connect to the frame are background, everything
  else is subject, including background-coloured areas the subject encloses.
* ``grabcut``: for busy backgrounds, OpenCV's GrabCut (see ``grabcut.py``).

The border method estimates fractional coverage along the outline from local subject and
background colours; GrabCut's coarser mask is snapped to the full-resolution image edges
with a guided filter (``_refine``). Both give the soft edge band used for
``semitransparency``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import cv2
import numpy as np

# Working resolutions. The border method is cheap enough to run at the long side ImageKit
# users typically upload; GrabCut's max-flow cost grows quickly with pixels, so it runs on
# pixel budgets (see grabcut.grabcut_mask); the guided filter then recovers full-size detail.
_BORDER_SIDE = 1024
_REFINE_SIDE = 2048
_MIN_SIDE = 8

# Fraction of border pixels that must fit the smooth background model for the border
# method to be trusted. A head-and-shoulders shot on a backdrop loses a third of the border
# to the subject; busy scenes score far lower (the samples: 0.2-0.3 photos, 0.005 clutter).
_UNIFORM_FRACTION = 0.6
# Border residual (0..255 colour units, after light denoising) still counted as "fits".
_UNIFORM_TOL = 20.0
# Minimum colour distance from the background model that marks a pixel as subject.
_MIN_THRESHOLD = 22.0
# A cast shadow keeps the background's hue and may darken it to this fraction; darker
# than that and we would rather keep the pixel than lose a dark subject.
_SHADOW_MIN = 0.55
# Gradient (colour units per pixel, after denoising) above which an edge is too crisp to
# be the rim of a soft shadow; noise on the samples stays under 6.
_MIN_EDGE = 8.0
# Share of a blob that must survive the shadow allowance for the rest to count as shadow.
_SWALLOWED = 0.5


# --------------------------------------------------------------------------- helpers


def _resize_long_side(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _border_strip(h: int, w: int, width: int) -> np.ndarray:
    strip = np.zeros((h, w), dtype=bool)
    strip[:width] = strip[-width:] = True
    strip[:, :width] = strip[:, -width:] = True
    return strip


def _poly_terms(xs: np.ndarray, ys: np.ndarray, w: int, h: int) -> np.ndarray:
    # Quadratic in normalised coordinates: enough for linear and radial-ish gradients and
    # vignetting; finer variation is left to _local_background.
    x = xs.astype(np.float32) * (2.0 / max(w - 1, 1)) - 1.0
    y = ys.astype(np.float32) * (2.0 / max(h - 1, 1)) - 1.0
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _poly_image(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return _poly_terms(xs, ys, w, h) @ coef.astype(np.float32)


def _robust_poly_fit(
    terms: np.ndarray, values: np.ndarray, rounds: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares that ignores the worst residuals, so a subject touching the frame
    does not drag the background model towards its colours."""
    keep = np.ones(len(values), dtype=bool)
    coef = np.zeros((terms.shape[1], values.shape[1]), dtype=np.float64)
    residual = np.zeros(len(values), dtype=np.float32)
    for round_ in range(rounds):
        if keep.sum() < terms.shape[1] * 3:
            break
        # The first rounds fit a plane only: a quadratic is flexible enough to bend
        # around a subject that covers a long stretch of one side (a portrait's
        # shoulders) and call it background; a plane can't, so it exposes the outliers.
        used = terms[:, :3] if round_ < 2 and rounds > 2 else terms
        fit = np.linalg.lstsq(used[keep], values[keep], rcond=None)[0]
        coef = np.zeros((terms.shape[1], values.shape[1]), dtype=np.float64)
        coef[: used.shape[1]] = fit
        residual = np.linalg.norm(values - terms @ coef, axis=1)
        median = float(np.median(residual[keep]))
        # The first fit is skewed by any outliers, so its residual scale is inflated too;
        # restart from its better half, which a minority of outliers can't own.
        limit = median if round_ == 0 else max(3.0 * 1.4826 * median, 6.0)
        keep = residual <= limit
    return coef, residual


def _sample(mask: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    if len(ys) > limit:
        step = len(ys) // limit + 1
        ys, xs = ys[::step], xs[::step]
    return ys, xs


def _fill_from_border(candidate: np.ndarray) -> np.ndarray:
    """Keep only background candidates connected to the image border.

    Subject regions that happen to match the background colour (a white label on a
    product shot on white) stay subject unless they leak out to the frame.
    """
    count, labels = cv2.connectedComponents(candidate.view(np.uint8), connectivity=4)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    lut = np.zeros(count, dtype=bool)
    lut[np.unique(edge)] = True
    lut[0] = False
    return lut[labels]


def _drop_small_components(fg: np.ndarray, min_area: int, rel_to_largest: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    if count <= 1:
        return fg
    areas = stats[1:, cv2.CC_STAT_AREA]
    limit = max(min_area, rel_to_largest * float(areas.max()))
    lut = np.zeros(count, dtype=bool)
    lut[1:] = areas >= limit
    return lut[labels]


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


# --------------------------------------------------------------------------- border method


@dataclass
class _BorderModel:
    smooth: np.ndarray  # denoised float32 image the model was fitted on
    coef: np.ndarray  # quadratic colour field fitted to the border
    uniformity: float  # share of border pixels the field explains
    noise: float  # robust residual scale on the border


def _fit_border_model(work: np.ndarray) -> _BorderModel:
    h, w = work.shape[:2]
    smooth = cv2.GaussianBlur(work.astype(np.float32), (0, 0), 1.2)
    strip = _border_strip(h, w, max(2, round(0.02 * min(h, w))))
    ys, xs = _sample(strip, 20000)
    coef, residual = _robust_poly_fit(_poly_terms(xs, ys, w, h), smooth[ys, xs])
    fits = residual < _UNIFORM_TOL
    noise = 1.4826 * float(np.median(residual[fits])) if fits.any() else float("inf")
    return _BorderModel(smooth, coef, float(fits.mean()), noise)


def _background_distance(smooth: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shadow-tolerant, plain) colour distance of each pixel from the background field."""
    # Split the departure from the background colour b into the part off the black-to-b
    # line (hue/chroma change) and the part along it (brightness). A cast shadow only
    # moves along the line towards black, so the tolerant distance lets darkening down to
    # _SHADOW_MIN go free.
    bb = np.einsum("ijk,ijk->ij", bg, bg) + 1.0
    s = np.einsum("ijk,ijk->ij", smooth, bg) / bb
    off_line = smooth - s[..., None] * bg
    perp2 = np.einsum("ijk,ijk->ij", off_line, off_line)
    along = np.where(s > 1.0, s - 1.0, np.maximum(_SHADOW_MIN - s, 0.0))
    tolerant = np.sqrt(perp2 + along * along * bb)
    plain = np.sqrt(perp2 + (s - 1.0) ** 2 * bb)
    return tolerant, plain


def _sharp_edges(smooth: np.ndarray, limit: float) -> np.ndarray:
    """Pixels on a crisp colour edge, widened by one pixel so the ring has no gaps."""
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    # Sobel's 3x3 kernel scales the derivative by 8.
    magnitude2 = np.einsum("ijk,ijk->ij", gx, gx) + np.einsum("ijk,ijk->ij", gy, gy)
    sharp = (magnitude2 > (8.0 * limit) ** 2).view(np.uint8)
    return cv2.dilate(sharp, np.ones((3, 3), np.uint8)).view(bool)


def _background_candidates(
    smooth: np.ndarray, field: np.ndarray, threshold: float, sharp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(lenient, strict) background candidates: with and without the shadow allowance."""
    tolerant, plain = _background_distance(smooth, field)
    tolerated = tolerant < threshold
    # Shadow tolerance alone would also swallow a grey subject on white. Shadows are soft,
    # so the tolerance is withheld at crisp edges: a grey subject is ringed by them and
    # the flood fill from the border can't get in, while a penumbra lets it through. The
    # crisp edge between a coloured subject and its own shadow doesn't count: it would
    # fatten the subject by a rim of shadow.
    near_colour = cv2.dilate((~tolerated).view(np.uint8), _disk(3)).view(bool)
    strict = plain < threshold
    return strict | (tolerated & ~(sharp & ~near_colour)), strict


def _segment_background(
    smooth: np.ndarray, field: np.ndarray, threshold: float, sharp: np.ndarray
) -> np.ndarray:
    lenient, strict = _background_candidates(smooth, field, threshold, sharp)
    bg = _fill_from_border(lenient)
    bg_strict = _fill_from_border(strict)
    # Where the shadow allowance took most of a blob that stands out from the background
    # (a grey subject whose own shadow is about as dark leads the fill straight in), it
    # ate a subject, not a shadow: keep that blob whole. Shadows are a fraction of the
    # subject casting them, so a real subject keeps most of its blob.
    count, labels = cv2.connectedComponents((~bg_strict).view(np.uint8), connectivity=8)
    blob_area = np.bincount(labels.ravel(), minlength=count)
    kept_area = np.bincount(labels.ravel(), weights=(~bg).ravel(), minlength=count)
    swallowed = kept_area < _SWALLOWED * blob_area
    swallowed[0] = False
    return bg & ~swallowed[labels]


def _local_background(smooth: np.ndarray, known_bg: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Background colour everywhere, interpolated from nearby background pixels.

    Normalised convolution follows gradients the quadratic cannot (several light
    sources, an uneven backdrop) and falls back to the quadratic prior where no
    background pixel is near, i.e. deep inside the subject.
    """
    h, w = known_bg.shape
    factor = max(1, round(max(h, w) / 512))
    small_size = (max(1, w // factor), max(1, h // factor))
    weight = cv2.resize(known_bg.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    values = cv2.resize(smooth, small_size, interpolation=cv2.INTER_AREA)
    prior_small = cv2.resize(prior, small_size, interpolation=cv2.INTER_AREA)
    sigma = 0.02 * max(small_size)
    eps = 1e-3
    num = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma) + eps * prior_small
    den = cv2.GaussianBlur(weight, (0, 0), sigma) + eps
    field = num / den[..., None]
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)


def _border_mask(work: np.ndarray, model: _BorderModel) -> np.ndarray | None:
    h, w = work.shape[:2]
    smooth = model.smooth
    threshold = max(_MIN_THRESHOLD, 5.0 * model.noise)

    sharp = _sharp_edges(smooth, max(_MIN_EDGE, 2.5 * model.noise))

    prior = _poly_image(model.coef, h, w)
    bg = _segment_background(smooth, prior, threshold, sharp)

    # Second pass with a background estimate learnt from everything already known to be
    # background, minus a margin so anti-aliased subject edges don't tint it.
    known = cv2.erode(bg.view(np.uint8), _disk(3)).view(bool)
    if known.sum() > 100:
        ys, xs = _sample(known, 40000)
        coef, _ = _robust_poly_fit(_poly_terms(xs, ys, w, h), smooth[ys, xs], rounds=3)
        prior = _poly_image(coef, h, w)
        field = _local_background(smooth, known, prior)
        bg = _segment_background(smooth, field, threshold, sharp)

    fg = _drop_small_components(~bg, max(16, int(2e-4 * h * w)), 0.0)
    share = float(fg.mean())
    if share < 0.002 or share > 0.98:
        # Nothing (or everything) stood out from the border colour: the premise of the
        # method failed, let GrabCut have a go instead.
        return None
    return _edge_alpha(work, fg)


def _edge_alpha(work: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Fractional coverage along the outline, from local subject and background colours.

    An edge pixel is a mix p = a*f + (1-a)*b of the nearby solid subject colour f and
    background colour b, so a is the projection of p-b onto f-b. This puts the 0.5
    crossing on the true outline; the low threshold that decided connectivity would
    otherwise fatten the subject by the width of its anti-aliasing.
    """
    alpha = fg.astype(np.float32)
    fg8 = fg.view(np.uint8)
    band = (cv2.dilate(fg8, _disk(2)) != cv2.erode(fg8, _disk(2))).view(bool)
    if not band.any():
        return alpha
    pixels = work.astype(np.float32)

    def local_mean(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = region.astype(np.float32)
        num = cv2.GaussianBlur(pixels * weight[..., None], (0, 0), 2.5)
        den = cv2.GaussianBlur(weight, (0, 0), 2.5)
        return num[band], den[band]

    f_num, f_den = local_mean(cv2.erode(fg8, _disk(3)).view(bool))
    b_num, b_den = local_mean(~cv2.dilate(fg8, _disk(3)).view(bool))
    # Thin parts (no solid core within reach) and low-contrast edges keep the hard label.
    usable = (f_den > 0.02) & (b_den > 0.02)
    f = f_num / np.maximum(f_den, 1e-6)[:, None]
    b = b_num / np.maximum(b_den, 1e-6)[:, None]
    span = f - b
    span2 = np.einsum("ij,ij->i", span, span)
    usable &= span2 > 30.0**2
    a = np.einsum("ij,ij->i", pixels[band] - b, span) / np.maximum(span2, 1e-6)
    values = alpha[band]
    values[usable] = np.clip(a[usable], 0.0, 1.0)
    alpha[band] = values
    return alpha


# --------------------------------------------------------------------------- refinement


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter (He et al.): edges of ``src`` move onto edges of ``guide``."""
    mean_i = _box(guide, radius)
    mean_p = _box(src, radius)
    cov_ip = _box(guide * src[..., None], radius) - mean_i * mean_p[..., None]
    r, g, b = guide[..., 0], guide[..., 1], guide[..., 2]
    prods = _box(np.stack([r * r, r * g, r * b, g * g, g * b, b * b], axis=-1), radius)
    mr, mg, mb = mean_i[..., 0], mean_i[..., 1], mean_i[..., 2]
    vrr = prods[..., 0] - mr * mr + eps
    vrg = prods[..., 1] - mr * mg
    vrb = prods[..., 2] - mr * mb
    vgg = prods[..., 3] - mg * mg + eps
    vgb = prods[..., 4] - mg * mb
    vbb = prods[..., 5] - mb * mb + eps
    # Closed-form inverse of the symmetric 3x3 covariance, vectorised over pixels.
    irr = vgg * vbb - vgb * vgb
    irg = vgb * vrb - vrg * vbb
    irb = vrg * vgb - vgg * vrb
    igg = vrr * vbb - vrb * vrb
    igb = vrb * vrg - vrr * vgb
    ibb = vrr * vgg - vrg * vrg
    det = vrr * irr + vrg * irg + vrb * irb
    cr, cg, cb = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = (
        np.stack(
            [
                irr * cr + irg * cg + irb * cb,
                irg * cr + igg * cg + igb * cb,
                irb * cr + igb * cg + ibb * cb,
            ],
            axis=-1,
        )
        / det[..., None]
    )
    b_coef = mean_p - np.einsum("ijk,ijk->ij", a, mean_i)
    return np.einsum("ijk,ijk->ij", _box(a, radius), guide) + _box(b_coef, radius)


def _refine(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    guide8 = _resize_long_side(image, _REFINE_SIDE)
    gh, gw = guide8.shape[:2]
    upscale = max(gh, gw) / max(mask.shape)
    coarse = cv2.resize(mask.astype(np.float32), (gw, gh), interpolation=cv2.INTER_LINEAR)
    # The radius must cover the uncertainty of the coarse mask (about one coarse pixel)
    # plus the anti-aliased ramp of a real edge.
    radius = max(2, round(2 * upscale))
    soft = _guided_filter(guide8.astype(np.float32) * (1.0 / 255.0), coarse, radius, 1e-3)
    hard = soft >= 0.5
    # Soft values far from the boundary are filter ripple, not translucency.
    near = cv2.dilate(hard.view(np.uint8), _disk(radius)) != cv2.erode(
        hard.view(np.uint8), _disk(radius)
    )
    alpha = np.where(near, np.clip(soft, 0.0, 1.0), hard.astype(np.float32))
    if (gh, gw) != (h, w):
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    return alpha.astype(np.float32, copy=False)


@functools.cache
def _limit_threads() -> None:
    # OpenCV sizes its pool from the host's cores, which oversubscribes a process pinned
    # to fewer CPUs (containers, taskset). Parallel filters do pay off on large images
    # (~15% at 12 MP on two cores), so cap the pool rather than serialise it; GrabCut
    # itself is single-threaded either way.
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform (macOS, Windows)
        available = os.cpu_count() or 1
    if cv2.getNumThreads() > available:
        cv2.setNumThreads(available)


def compute_mask(image: np.ndarray) -> tuple[np.ndarray, str]:
    """RGB uint8 HxWx3 -> (float32 alpha mask 0..1 HxW, method name)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < _MIN_SIDE:
        # Too small to tell a border from a subject; keeping everything beats guessing.
        return np.ones((h, w), dtype=np.float32), "border"
    _limit_threads()
    image = np.ascontiguousarray(image)
    work = _resize_long_side(image, _BORDER_SIDE)
    model = _fit_border_model(work)
    mask = _border_mask(work, model) if model.uniformity >= _UNIFORM_FRACTION else None
    if mask is not None:
        # Already soft and edge-accurate at full size; only a reduced copy needs refining.
        return (mask if work is image else _refine(image, mask)), "border"
    from .grabcut import grabcut_mask

    return _refine(image, grabcut_mask(image)), "grabcut"
