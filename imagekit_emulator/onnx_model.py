"""A deployer's own ONNX segmentation model for remove-bg (``--segmentation-model``), run on
OpenCV's DNN module, so it needs nothing beyond the ``emulator`` extra."""

from __future__ import annotations

import os
import threading
from typing import Any

import cv2
import numpy as np

from .config import IMAGENET_MEAN, IMAGENET_STD, SegmentationModelError
from .segmentation import _limit_threads

# Output values this close outside [0, 1] are float rounding of a probability, not logits.
_PROBABILITY_SLACK = 1e-3


def _cv_message(exc: Exception) -> str:
    # cv2.error reads "OpenCV(x.y) /path/file.cpp:123: error: (-5:Bad argument) what ..."
    text = " ".join(str(exc).split())
    return text.split(" error: ", 1)[-1]


class SegmentationModel:
    """A deployer's ONNX segmentation model, loaded once with OpenCV's DNN module.

    Input: the RGB image resized to ``input_size`` x ``input_size`` (aspect ratio not kept),
    as a 1x3xNxN float32 (NCHW) tensor of ``(pixel / 255 - mean) / std`` per channel.

    Output: the model's first output, squeezed to 2-D, is the foreground map. When all its
    values lie in [0, 1] they are used as probabilities as they are; otherwise they are read
    as logits and passed through a sigmoid. (Min-max scaling is deliberately not used: it
    would turn the faintest response into a subject in an image that has none.) The decision
    is made per image, so a logits model should not end in values that all fall in [0, 1].
    The map is resized to the image bilinearly; ``remove_background`` then turns it into
    alpha like the built-in masks (soft with ``semitransparency``, else a threshold at 0.5).

    Loading fails with :class:`SegmentationModelError` naming the file when it is missing,
    unreadable or not an ONNX model OpenCV can run, or when a trial run on a grey image does
    not give a single-channel map. ``cv2.dnn.Net`` is not thread-safe, so the one net is
    shared under a lock held only for inference; resizing and normalisation run outside it.
    """

    method = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_size: int = 320,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        self.path = os.fspath(path)
        if input_size < 1:
            raise SegmentationModelError(f"input_size must be positive, not {input_size}")
        self.input_size = int(input_size)
        mean_ = np.asarray(mean, np.float32).reshape(-1)
        std_ = np.asarray(std, np.float32).reshape(-1)
        if mean_.shape != (3,) or std_.shape != (3,) or not (std_ > 0).all():
            raise SegmentationModelError("mean and std must be three numbers, std positive")
        self._mean = mean_.reshape(1, 1, 3)
        self._scale = (1.0 / std_).reshape(1, 1, 3)
        self._lock = threading.Lock()
        self._net, self._output = self._load()
        self._probe()

    def __repr__(self) -> str:
        return f"SegmentationModel({self.path!r}, input_size={self.input_size})"

    def _error(self, problem: str) -> SegmentationModelError:
        return SegmentationModelError(f"segmentation model {self.path!r} {problem}")

    def _load(self) -> tuple[Any, str]:
        if not os.path.exists(self.path):
            raise self._error("does not exist")
        if not os.path.isfile(self.path):
            raise self._error("is not a file")
        try:
            with open(self.path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror or exc}") from None
        try:
            # From the path, not from bytes: models with external weight files need it.
            net = cv2.dnn.readNetFromONNX(self.path)
        except cv2.error as exc:
            raise self._error(
                f"is not a valid ONNX model OpenCV can load: {_cv_message(exc)}"
            ) from None
        if net.empty():
            raise self._error("is not a valid ONNX model OpenCV can load: the network is empty")
        # Graph output order. forward() without a name would give the *last layer's* output
        # on OpenCV 4, which for multi-output models (U^2-Net's side outputs) is not the first.
        names = tuple(net.getUnconnectedOutLayersNames())
        if not names:
            raise self._error("has no outputs")
        return net, names[0]

    def _probe(self) -> None:
        n = self.input_size
        grey = np.full((n, n, 3), 128, np.uint8)
        try:
            raw = self._forward(self._blob(grey))
        except cv2.error as exc:
            raise self._error(
                f"failed on a 1x3x{n}x{n} input (check --segmentation-input-size): "
                f"{_cv_message(exc)}"
            ) from None
        if np.squeeze(raw).ndim != 2:
            raise self._error(
                f"gives an output {self._output!r} of shape {tuple(raw.shape)}; expected one "
                "foreground map (such as 1x1xHxW)"
            )

    def _blob(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        n = self.input_size
        interpolation = cv2.INTER_AREA if h >= n and w >= n else cv2.INTER_LINEAR
        small = cv2.resize(image, (n, n), interpolation=interpolation)
        x = (small.astype(np.float32) * (1.0 / 255.0) - self._mean) * self._scale
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        with self._lock:
            self._net.setInput(blob)
            out = self._net.forward(self._output)
            # A copy, in case the binding hands out the net's own buffer.
            return np.array(out, dtype=np.float32, copy=True)

    def foreground(self, raw: np.ndarray) -> np.ndarray:
        """The model's raw output -> float32 2-D foreground probabilities 0..1."""
        prob = np.nan_to_num(np.squeeze(np.asarray(raw, dtype=np.float32)), nan=0.0)
        if prob.ndim != 2:
            raise RuntimeError(f"segmentation model output has shape {np.shape(raw)}, not 2-D")
        if prob.min() < -_PROBABILITY_SLACK or prob.max() > 1.0 + _PROBABILITY_SLACK:
            prob = 1.0 / (1.0 + np.exp(-np.clip(prob, -60.0, 60.0)))  # logits
        return np.clip(prob, 0.0, 1.0).astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 HxWx3 -> float32 foreground map 0..1 HxW (like ``compute_mask``)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
        _limit_threads()
        h, w = image.shape[:2]
        prob = self.foreground(self._forward(self._blob(image)))
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


__all__ = ["SegmentationModel", "SegmentationModelError"]
