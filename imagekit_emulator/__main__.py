"""``python -m imagekit_emulator`` / ``imagekit-emulator``: run the emulator.

``--segmentation-model PATH`` makes remove-bg use a deployer's own ONNX segmentation model
instead of the built-in methods (see ``--help`` and ``removal.SegmentationModel``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import (
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_PORT,
    DEFAULT_PRIVATE_KEY,
    DEFAULT_WEBHOOK_SECRET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EmulatorConfig,
    SegmentationModelError,
    _triple,
)
from .faults import Faults, FaultsError
from .server import Emulator

# Fault flags: (flag, knob, type, help).
_FAULT_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--error-rate-5xx", "error_rate_5xx", float, "probability of a 5xx answer"),
    ("--rate-limit-rate", "rate_limit_rate", float, "probability of a 429 answer"),
    ("--rate-limit-reset-ms", "rate_limit_reset_ms", int, "X-RateLimit-Reset of a 429 (ms)"),
    ("--slow-rate", "slow_rate", float, "probability of a slow answer"),
    ("--slow-seconds", "slow_seconds", float, "how slow a slow answer is"),
    ("--drop-rate", "drop_rate", float, "probability of closing without an answer"),
    (
        "--extension-failure-rate",
        "extension_failure_rate",
        float,
        "probability that a remove-bg job fails",
    ),
    (
        "--webhook-duplicate-rate",
        "duplicate_rate",
        float,
        "probability that a callback is delivered more than once",
    ),
    (
        "--webhook-delay-seconds",
        "delay_seconds",
        str,
        "MIN,MAX seconds to wait before the first callback attempt",
    ),
    (
        "--webhook-fail-first-attempts",
        "fail_first_attempts",
        int,
        "count the first N attempts of every callback as failed",
    ),
    ("--webhook-lost-rate", "lost_rate", float, "probability that a callback is never sent"),
    (
        "--answer-drop-rate",
        "answer_drop_rate",
        float,
        "probability that a request does its work, then closes without an answer",
    ),
    (
        "--answer-error-rate",
        "answer_error_rate",
        float,
        "probability that a request does its work, then answers a 5xx",
    ),
    (
        "--answer-late-rate",
        "answer_late_rate",
        float,
        "probability that a request does its work, then answers late",
    ),
    ("--answer-late-seconds", "answer_late_seconds", float, "how late a late answer is"),
    (
        "--upload-too-many-requests-rate",
        "upload_too_many_requests_rate",
        float,
        "probability of the upload's 400 'too many requests to update the file'",
    ),
    (
        "--result-as-new-file-rate",
        "result_as_new_file_rate",
        float,
        "probability that a remove-bg result becomes a new file, not a new version",
    ),
    (
        "--sync-success-rate",
        "sync_success_rate",
        float,
        "probability that remove-bg is done before the answer (status success, no callback)",
    ),
]


def _rgb_triple(text: str) -> tuple[float, float, float]:
    try:
        return _triple("R,G,B", text.split(","))  # the config's own check
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three finite numbers R,G,B, not {text!r}"
        ) from None


def _triple_text(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="imagekit-emulator",
        description="A local ImageKit.io emulator: upload, file details, versions and the "
        "remove-bg extension, with signed webhook callbacks and fault injection.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (%(default)s; 0 picks a free one)"
    )
    parser.add_argument(
        "--private-key",
        default=DEFAULT_PRIVATE_KEY,
        help="the private API key clients must send as the Basic auth user",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        dest="webhook_secrets",
        metavar="SECRET",
        help=f"callback signing secret; repeat to sign with several during "
        f"rotation (default {DEFAULT_WEBHOOK_SECRET})",
    )
    parser.add_argument("--url-endpoint", help="base of file URLs (default http://HOST:PORT/ik)")
    parser.add_argument("--data-dir", help="persist state here so it survives a restart")
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        help="largest accepted file (%(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="remove-bg worker threads")
    parser.add_argument(
        "--trust-host",
        action="append",
        dest="trust_hosts",
        metavar="HOST",
        help="host (or host:port) that bg_image_url / URL uploads may be fetched "
        "from; repeatable (default: the emulator itself, 127.0.0.1, localhost)",
    )
    parser.add_argument("--seed", type=int, help="seed for fault injection")
    parser.add_argument(
        "--extension-quota-units",
        type=int,
        help="extension units available (remove-bg costs 130); default unlimited",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=50_000_000,
        help="largest image remove-bg processes (%(default)s pixels)",
    )
    timing = parser.add_argument_group(
        "timing",
        "Durations are ImageKit seconds, as the real service measures them; --time-scale "
        "turns them into wall-clock seconds (wall = ImageKit x scale), so tests can run a "
        "day of webhook retries in minutes. Fault knobs stay wall-clock seconds.",
    )
    timing.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        metavar="SCALE",
        help="wall seconds per ImageKit second (%(default)s = real time; 0.01 = 100x faster)",
    )
    timing.add_argument(
        "--min-timeout",
        type=float,
        default=defaults.min_timeout,
        metavar="SECONDS",
        help="no scaled network timeout is shorter than this many wall seconds (%(default)s)",
    )
    timing.add_argument(
        "--callback-timeout",
        type=float,
        default=defaults.callback_timeout,
        help="how long to wait for a webhook answer (%(default)s, as ImageKit)",
    )
    timing.add_argument(
        "--callback-retry-seconds",
        type=float,
        default=defaults.callback_retry_seconds,
        help="keep retrying a callback this long (%(default)s = 24 h, as ImageKit)",
    )
    timing.add_argument(
        "--callback-backoff-base",
        type=float,
        default=defaults.callback_backoff_base,
        help="first retry delay; doubles each time (%(default)s)",
    )
    timing.add_argument(
        "--callback-backoff-max",
        type=float,
        default=defaults.callback_backoff_max,
        help="longest retry delay (%(default)s)",
    )
    timing.add_argument(
        "--fetch-timeout",
        type=float,
        default=defaults.fetch_timeout,
        help="how long a URL upload / bg_image_url may take (%(default)s, as ImageKit)",
    )
    parser.add_argument(
        "--no-auto-format",
        dest="auto_format",
        action="store_false",
        help="serve stored bytes even to clients that accept WebP (the account's automatic "
        "format conversion is on by default)",
    )
    parser.add_argument(
        "--rate-limit-requests",
        type=int,
        metavar="N",
        help="rate limit every API but upload to N requests per --rate-limit-interval-ms "
        "(default: unlimited)",
    )
    parser.add_argument(
        "--rate-limit-interval-ms",
        type=int,
        default=defaults.rate_limit_interval_ms,
        metavar="MS",
        help="the rate limiter's window in ImageKit milliseconds (%(default)s)",
    )
    parser.add_argument(
        "--unsigned-callbacks", action="store_true", help="send callbacks without signature headers"
    )
    model = parser.add_argument_group(
        "segmentation model",
        "remove-bg with your own ONNX model instead of the built-in border/GrabCut methods. "
        "The model gets the RGB image resized to NxN as a 1x3xNxN float32 tensor of "
        "(pixel/255 - mean) / std; its first output, squeezed to 2-D, is the foreground map: "
        "probabilities if all values are in [0,1], otherwise logits (a sigmoid is applied). "
        "The map is resized to the image and becomes alpha (soft with semitransparency, "
        "else thresholded at 0.5). Runs on OpenCV's DNN module: no extra dependency.",
    )
    model.add_argument(
        "--segmentation-model",
        metavar="PATH",
        help="ONNX model file; loaded at startup, which fails if it is missing or invalid",
    )
    model.add_argument(
        "--segmentation-input-size",
        type=int,
        default=320,
        metavar="N",
        help="side of the square model input (%(default)s)",
    )
    model.add_argument(
        "--segmentation-mean",
        type=_rgb_triple,
        default=IMAGENET_MEAN,
        metavar="R,G,B",
        help=f"per-channel mean on 0..1 pixels (ImageNet: {_triple_text(IMAGENET_MEAN)})",
    )
    model.add_argument(
        "--segmentation-std",
        type=_rgb_triple,
        default=IMAGENET_STD,
        metavar="R,G,B",
        help=f"per-channel std on 0..1 pixels (ImageNet: {_triple_text(IMAGENET_STD)})",
    )
    faults = parser.add_argument_group(
        "faults", "also settable at run time with PUT /_emulator/faults"
    )
    faults.add_argument("--faults", metavar="JSON", help="fault knobs as a JSON object")
    for flag, knob, kind, text in _FAULT_FLAGS:
        metavar = {float: "P", int: "N", str: "MIN,MAX"}[kind]
        if knob in ("slow_seconds", "answer_late_seconds"):
            metavar = "SECONDS"
        elif knob.endswith("_ms"):
            metavar = "MS"
        faults.add_argument(flag, dest=f"fault_{knob}", type=kind, metavar=metavar, help=text)
    faults.add_argument(
        "--rate-limit-upload",
        dest="fault_rate_limit_upload",
        action="store_true",
        default=None,
        help="rate limit uploads too (the real upload API is not)",
    )
    faults.add_argument(
        "--webhook-retry-original-signature",
        dest="fault_retry_original_signature",
        action="store_true",
        default=None,
        help="retries repeat the first attempt's signature headers (original timestamp)",
    )
    faults.add_argument(
        "--webhook-reorder",
        dest="fault_reorder",
        action="store_true",
        default=None,
        help="hold callbacks and deliver them out of order",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (%(default)s; INFO logs every request)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    knobs: dict[str, Any] = {}
    if args.faults:
        try:
            knobs.update(json.loads(args.faults))
        except ValueError as exc:
            raise SystemExit(f"--faults is not valid JSON: {exc}") from None
    for name, value in vars(args).items():
        if name.startswith("fault_") and value is not None:
            knobs[name[len("fault_") :]] = value
    try:
        faults = Faults.from_dict(knobs)
    except FaultsError as exc:
        raise SystemExit(f"invalid fault settings: {exc}") from None
    try:
        return EmulatorConfig(
            host=args.host,
            port=args.port,
            private_key=args.private_key,
            webhook_secrets=tuple(args.webhook_secrets or (DEFAULT_WEBHOOK_SECRET,)),
            url_endpoint=args.url_endpoint,
            data_dir=args.data_dir,
            max_upload_bytes=args.max_upload_bytes,
            workers=args.workers,
            trust_hosts=tuple(args.trust_hosts or ()),
            seed=args.seed,
            extension_quota_units=args.extension_quota_units,
            max_pixels=args.max_pixels,
            time_scale=args.time_scale,
            min_timeout=args.min_timeout,
            fetch_timeout=args.fetch_timeout,
            auto_format=args.auto_format,
            rate_limit_requests=args.rate_limit_requests,
            rate_limit_interval_ms=args.rate_limit_interval_ms,
            callback_timeout=args.callback_timeout,
            callback_retry_seconds=args.callback_retry_seconds,
            callback_backoff_base=args.callback_backoff_base,
            callback_backoff_max=args.callback_backoff_max,
            sign_callbacks=not args.unsigned_callbacks,
            faults=faults,
            log_requests=args.log_level == "DEBUG" or args.log_level == "INFO",
            segmentation_model=args.segmentation_model,
            segmentation_input_size=args.segmentation_input_size,
            segmentation_mean=args.segmentation_mean,
            segmentation_std=args.segmentation_std,
        )
    except ValueError as exc:
        raise SystemExit(f"invalid setting: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        emulator = Emulator(config_from_args(args))
    except SegmentationModelError as exc:
        print(f"imagekit-emulator: {exc}", file=sys.stderr)
        return 1
    try:
        emulator.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _signal)
    print(
        f"ImageKit emulator listening on {emulator.url} (url endpoint {emulator.url_endpoint})",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
