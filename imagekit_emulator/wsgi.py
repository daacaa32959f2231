"""The emulator's HTTP layer on werkzeug: routing, the request id, authentication, the rate
limiter, fault injection before and after the work, ImageKit's error bodies, the request log,
and the threaded WSGI server (``werkzeug.serving.make_server``'s) with connection tracking so
``stop()`` leaves no thread behind.

One server stands in for ``upload.imagekit.io`` (``POST /api/v1/files/upload``),
``api.imagekit.io`` (``/v1/files...``) and the URL endpoint (``/ik/...`` and the configured
endpoint's own path), plus the ``/_emulator/...`` control endpoints.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import api_files, control, uploads
from .calls import Call, Reply
from .delivery import deliver, delivery_path
from .errors import (
    MSG_AUTH_FAILED,
    MSG_AUTH_MISSING,
    MSG_INTERNAL,
    MSG_RATE_LIMITED,
    MSG_TOO_MANY_UPDATES,
    ApiError,
)
from .faults import ApiFault
from .records import iso, now_ms
from .version import SERVER_NAME

if TYPE_CHECKING:
    from .server import Emulator

logger = logging.getLogger("imagekit_emulator")

CONTROL_PREFIX = "/_emulator"

Handler = Callable[[Call], Reply]

_API: dict[str, Handler] = {
    "upload": uploads.upload,
    "list_files": api_files.list_files,
    "get_details": api_files.get_details,
    "update_details": api_files.update_details,
    "delete_file": api_files.delete_file,
    "list_versions": api_files.list_versions,
    "get_version": api_files.get_version,
    "restore_version": api_files.restore_version,
}
_CONTROL: dict[str, Handler] = {
    "health": control.health,
    "state": control.state,
    "reset": control.reset,
    "get_faults": control.get_faults,
    "put_faults": control.put_faults,
    "delete_faults": control.delete_faults,
    "wait_idle": control.wait_idle,
}
_ROUTES = Map(
    [
        Rule("/api/v1/files/upload", methods=["POST"], endpoint="upload"),
        Rule("/v1/files", methods=["GET"], endpoint="list_files"),
        Rule("/v1/files/<file_id>/details", methods=["GET"], endpoint="get_details"),
        Rule("/v1/files/<file_id>/details", methods=["PATCH"], endpoint="update_details"),
        Rule("/v1/files/<file_id>", methods=["DELETE"], endpoint="delete_file"),
        Rule("/v1/files/<file_id>/versions", methods=["GET"], endpoint="list_versions"),
        Rule("/v1/files/<file_id>/versions/<version_id>", methods=["GET"], endpoint="get_version"),
        Rule(
            "/v1/files/<file_id>/versions/<version_id>/restore",
            methods=["PUT"],
            endpoint="restore_version",
        ),
        Rule(f"{CONTROL_PREFIX}/health", methods=["GET"], endpoint="control.health"),
        Rule(f"{CONTROL_PREFIX}/state", methods=["GET"], endpoint="control.state"),
        Rule(f"{CONTROL_PREFIX}/reset", methods=["POST"], endpoint="control.reset"),
        Rule(f"{CONTROL_PREFIX}/faults", methods=["GET"], endpoint="control.get_faults"),
        Rule(f"{CONTROL_PREFIX}/faults", methods=["PUT", "PATCH"], endpoint="control.put_faults"),
        Rule(f"{CONTROL_PREFIX}/faults", methods=["DELETE"], endpoint="control.delete_faults"),
        Rule(f"{CONTROL_PREFIX}/wait-idle", methods=["GET", "POST"], endpoint="control.wait_idle"),
    ],
    strict_slashes=False,
    merge_slashes=False,
)


class _Dropped(ConnectionError):
    """Raised after shutting the client's socket down: the server writes nothing more."""


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    if status == 204:
        return Response(status=204, headers=headers)
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Response(
        body, status=status, content_type="application/json; charset=utf-8", headers=headers
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


class RateLimiter:
    """At most ``limit`` requests in any ``interval`` wall seconds (one account)."""

    def __init__(self, limit: int, interval: float):
        self.limit = limit
        self.interval = interval
        self._lock = threading.Lock()
        self._times: collections.deque[float] = collections.deque()

    def wait_ms(self) -> int:
        """0 when the request may go on (it is counted), else ms until one may."""
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= self.interval:
                self._times.popleft()
            if len(self._times) < self.limit:
                self._times.append(now)
                return 0
            return max(1, int((self._times[0] + self.interval - now) * 1000) + 1)


class EmulatorApp:
    """The WSGI application."""

    def __init__(self, emulator: Emulator):
        self.emulator = emulator
        config = emulator.config
        self.limiter = (
            RateLimiter(
                config.rate_limit_requests, config.wall(config.rate_limit_interval_ms) / 1000
            )
            if config.rate_limit_requests
            else None
        )

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        entry: dict[str, Any] = {
            "requestId": request_id,
            "method": request.method,
            "path": environ.get("REQUEST_URI") or request.full_path,
            "endpoint": None,
            "status": None,
            "fault": None,
            "at": iso(now_ms()),
            "durationMs": None,
        }
        logged = [False]

        def log(status: int | None) -> None:
            # Logged (API and delivery requests only) before the answer is written, so a client
            # reading /_emulator/state right after its answer finds its request there.
            if entry["endpoint"] is None or entry["endpoint"].startswith("control.") or logged[0]:
                return
            logged[0] = True
            entry["status"] = status
            entry["durationMs"] = int((time.monotonic() - started) * 1000)
            self.emulator.store.log_request(entry)

        try:
            response = self._dispatch(request, request_id, entry, log)
        except _Dropped:
            log(None)
            raise
        except ApiError as exc:
            response = error_response(exc)
        except Exception:
            logger.exception("emulator error handling %s %s", request.method, request.path)
            response = json_response(500, {"message": "Internal emulator error.", "help": _help()})
        response.headers["x-ik-requestId"] = request_id
        log(response.status_code)
        return response(environ, start_response)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(
        self,
        request: Request,
        request_id: str,
        entry: dict[str, Any],
        log: Callable[[int | None], None],
    ) -> Response:
        raw_length = request.environ.get("CONTENT_LENGTH")
        if raw_length and not raw_length.strip().isdigit():
            raise ApiError(400, "Invalid Content-Length header.")
        adapter = _ROUTES.bind_to_environ(request.environ)
        try:
            endpoint, params = adapter.match()
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(set(exc.valid_methods or ())))
            raise ApiError(405, "Method not allowed.", headers={"Allow": allowed}) from None
        except NotFound:
            path = request.path
            sub = delivery_path(self.emulator, path) if request.method in ("GET", "HEAD") else None
            if sub is not None and sub.startswith("/"):
                entry["endpoint"] = "delivery"
                try:
                    return deliver(self.emulator, request, sub)
                except ApiError as exc:
                    return error_response(exc)
            if path.startswith(CONTROL_PREFIX):
                raise ApiError(404, "Unknown emulator control endpoint.") from None
            raise ApiError(404, "Not found.") from None
        entry["endpoint"] = endpoint
        call = Call(self.emulator, request, request_id, endpoint, dict(params))
        if endpoint.startswith("control."):
            return self._reply(_CONTROL[endpoint.partition(".")[2]](call))
        return self._api(call, entry, log)

    def _api(
        self, call: Call, entry: dict[str, Any], log: Callable[[int | None], None]
    ) -> Response:
        emulator = self.emulator
        injector = emulator.injector
        pause = injector.slow_seconds(call.endpoint)
        if pause:
            entry["fault"] = "slow"
            emulator.stop_event.wait(pause)
        fault = injector.api_fault(call.endpoint)
        if fault is not None:
            entry["fault"] = fault.kind
            return self._inject(call, fault)
        self._authenticate(call.request)
        if self.limiter is not None and call.endpoint != "upload":
            wait = self.limiter.wait_ms()
            if wait:
                entry["fault"] = "rate_limit"
                return self._rate_limited(
                    wait, self.limiter.limit, int(self.limiter.interval * 1000)
                )
        response = self._reply(_API[call.endpoint](call))
        if response.status_code >= 300:
            return response
        after = injector.answer_fault(call.endpoint)
        if after is None:
            return response
        entry["fault"] = after.kind
        if after.kind == "answer_drop":
            log(None)
            self._drop(call.request)
        if after.kind == "answer_error":
            return self._server_error(after.status)
        log(response.status_code)  # the work is done and recorded before the wait
        emulator.stop_event.wait(after.seconds)
        return response

    @staticmethod
    def _reply(reply: Reply) -> Response:
        return json_response(reply.status, reply.payload, reply.headers)

    # ------------------------------------------------------------------ faults

    def _inject(self, call: Call, fault: ApiFault) -> Response:
        if fault.kind == "drop":
            self._drop(call.request)
        if fault.kind == "rate_limit":
            f = self.emulator.faults
            return self._rate_limited(
                f.rate_limit_reset_ms, f.rate_limit_limit, f.rate_limit_interval_ms
            )
        if fault.kind == "too_many_requests":
            return error_response(ApiError(400, MSG_TOO_MANY_UPDATES))
        return self._server_error(fault.status)

    @staticmethod
    def _server_error(status: int) -> Response:
        return json_response(status, {"message": MSG_INTERNAL, "help": _help()})

    @staticmethod
    def _rate_limited(reset_ms: int, limit: int, interval_ms: int) -> Response:
        return json_response(
            429,
            {"message": MSG_RATE_LIMITED},
            {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Reset": str(reset_ms),
                "X-RateLimit-Interval": str(interval_ms),
            },
        )

    @staticmethod
    def _drop(request: Request) -> None:
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise _Dropped("connection dropped by fault injection")

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise ApiError(401, MSG_AUTH_MISSING)
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(403, MSG_AUTH_FAILED)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(403, MSG_AUTH_FAILED) from None
        user = decoded.partition(":")[0]
        if not secrets.compare_digest(user.encode(), self.emulator.private_key.encode()):
            raise ApiError(403, MSG_AUTH_FAILED)


def _help() -> str:
    from .config import HELP_TEXT

    return HELP_TEXT


# ============================================================================ the server


class Connections:
    """The server's open connections, so that ``stop()`` can shut them down."""

    def __init__(self, idle_timeout: float, log_requests: bool):
        self.idle_timeout = idle_timeout
        self.log_requests = log_requests
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def add(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)

    def discard(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def close_all(self) -> None:
        with self._lock:
            connections = list(self._open)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(WSGIRequestHandler):
    @property
    def server_version(self) -> str:  # type: ignore[override]
        return SERVER_NAME

    def version_string(self) -> str:
        return SERVER_NAME

    @property
    def _connections(self) -> Connections:
        return self.server.emulator_connections  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        self.timeout = self._connections.idle_timeout
        super().setup()
        self._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._connections.discard(self.connection)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        level = logging.INFO if self._connections.log_requests else logging.DEBUG
        logger.log(level, "%s %r %s", self.address_string(), self.requestline, code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening, so that a busy port raises OSError here (werkzeug's own binding
    would print and ``sys.exit(1)``, which an embedded emulator must never do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def make_emulator_server(emulator: Emulator) -> BaseWSGIServer:
    """werkzeug's threaded WSGI server for the emulator (not started). Its request threads
    are joined on close unless ``daemon_threads``; ``server.emulator_connections`` tracks
    the open connections. Raises OSError when the port is taken."""
    config = emulator.config
    host = config.host.strip("[]")
    sock = _listening_socket(host, config.port)
    try:
        # werkzeug duplicates the descriptor (socket.fromfd); ours is closed right after.
        server = make_server(
            host,
            sock.getsockname()[1],
            EmulatorApp(emulator),
            threaded=True,
            request_handler=_RequestHandler,
            fd=sock.fileno(),
        )
    finally:
        sock.close()
    server.daemon_threads = config.daemon_threads  # type: ignore[attr-defined]
    server.block_on_close = True  # type: ignore[attr-defined]
    server.emulator_connections = Connections(  # type: ignore[attr-defined]
        config.idle_timeout, config.log_requests
    )
    server.handle_error = _handle_error  # type: ignore[method-assign]
    return server


def _handle_error(request: Any, client_address: Any) -> None:
    logger.debug("connection from %s failed", client_address, exc_info=True)


__all__ = ["CONTROL_PREFIX", "Connections", "EmulatorApp", "make_emulator_server"]
