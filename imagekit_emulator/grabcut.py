"""remove-bg's route for busy backgrounds: OpenCV's GrabCut, made to cope with subjects that
touch the image border (a portrait cut at the bottom, a cat filling the frame, a cropped
product).

Plain GrabCut is told that the whole image border is background. When the subject runs
off the frame, that border carries the subject's own colours, which GrabCut then learns as
background and cuts out of the middle too (the first version lost the astronaut's neck and
helmet, detaching her head, and cut the cat's ears off). Two steps fix most of that:

1. Only the parts of the border that look like background are forced to background. A
   first, plain GrabCut finds the core of the subject; the colours (Lab bins) it holds at
   least half as much as the frame does are the subject's, so border pixels of those
   colours only start as "probably background" and GrabCut decides. The bottom edge needs
   stronger evidence to be background: subjects stand on it far more often than they hang
   from the top.
2. Parts of the subject that the colour model still split apart (a head over a dark
   collar whose colour also occurs in the background) are joined again: pixels between
   two parts that differ from the background right next to them become subject.

GrabCut runs coarse first (the subject), then on a finer image only in a band around the
coarse outline; ``segmentation._refine`` then snaps the mask to full-resolution edges.
"""

from __future__ import annotations

import cv2
import numpy as np

from .segmentation import _border_strip, _disk, _drop_small_components

_GRABCUT_ITERATIONS = 5
_GRABCUT_FINE_ITERATIONS = 2
_GRABCUT_SETTLED = 1e-3  # share of pixels changing label per round
_GRABCUT_COARSE_PIXELS = 256 * 192
_GRABCUT_FINE_PIXELS = 640 * 480
_RNG_SEED = 20240611

# Colour bins per Lab axis used to tell the subject's colours from the background's.
_BINS = 8
# A border cluster is background when its share of the (centre-weighted) image is below
# this fraction of its share of the frame; on the bottom edge, a quarter of it.
_BACKGROUND_RATIO = 0.5
_BOTTOM_FACTOR = 0.25
# Joining split parts: a part at most sqrt(area) away from the main one, at least this
# share of it; gap pixels this far (Lab units) from every nearby background colour join.
_JOIN_MIN_SHARE = 0.05
_JOIN_COLOUR_DISTANCE = 40.0


def _resize_pixels(image: np.ndarray, budget: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = (budget / (h * w)) ** 0.5
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def _run_grabcut(image: np.ndarray, labels: np.ndarray, max_iterations: int) -> np.ndarray:
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models with k-means on OpenCV's thread-local RNG, whose
    # state carries over between calls; reseed so equal inputs give equal masks.
    cv2.setRNGSeed(_RNG_SEED)
    cv2.grabCut(image, labels, None, bgd_model, fgd_model, 1, cv2.GC_INIT_WITH_MASK)
    fg = (labels & 1).view(bool)
    for _ in range(max_iterations - 1):
        # Stop once the labelling has settled: later rounds cost as much as earlier ones
        # but move almost nothing. Depends only on the data, so stays deterministic.
        previous = fg.copy()
        cv2.grabCut(image, labels, None, bgd_model, fgd_model, 1, cv2.GC_EVAL)
        fg = (labels & 1).view(bool)
        if np.count_nonzero(fg != previous) < _GRABCUT_SETTLED * fg.size:
            break
    return fg


def _kmeans(samples: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    _, labels, centres = cv2.kmeans(
        samples.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS
    )
    return labels.ravel(), centres


def _frame_labels(image: np.ndarray, margin: int) -> np.ndarray:
    """GrabCut's starting labels: the frame is background only where its colours are."""
    h, w = image.shape[:2]
    strip = _border_strip(h, w, margin)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.int32)
    # Colour bins rather than k-means: deterministic, and stable under small changes.
    bins = (lab * _BINS) // 256
    clusters = (bins[..., 0] * _BINS + bins[..., 1]) * _BINS + bins[..., 2]
    count = _BINS**3
    # What plain GrabCut (the whole frame as background) keeps is surely subject: its
    # colours on the frame are the subject running off the image.
    plain = np.full((h, w), cv2.GC_PR_FGD, dtype=np.uint8)
    plain[strip] = cv2.GC_BGD
    core = _run_grabcut(image, plain, _GRABCUT_ITERATIONS)
    if not core.any():
        core = ~strip
    inside = np.bincount(clusters[core], minlength=count).astype(np.float64)
    inside /= inside.sum()
    frame = np.bincount(clusters[strip], minlength=count) / strip.sum()
    ratio = (inside / (frame + 1e-3))[clusters]
    bottom = np.zeros((h, w), dtype=bool)
    bottom[-margin:] = True
    background = strip & ~bottom & (ratio < _BACKGROUND_RATIO)
    background |= bottom & (ratio < _BACKGROUND_RATIO * _BOTTOM_FACTOR)
    labels = np.full((h, w), cv2.GC_PR_FGD, dtype=np.uint8)
    labels[strip] = cv2.GC_PR_BGD
    labels[background] = cv2.GC_BGD
    if not background.any():  # nothing on the frame looks like background: plain GrabCut
        labels[strip] = cv2.GC_BGD
    return labels


def _join_parts(image: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Join parts of the subject that the colour model split apart (see the module doc)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    if count <= 2:
        return fg
    h, w = fg.shape
    areas = stats[:, cv2.CC_STAT_AREA]
    order = np.argsort(areas[1:])[::-1] + 1
    main = labels == order[0]
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    out = fg.copy()
    radius = max(3, round(0.02 * max(h, w)))
    for index in order[1:]:
        if areas[index] < _JOIN_MIN_SHARE * areas[order[0]]:
            break
        part = labels == index
        to_main = cv2.distanceTransform((~main).view(np.uint8), cv2.DIST_L2, 3)
        gap = float(to_main[part].min())
        if gap > np.sqrt(areas[index]):
            continue  # too far apart to be one subject
        to_part = cv2.distanceTransform((~part).view(np.uint8), cv2.DIST_L2, 3)
        reach = 1.5 * gap + 2
        between = ~out & (to_main <= reach) & (to_part <= reach)
        if not between.any():
            continue
        around = cv2.dilate(between.view(np.uint8), _disk(radius)).view(bool) & ~out & ~between
        if around.sum() < 20:
            continue
        samples = lab[around][:: max(1, int(around.sum()) // 4000)]
        _, centres = _kmeans(samples, min(6, len(samples)), 7)
        distance = np.linalg.norm(lab[between][:, None, :] - centres[None], axis=2).min(axis=1)
        joins = np.zeros((h, w), dtype=bool)
        joins[between] = distance > _JOIN_COLOUR_DISTANCE
        _, joined = cv2.connectedComponents((main | part | joins).view(np.uint8), connectivity=8)
        main_id = np.bincount(joined[main]).argmax()
        if main_id == np.bincount(joined[part]).argmax():
            bridge = joins & (joined == main_id)
            out |= bridge
            main = main | part | bridge
    return out


def grabcut_mask(image: np.ndarray) -> np.ndarray:
    """Two-scale GrabCut: a coarse pass finds the subject, a fine pass fixes its outline.

    Max-flow time explodes when colour models are vague, which they are on the first
    iterations; paying that at low resolution and then only letting a thin band around
    the coarse outline change at the finer one is several times faster than GrabCut at the
    finer scale alone, for the same accuracy. Returns a boolean mask at the fine scale.
    """
    coarse = _resize_pixels(image, _GRABCUT_COARSE_PIXELS)
    h, w = coarse.shape[:2]
    margin = max(1, round(0.03 * min(h, w)))
    fg = _run_grabcut(coarse, _frame_labels(coarse, margin), _GRABCUT_ITERATIONS)

    fine = _resize_pixels(image, _GRABCUT_FINE_PIXELS)
    fh, fw = fine.shape[:2]
    up = (cv2.resize(fg.view(np.uint8), (fw, fh), interpolation=cv2.INTER_LINEAR) > 0).view(
        np.uint8
    )
    band = _disk(max(2, round(2 * fw / w)))
    inner = cv2.erode(up, band).view(bool)
    outer = ~cv2.dilate(up, band).view(bool)
    labels = np.where(up.view(bool), cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[inner] = cv2.GC_FGD
    labels[outer] = cv2.GC_BGD
    if (labels == cv2.GC_BGD).any() and (labels == cv2.GC_FGD).any():
        fg = _run_grabcut(fine, labels, _GRABCUT_FINE_ITERATIONS)
    else:
        fg = up.view(bool)
    fg = _drop_small_components(fg, max(16, int(1e-3 * fh * fw)), 0.02)
    fg = _join_parts(fine, fg)
    if not fg.any():
        # GrabCut gave up (e.g. a flat image); returning the whole frame is the least
        # surprising answer for "remove the background" on an image without one.
        fg = np.ones((fh, fw), dtype=bool)
    return fg


__all__ = ["grabcut_mask"]
