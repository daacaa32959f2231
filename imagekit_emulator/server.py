"""The ``Emulator``: one local ImageKit, started and stopped as a whole.

It wires the parts together: the HTTP layer (``wsgi``: werkzeug's threaded server, routing,
faults), the API handlers (``uploads``, ``api_files``), file delivery (``delivery``), the
remove-bg work queue (``jobs``), callback delivery (``callbacks``), state (``store``) and the
control endpoints (``control``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .callbacks import CallbackDispatcher
from .config import EmulatorConfig, SegmentationModelError, display_host
from .delivery import DELIVERY_PREFIX
from .faults import FaultInjector, Faults
from .fetch import Fetcher
from .jobs import JobRunner
from .store import Activity, Store
from .wsgi import make_emulator_server

logger = logging.getLogger("imagekit_emulator")


def _load_segmentation_model(config: EmulatorConfig) -> Any:
    """The configured ONNX model (a ``removal.SegmentationModel``) or None; loaded once here,
    raising SegmentationModelError naming the file when it cannot be used."""
    if not config.segmentation_model:
        return None
    try:
        from .removal import SegmentationModel
    except ImportError as exc:  # the emulator extra is not installed
        raise SegmentationModelError(
            f"segmentation model {config.segmentation_model!r} needs the emulator extra "
            f"(pip install 'imagekit-bgremove[emulator]'): {exc}"
        ) from None
    model = SegmentationModel(
        config.segmentation_model,
        input_size=config.segmentation_input_size,
        mean=config.segmentation_mean,
        std=config.segmentation_std,
    )
    logger.info(
        "remove-bg uses the segmentation model %s (input %dx%d)",
        model.path,
        model.input_size,
        model.input_size,
    )
    return model


class Emulator:
    """A running ImageKit emulator: ``Emulator(EmulatorConfig(port=0)).start()``."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any):
        config = config or EmulatorConfig()
        if overrides:
            config = config.updated(**overrides)
        self.config = config
        # First, so a bad model stops the emulator before it touches anything else.
        self.segmentation_model = _load_segmentation_model(config)
        self.store = Store(config.data_dir)
        self.activity = Activity()
        self.injector = FaultInjector(config.faults, seed=config.seed)
        self.stop_event = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._port = config.port
        self.fetcher = Fetcher(self)
        self.jobs = JobRunner(self)
        self.callbacks = CallbackDispatcher(
            store=self.store,
            config=config,
            injector=self.injector,
            activity=self.activity,
            secrets_=config.webhook_secrets,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        with self._lifecycle:
            if self._server is not None:
                return self
            if self.stop_event.is_set():
                raise RuntimeError("a stopped Emulator cannot be started again; create a new one")
            server = make_emulator_server(self)
            self._port = server.server_address[1]
            self._server = server
            self.jobs.start()
            self.callbacks.start()
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ik-emulator-http-{self._port}",
                daemon=self.config.daemon_threads,
            )
            self._thread.start()
            self._resume()
        logger.info("ImageKit emulator listening on %s", self.url)
        return self

    def _resume(self) -> None:
        self.jobs.resume()
        self.callbacks.resume()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lifecycle:
            server, self._server = self._server, None
            self.stop_event.set()
            if server is None:
                return
            server.shutdown()
            server.emulator_connections.close_all()
            server.server_close()  # joins the request threads (non-daemon mode)
            if self._thread is not None:
                self._thread.join(timeout)
            self.jobs.stop(timeout)
            self.callbacks.stop()
            self.store.close()
        logger.info("ImageKit emulator on port %s stopped", self._port)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ addresses & credentials

    @property
    def host(self) -> str:
        return display_host(self.config.host)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url_endpoint(self) -> str:
        return (self.config.url_endpoint or f"{self.url}{DELIVERY_PREFIX}").rstrip("/")

    @property
    def private_key(self) -> str:
        return self.config.private_key

    @property
    def webhook_secrets(self) -> list[str]:
        return list(self.config.webhook_secrets)

    @property
    def auth(self) -> tuple[str, str]:
        """``(private_key, "")`` for ``requests``' ``auth=``."""
        return (self.private_key, "")

    # ------------------------------------------------------------------ faults, state

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @faults.setter
    def faults(self, value: Faults | Mapping[str, Any] | None) -> None:
        self.injector.set(value)

    def set_faults(self, **changes: Any) -> Faults:
        """Change only the given knobs."""
        return self.injector.update(changes)

    def state(self) -> dict[str, Any]:
        state = self.store.state()
        state["faults"] = self.injector.state()
        state["activity"] = self.activity.snapshot()
        state["emulator"] = {
            "url": self.url,
            "urlEndpoint": self.url_endpoint,
            "dataDir": self.config.data_dir,
            "workers": self.config.workers,
            "maxUploadBytes": self.config.max_upload_bytes,
            "trustHosts": sorted(self.trusted_hosts()),
            "segmentationModel": self.config.segmentation_model,
            "timeScale": self.config.time_scale,
            "autoFormat": self.config.auto_format,
        }
        state["quota"]["limit"] = self.config.extension_quota_units
        return state

    def reset(self) -> None:
        """Forget all files, jobs and callbacks; faults go back to their start values."""
        self.callbacks.clear()
        self.store.reset()
        self.injector.reset()

    def wait_idle(self, timeout: float | None = 30.0) -> bool:
        """Wait until no remove-bg job is queued or running and no callback delivery is
        scheduled or in flight. Returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            step = 0.25 if remaining is None else max(0.0, min(0.25, remaining))
            if self.activity.wait_idle(step):
                return True
            if self.stop_event.is_set() or (remaining is not None and remaining <= step):
                return self.activity.wait_idle(0)

    # ------------------------------------------------------------------ compatibility

    def fetch(self, url: str, *, limit: int) -> bytes:
        """GET ``url`` from a trusted host (see ``fetch.Fetcher``)."""
        return self.fetcher.fetch(url, limit=limit)

    def trusted_hosts(self) -> set[str]:
        return self.fetcher.trusted_hosts()


__all__ = ["Emulator"]
