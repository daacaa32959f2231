"""Which failures ImageKitClient retries: rate limits answered as 400, and requests that start a
paid extension run (never re-sent once they may have reached ImageKit). Real local servers only."""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
import time

import pytest
import requests
from pytest_httpserver import HTTPServer

from imagekit_bgremove.client import ImageKitClient
from imagekit_bgremove.exceptions import (
    BadRequestError,
    ConflictError,
    ImageKitError,
    ImageKitTimeout,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TooManyUpdatesError,
    TransportError,
)
from imagekit_bgremove.removebg import RemoveBgOptions
from tests.test_client import KEY, UPLOAD_PATH, UPLOADED, Script, serve

TOO_MANY = "You have sent too many requests to update the file recently. Please try again later."


def make_client(base: str, sleeps: list[float], **overrides) -> ImageKitClient:
    options = {
        "private_key": KEY,
        "upload_base_url": base,
        "api_base_url": base,
        "timeout": (2, 5),
        "max_retries": 3,
        "backoff": 0.01,
        "backoff_max": 5,
        "sleep": sleeps.append,
    }
    options.update(overrides)
    return ImageKitClient(**options)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(httpserver: HTTPServer, sleeps):
    with make_client(httpserver.url_for("").rstrip("/"), sleeps) as client:
        yield client


# --- 1. a rate limit answered as 400 ----------------------------------------------------------


def test_too_many_updates_400_is_retried_honouring_rate_limit_headers(client, httpserver, sleeps):
    headers = {"X-RateLimit-Reset": "1200", "x-ik-requestId": "t1"}
    script = serve(
        httpserver, UPLOAD_PATH, Script((400, {"message": TOO_MANY}, headers), (200, UPLOADED))
    )
    assert client.upload(b"img", "a.jpg") == UPLOADED
    assert len(script.seen) == 2
    assert sleeps == [pytest.approx(1.2, abs=0.02)]


def test_too_many_updates_400_without_headers_backs_off_then_gives_up(client, httpserver, sleeps):
    script = serve(httpserver, UPLOAD_PATH, Script((400, {"message": TOO_MANY})))
    with pytest.raises(TooManyUpdatesError) as info:
        client.upload(b"img", "a.jpg")
    error = info.value
    assert len(script.seen) == 4 and error.attempts == 4 and len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0 <= delay <= 0.01 * 2 ** (attempt - 1)
    # Callers can tell it apart, and it still reads as what it is: a 400 that is a rate limit.
    assert isinstance(error, RateLimitedError) and isinstance(error, BadRequestError)
    assert error.status == 400 and error.retryable is True and error.maybe_applied is False
    assert str(error) == f"ImageKit 400 Bad Request: {TOO_MANY}"


def test_other_400s_stay_final(client, httpserver, sleeps):
    for message in ("Upload Limit Exceeded.", "Your request is missing file parameter."):
        httpserver.clear()
        script = serve(httpserver, UPLOAD_PATH, Script((400, {"message": message})))
        with pytest.raises(BadRequestError) as info:
            client.upload(b"img", "a.jpg")
        assert not isinstance(info.value, RateLimitedError)
        assert info.value.retryable is False and len(script.seen) == 1
    assert sleeps == []


def test_too_many_updates_on_details_update_is_retried(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((400, {"message": TOO_MANY}, {"Retry-After": "1"}), (200, {"fileId": "abc"})),
        method="PATCH",
    )
    result = client.update_file_details("abc", extensions=[RemoveBgOptions()])
    assert result == {"fileId": "abc"} and len(script.seen) == 2
    assert sleeps == [pytest.approx(1.0, abs=0.02)]


def test_maybe_applied_defaults_to_false_and_survives_pickling():
    assert ImageKitError("x").maybe_applied is False
    error = ServerError("x", status=500, maybe_applied=True)
    restored = pickle.loads(pickle.dumps(error))
    assert restored.maybe_applied is True and "maybe_applied=True" in repr(restored)
    old = ImageKitError("x")
    del old.__dict__["maybe_applied"]  # as pickled before the attribute existed
    assert pickle.loads(pickle.dumps(old)).maybe_applied is False


# --- 2. requests that start paid work are never re-sent blindly -------------------------------


class RawServer:
    """A bare TCP server that reads each HTTP request whole (headers and Content-Length body),
    counts it, and then misbehaves: ``close`` hangs up without answering, ``reset`` aborts the
    connection (RST), ``slow`` answers 200 after ``delay`` seconds."""

    def __init__(self, behaviour: str, delay: float = 0.0):
        self.behaviour = behaviour
        self.delay = delay
        self.requests: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.requests.append(head + b"\r\n\r\n" + body)
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.behaviour == "slow":
                time.sleep(self.delay)
                with contextlib.suppress(OSError):
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
                    )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(behaviour: str, delay: float = 0.0) -> RawServer:
        server = RawServer(behaviour, delay)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PAID_UPLOAD = {"extensions": [RemoveBgOptions()]}


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_paid_upload_answered_5xx_is_sent_once(client, httpserver, sleeps, status):
    script = serve(httpserver, UPLOAD_PATH, Script((status, {"message": "oops"}), (200, UPLOADED)))
    with pytest.raises(ImageKitError) as info:
        client.upload(b"img", "a.jpg", **PAID_UPLOAD)
    error = info.value
    assert len(script.seen) == 1 and sleeps == []
    assert error.maybe_applied is True and error.attempts == 1 and error.status == status
    assert "maybe_applied=True" in repr(error)


def test_paid_details_update_answered_500_is_sent_once(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((500, {"message": "oops"}), (200, {"fileId": "abc"})),
        method="PATCH",
    )
    with pytest.raises(ServerError) as info:
        client.update_file_details("abc", extensions=[RemoveBgOptions()])
    assert info.value.maybe_applied is True and len(script.seen) == 1 and sleeps == []


def test_paid_upload_with_a_body_that_is_not_json_may_have_been_applied(client, httpserver):
    script = serve(httpserver, UPLOAD_PATH, Script((200, "<html>proxy</html>"), (200, UPLOADED)))
    with pytest.raises(ImageKitError) as info:
        client.upload(b"img", "a.jpg", **PAID_UPLOAD)
    assert "not JSON" in str(info.value)
    assert info.value.maybe_applied is True and len(script.seen) == 1


def test_unpaid_requests_keep_retrying_5xx(client, httpserver, sleeps):
    upload = serve(httpserver, UPLOAD_PATH, Script((500, {"message": "x"}), (200, UPLOADED)))
    details = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((503, {}), (200, {"fileId": "abc"}), (503, {}), (200, {"fileId": "abc"})),
        method="PATCH",
    )
    restore = serve(
        httpserver,
        "/v1/files/abc/versions/v1/restore",
        Script((502, {}), (200, {"fileId": "abc"})),
        method="PUT",
    )
    assert client.upload(b"img", "a.jpg") == UPLOADED
    assert client.upload(b"img", "b.jpg", extensions=[]) == UPLOADED  # no extension: unpaid
    client.update_file_details("abc", tags=["a"])
    client.restore_version("abc", "v1")
    assert [len(s.seen) for s in (upload, details, restore)] == [3, 2, 2]


@pytest.mark.parametrize("behaviour", ["close", "reset"])
def test_paid_upload_whose_connection_drops_after_sending_is_sent_once(
    raw_server, sleeps, behaviour
):
    server = raw_server(behaviour)
    client = make_client(server.base, sleeps)
    with pytest.raises(TransportError) as info:
        client.upload(b"img" * 1000, "a.jpg", **PAID_UPLOAD)
    error = info.value
    assert len(server.requests) == 1 and sleeps == []
    assert error.maybe_applied is True and error.retryable is True and error.attempts == 1
    assert isinstance(error.__cause__, requests.ConnectionError)
    assert b"img" * 1000 in server.requests[0]  # the whole body arrived before the hang-up


def test_unpaid_upload_whose_connection_drops_is_retried(raw_server, sleeps):
    server = raw_server("close")
    client = make_client(server.base, sleeps)
    with pytest.raises(TransportError) as info:
        client.upload(b"img", "a.jpg")
    assert len(server.requests) == 4 and info.value.attempts == 4
    assert info.value.maybe_applied is False


def test_paid_details_update_read_timeout_is_sent_once(raw_server, sleeps):
    server = raw_server("slow", delay=0.5)
    client = make_client(server.base, sleeps, timeout=(1, 0.1))
    with pytest.raises(ImageKitTimeout) as info:
        client.update_file_details("abc", extensions=[RemoveBgOptions()])
    assert len(server.requests) == 1 and sleeps == []
    assert info.value.maybe_applied is True and info.value.attempts == 1


def test_unpaid_read_timeout_is_retried(raw_server, sleeps):
    server = raw_server("slow", delay=0.5)
    client = make_client(server.base, sleeps, timeout=(1, 0.1), max_retries=1)
    with pytest.raises(ImageKitTimeout) as info:
        client.get_file_details("abc")
    assert len(server.requests) == 2 and info.value.maybe_applied is False


def test_paid_upload_to_a_closed_port_is_retried(sleeps):
    client = make_client(f"http://127.0.0.1:{free_port()}", sleeps, max_retries=2)
    with pytest.raises(TransportError) as info:
        client.upload(b"img", "a.jpg", **PAID_UPLOAD)
    error = info.value
    assert error.attempts == 3 and len(sleeps) == 2
    assert error.maybe_applied is False and error.retryable is True


def test_paid_upload_whose_connect_times_out_is_retried(sleeps):
    # A listening socket whose accept queue is full drops new SYNs: the connect times out and
    # nothing is ever sent.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            time.sleep(0.05)
            client = make_client(f"http://127.0.0.1:{port}", sleeps, timeout=(0.2, 1))
            with pytest.raises(ImageKitTimeout) as info:
                client.upload(b"img", "a.jpg", **PAID_UPLOAD)
        finally:
            for filler in fillers:
                filler.close()
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectTimeout)
    assert info.value.attempts == 4 and info.value.maybe_applied is False


def test_paid_upload_rate_limited_is_retried(client, httpserver, sleeps):
    script = serve(
        httpserver,
        UPLOAD_PATH,
        Script(
            (429, {"message": "Rate limit exceeded"}, {"X-RateLimit-Reset": "10"}), (200, UPLOADED)
        ),
    )
    assert client.upload(b"img", "a.jpg", **PAID_UPLOAD) == UPLOADED
    assert len(script.seen) == 2 and len(sleeps) == 1


def test_paid_upload_refused_outright_is_not_maybe_applied(client, httpserver, sleeps):
    for status, cls in ((409, ConflictError), (404, NotFoundError), (400, BadRequestError)):
        httpserver.clear()
        script = serve(
            httpserver, UPLOAD_PATH, Script((status, {"message": "no"}), (200, UPLOADED))
        )
        with pytest.raises(cls) as info:
            client.upload(b"img", "a.jpg", **PAID_UPLOAD)
        # A clear refusal: it took no effect, yet a paid request is only re-sent after a rate
        # limit or a connection that was never made.
        assert info.value.maybe_applied is False and len(script.seen) == 1
    assert sleeps == []
