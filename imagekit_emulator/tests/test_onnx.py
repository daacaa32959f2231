"""remove-bg with a deployer's own ONNX segmentation model (``--segmentation-model``).

The models are built here with the ``onnx`` package: a 1x1 convolution that computes
``gain * (R - B)`` on the normalised input, then a sigmoid, so red is foreground and blue is
background. Images go through the emulator over real HTTP.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
import requests

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from imagekit_emulator import Emulator, EmulatorConfig  # noqa: E402
from imagekit_emulator.__main__ import build_parser, config_from_args, main  # noqa: E402
from imagekit_emulator.config import SegmentationModelError  # noqa: E402
from imagekit_emulator.removal import (  # noqa: E402
    SegmentationModel,
    remove_background,
)
from imagekit_emulator.testing import running_emulator  # noqa: E402

UPLOAD = "/api/v1/files/upload"
W, H = 240, 180
#: Model input side: small for speed; upscaling its map 3.75x gives a soft edge band.
SIZE = 64
RED = (220, 30, 30)
BLUE = (30, 40, 220)


# ----------------------------------------------------------------------------- models


def _conv_weights(gain: float) -> np.ndarray:
    w = np.zeros((1, 3, 1, 1), np.float32)
    w[0, 0, 0, 0], w[0, 2, 0, 0] = gain, -gain  # gain * (R - B)
    return w


def _save(path: Path, nodes, outputs, initializers, *, channels: int = 1) -> str:
    graph = helper.make_graph(
        nodes,
        "tiny-segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, "h", "w"])
            for name in outputs
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return str(path)


def red_minus_blue(path: Path, gain: float = 4.0, *, sigmoid: bool = True) -> str:
    """Foreground probability sigmoid(gain * (R - B)); without the sigmoid, raw logits."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["logits"])]
    output = "logits"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["prob"]))
        output = "prob"
    return _save(path, nodes, [output], [numpy_helper.from_array(_conv_weights(gain), "w")])


def red_channel(path: Path) -> str:
    """Outputs the normalised R channel as it is (to check mean/std)."""
    w = np.zeros((1, 3, 1, 1), np.float32)
    w[0, 0, 0, 0] = 1.0
    node = helper.make_node("Conv", ["input", "w"], ["r"])
    return _save(path, [node], ["r"], [numpy_helper.from_array(w, "w")])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "red": red_minus_blue(root / "red.onnx"),
        "blue": red_minus_blue(root / "blue.onnx", gain=-4.0),  # says the opposite
        "logits": red_minus_blue(root / "logits.onnx", sigmoid=False),
    }


# ----------------------------------------------------------------------------- images


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A red ellipse on a blue background, and the ellipse's mask."""
    image = np.empty((H, W, 3), np.uint8)
    image[:] = BLUE
    mask = np.zeros((H, W), np.uint8)
    box = ((W // 2, H // 2), (W // 2, H * 3 // 5), 20)
    cv2.ellipse(image, box, RED, -1, cv2.LINE_AA)
    cv2.ellipse(mask, box, 255, -1)
    return image, mask > 0


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted & truth).sum() / max(1, (predicted | truth).sum()))


def _core(mask: np.ndarray, margin: int = 6) -> np.ndarray:
    """Pixels at least ``margin`` away from the mask's edge, inside it."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel) > 0


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return _scene()


def remove_bg(ik: Emulator, data: bytes, **options) -> Image.Image:
    """Upload with remove-bg, wait for the job and download the result."""
    response = requests.post(
        ik.url + UPLOAD,
        data={
            "fileName": "scene.png",
            "extensions": json.dumps([{"name": "remove-bg", "options": options}]),
        },
        files={"file": ("scene.png", data, "image/png")},
        auth=ik.auth,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["extensionStatus"] == {"remove-bg": "pending"}
    assert ik.wait_idle(10)
    [job] = [j for j in ik.state()["jobs"] if j["fileId"] == body["fileId"]]
    assert job["status"] == "success", job
    served = requests.get(body["url"], timeout=10)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    return Image.open(io.BytesIO(served.content))


def alpha_of(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGBA"
    return np.asarray(im)[..., 3]


@pytest.fixture(scope="module")
def red_ik(models):
    with running_emulator(segmentation_model=models["red"], segmentation_input_size=SIZE) as ik:
        yield ik


@pytest.fixture(scope="module")
def blue_ik(models):
    with running_emulator(segmentation_model=models["blue"], segmentation_input_size=SIZE) as ik:
        yield ik


# ----------------------------------------------------------------------------- the mask


def test_alpha_follows_the_model(red_ik, scene):
    image, shape = scene
    alpha = alpha_of(remove_bg(red_ik, _png(image)))
    assert alpha.shape == (H, W)
    assert _iou(alpha >= 128, shape) >= 0.9
    assert (alpha[_core(shape)] == 255).all()  # foreground opaque
    assert (alpha[_core(~shape)] == 0).all()  # background transparent
    assert red_ik.state()["emulator"]["segmentationModel"] == red_ik.config.segmentation_model


def test_a_model_that_says_the_opposite_gives_the_opposite_mask(red_ik, blue_ik, scene):
    # The built-in methods would keep the ellipse whatever; only the model can invert it.
    image, shape = scene
    red = alpha_of(remove_bg(red_ik, _png(image)))
    blue = alpha_of(remove_bg(blue_ik, _png(image)))
    assert _iou(blue >= 128, ~shape) >= 0.9
    assert (blue[_core(shape)] == 0).all()
    assert (blue[_core(~shape)] == 255).all()
    assert np.abs(red.astype(int) + blue.astype(int) - 255).max() <= 2


def test_semitransparency_gives_soft_edges_and_false_gives_hard_ones(red_ik, scene):
    image, shape = scene
    soft = alpha_of(remove_bg(red_ik, _png(image), semitransparency=True))
    hard = alpha_of(remove_bg(red_ik, _png(image), semitransparency=False))
    partial = (soft > 0) & (soft < 255)
    assert partial.sum() > 200  # a band along the outline...
    band = cv2.dilate(shape.astype(np.uint8), np.ones((15, 15))) > 0
    assert not (partial & ~band).any()  # ...and only there
    assert not (partial & _core(shape)).any()
    assert set(np.unique(hard).tolist()) == {0, 255}
    assert _iou(hard == 255, shape) >= 0.9
    assert ((hard == 255) == (soft >= 128)).mean() > 0.995  # the threshold is 0.5


def test_model_mask_is_composited_like_the_builtin_ones(red_ik, scene):
    image, shape = scene
    out = remove_bg(red_ik, _png(image), bg_color="FFFFFF", semitransparency=False)
    assert out.mode == "RGB"
    pixels = np.asarray(out)
    assert (pixels[_core(~shape)] == 255).all()  # background replaced by white
    assert np.abs(pixels[_core(shape)].astype(int) - RED).max() <= 2  # subject untouched


def test_jobs_share_the_model_across_worker_threads(models, scene):
    image, shape = scene
    data = _png(image)
    results: list[np.ndarray] = []
    with running_emulator(
        segmentation_model=models["red"], segmentation_input_size=SIZE, workers=4
    ) as ik:
        uploads = [
            threading.Thread(target=lambda: results.append(alpha_of(remove_bg(ik, data))))
            for _ in range(6)
        ]
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join(20)
    assert len(results) == 6
    for alpha in results:
        assert np.array_equal(alpha, results[0])
    assert _iou(results[0] >= 128, shape) >= 0.9


# ----------------------------------------------------------------------------- input & output


def test_logit_outputs_get_a_sigmoid(models, scene):
    image, _ = scene
    data = _png(image)
    with_sigmoid = SegmentationModel(models["red"], input_size=SIZE)
    logits = SegmentationModel(models["logits"], input_size=SIZE)
    from_logits = remove_background(data, segmentation_model=logits)
    from_probabilities = remove_background(data, segmentation_model=with_sigmoid)
    assert from_logits.method == from_probabilities.method == "onnx"
    a = alpha_of(Image.open(io.BytesIO(from_logits.data)))
    b = alpha_of(Image.open(io.BytesIO(from_probabilities.data)))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_probabilities_are_used_as_they_are_after_mean_std_normalisation(tmp_path):
    path = red_channel(tmp_path / "r.onnx")
    grey = _png(np.full((40, 50, 3), 128, np.uint8))

    def alpha(**normalisation) -> np.ndarray:
        model = SegmentationModel(path, input_size=16, **normalisation)
        out = remove_background(grey, segmentation_model=model)
        return np.asarray(Image.open(io.BytesIO(out.data)))[..., 3]

    # ImageNet defaults: (128/255 - 0.485) / 0.229 = 0.0742 -> alpha 19.
    assert np.abs(alpha().astype(int) - 19).max() <= 1
    # (128/255 - 0.25) / 0.5 = 0.504 -> alpha 128.5.
    custom = alpha(mean=(0.25, 0.25, 0.25), std=(0.5, 0.5, 0.5))
    assert np.abs(custom.astype(int) - 128).max() <= 1


def test_the_first_graph_output_is_the_map(tmp_path, scene):
    # The negated side output is computed *after* the first output: on OpenCV 4 a plain
    # forward() would return it.
    image, shape = scene
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["main"]),
        helper.make_node("Neg", ["logits"], ["negated"]),
        helper.make_node("Sigmoid", ["negated"], ["side"]),
    ]
    path = _save(
        tmp_path / "multi.onnx",
        nodes,
        ["main", "side"],
        [numpy_helper.from_array(_conv_weights(4.0), "w")],
    )
    mask = SegmentationModel(path, input_size=SIZE).predict(image)
    assert mask.shape == (H, W) and mask.dtype == np.float32
    assert _iou(mask >= 0.5, shape) >= 0.9


# ----------------------------------------------------------------------------- startup


def _two_channel_model(path: Path) -> str:
    w = np.concatenate([_conv_weights(1.0), _conv_weights(-1.0)])
    node = helper.make_node("Conv", ["input", "w"], ["two"])
    return _save(path, [node], ["two"], [numpy_helper.from_array(w, "w")], channels=2)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "does not exist"),
        ("directory", "is not a file"),
        ("empty", "is not a valid ONNX model"),
        ("garbage", "is not a valid ONNX model"),
        ("truncated", "is not a valid ONNX model"),
        ("two_channels", "expected one foreground map"),
    ],
)
def test_an_unusable_model_stops_the_emulator_at_startup(tmp_path, models, kind, expected):
    path = tmp_path / f"{kind}.onnx"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not protobuf \xff\x00" * 20)
    elif kind == "truncated":
        data = Path(models["red"]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "two_channels":
        _two_channel_model(path)
    data_dir = tmp_path / "state"
    with pytest.raises(SegmentationModelError, match=expected) as failure:
        Emulator(EmulatorConfig(port=0, segmentation_model=str(path), data_dir=str(data_dir)))
    assert str(path) in str(failure.value)
    assert not data_dir.exists()  # failed before touching anything


def test_cli_reports_a_bad_model_and_exits(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert main(["--port", "0", "--segmentation-model", str(missing)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_cli_flags_become_config(models):
    args = build_parser().parse_args(
        [
            "--segmentation-model",
            models["red"],
            "--segmentation-input-size",
            "256",
            "--segmentation-mean",
            "0.5,0.5,0.5",
            "--segmentation-std",
            "1,1,1",
        ]
    )
    config = config_from_args(args)
    assert config.segmentation_model == models["red"]
    assert config.segmentation_input_size == 256
    assert config.segmentation_mean == (0.5, 0.5, 0.5)
    assert config.segmentation_std == (1.0, 1.0, 1.0)
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.segmentation_model is None and defaults.segmentation_input_size == 320
    assert defaults.segmentation_mean == (0.485, 0.456, 0.406)
    assert defaults.segmentation_std == (0.229, 0.224, 0.225)
    for bad in ("0.5,0.5", "a,b,c", "nan,0.5,0.5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--segmentation-mean", bad])
    with pytest.raises(SystemExit):
        config_from_args(build_parser().parse_args(["--segmentation-std", "0,1,1"]))
    with pytest.raises(SystemExit):
        config_from_args(build_parser().parse_args(["--segmentation-input-size", "0"]))


def test_without_a_model_the_builtin_methods_run(scene):
    image, shape = scene
    result = remove_background(_png(image))
    assert result.method in ("border", "grabcut")
    with running_emulator() as ik:
        assert ik.segmentation_model is None
        assert ik.state()["emulator"]["segmentationModel"] is None
        assert _iou(alpha_of(remove_bg(ik, _png(image))) >= 128, shape) >= 0.9
