"""ImageKitClient against a real local HTTP server (pytest-httpserver); requests is not patched."""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import socket
import time
from dataclasses import dataclass

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile, File
from django.core.files.uploadedfile import SimpleUploadedFile
from pytest_httpserver import HTTPServer
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from imagekit_bgremove import __version__
from imagekit_bgremove.client import USER_AGENT, ImageKitClient, get_client
from imagekit_bgremove.exceptions import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ImageKitError,
    ImageKitTimeout,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)
from imagekit_bgremove.removebg import RemoveBgOptions

KEY = "private_tEsT+KeY/0123456789abcdef="
UPLOAD_PATH = "/api/v1/files/upload"
UPLOADED = {
    "fileId": "f1",
    "name": "cat.jpg",
    "url": "http://ik/cat.jpg",
    "versionInfo": {"id": "v1"},
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    uri: str


class Script:
    """A handler answering with the given (status, body, headers) in turn (the last one repeats)
    and recording every request it received, raw body included."""

    def __init__(self, *answers: tuple[int, object, dict[str, str]] | tuple[int, object]):
        self.answers = [a if len(a) == 3 else (*a, {}) for a in answers]
        self.seen: list[Seen] = []

    def __call__(self, request: Request) -> Response:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.headers),
                request.get_data(),
                request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI", ""),
            )
        )
        status, body, headers = self.answers[min(len(self.seen), len(self.answers)) - 1]
        if isinstance(body, dict | list):
            return Response(json.dumps(body), status, headers, content_type="application/json")
        return Response(body, status, headers)


def parse_multipart(seen: Seen):
    """Parse a received multipart body with werkzeug's parser (independent of ours)."""
    environ = EnvironBuilder(
        method="POST",
        input_stream=io.BytesIO(seen.body),
        content_type=seen.headers["Content-Type"],
        content_length=len(seen.body),
    ).get_environ()
    request = Request(environ)
    return request.form, request.files


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(httpserver: HTTPServer, sleeps):
    base = httpserver.url_for("").rstrip("/")
    with ImageKitClient(
        private_key=KEY,
        upload_base_url=base,
        api_base_url=base,
        timeout=(2, 5),
        max_retries=3,
        backoff=0.01,
        backoff_max=5,
        sleep=sleeps.append,
    ) as client:
        yield client


def serve(httpserver: HTTPServer, path: str, script: Script, method: str | None = None):
    kwargs = {"method": method} if method else {}
    httpserver.expect_request(path, **kwargs).respond_with_handler(script)
    return script


# --- errors -----------------------------------------------------------------------------------

ERROR_CASES = [
    (400, "Your request is missing file parameter.", BadRequestError, "Bad Request"),
    (400, "Extensions quota exceeded.", QuotaExceededError, "Bad Request"),
    (401, "Your request does not contain private API key.", AuthenticationError, "Unauthorized"),
    (403, "Your account cannot be authenticated.", AuthenticationError, "Forbidden"),
    (404, "The requested file does not exist.", NotFoundError, "Not Found"),
]


@pytest.mark.parametrize(("status", "message", "cls", "phrase"), ERROR_CASES)
def test_error_classes_and_str_without_retry(
    client, httpserver, sleeps, status, message, cls, phrase
):
    body = {"message": message, "help": "For support kindly contact us at support@imagekit.io."}
    script = serve(
        httpserver, "/v1/files/abc/details", Script((status, body, {"x-ik-requestId": "abc123"}))
    )
    with pytest.raises(cls) as info:
        client.get_file_details("abc")
    error = info.value
    assert str(error) == f"ImageKit {status} {phrase}: {message} (request id abc123)"
    assert error.status == status
    assert error.message == message
    assert error.help == "For support kindly contact us at support@imagekit.io."
    assert error.request_id == "abc123"
    assert error.body == body
    assert error.retryable is False
    assert len(script.seen) == 1 and sleeps == []  # never retried


def test_quota_error_is_a_bad_request(client, httpserver):
    serve(httpserver, UPLOAD_PATH, Script((400, {"message": "Extensions quota exceeded."})))
    with pytest.raises(BadRequestError) as info:
        client.upload(b"x", "a.jpg")
    assert isinstance(info.value, QuotaExceededError)
    assert str(info.value) == "ImageKit 400 Bad Request: Extensions quota exceeded."


def test_bad_request_with_errors_field(client, httpserver):
    body = {"message": "Invalid request", "errors": {"tags": "too long"}}
    serve(httpserver, "/v1/files/abc/details", Script((400, body, {"x-ik-requestId": "r9"})))
    with pytest.raises(BadRequestError) as info:
        client.update_file_details("abc", tags=["a"])
    assert info.value.errors == {"tags": "too long"}
    assert (
        str(info.value)
        == "ImageKit 400 Bad Request: Invalid request [tags: too long] (request id r9)"
    )


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (409, ConflictError),
        (408, ImageKitError),
    ],
)
def test_retryable_statuses_then_success(client, httpserver, sleeps, status, cls):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((status, "<html>busy</html>", {"x-ik-requestId": "r1"}), (200, {"fileId": "abc"})),
    )
    assert client.get_file_details("abc") == {"fileId": "abc"}
    assert len(script.seen) == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.01


def test_server_error_gives_up_after_max_retries(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files/abc/versions",
        Script((503, {"message": "down"}, {"x-ik-requestId": "r5"})),
    )
    with pytest.raises(ServerError) as info:
        client.list_versions("abc")
    assert len(script.seen) == 4  # one try + max_retries
    assert info.value.attempts == 4
    assert str(info.value) == "ImageKit 503 Service Unavailable: down (request id r5)"
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):  # full jitter under the exponential ceiling
        assert 0 <= delay <= 0.01 * 2 ** (attempt - 1)


def test_backoff_is_capped(httpserver):
    waited = []
    base = httpserver.url_for("").rstrip("/")
    client = ImageKitClient(
        private_key=KEY,
        upload_base_url=base,
        api_base_url=base,
        timeout=2,
        max_retries=8,
        backoff=1,
        backoff_max=3,
        sleep=waited.append,
    )
    serve(httpserver, "/v1/files/abc/details", Script((500, {"message": "x"})))
    with pytest.raises(ServerError):
        client.get_file_details("abc")
    assert len(waited) == 8 and max(waited) <= 3


def test_html_5xx_body_reads_well(client, httpserver):
    serve(httpserver, "/v1/files/abc/details", Script((502, "<html><h1>Bad gateway</h1></html>")))
    client.max_retries = 0
    with pytest.raises(ServerError) as info:
        client.get_file_details("abc")
    assert str(info.value).startswith("ImageKit 502 Bad Gateway: ")
    assert "<html>" not in str(info.value)
    assert info.value.body == "<html><h1>Bad gateway</h1></html>"


def test_rate_limit_honours_x_ratelimit_reset_milliseconds(client, httpserver, sleeps):
    headers = {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Reset": "1500",
        "X-RateLimit-Interval": "1000",
    }
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((429, {"message": "Rate limit exceeded"}, headers), (200, {"fileId": "abc"})),
    )
    assert client.get_file_details("abc") == {"fileId": "abc"}
    assert len(script.seen) == 2
    assert sleeps == [pytest.approx(1.5, abs=0.02)]


def test_rate_limit_honours_retry_after_seconds(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((429, {"message": "slow down"}, {"Retry-After": "2"}), (200, {"fileId": "abc"})),
    )
    client.get_file_details("abc")
    assert len(script.seen) == 2
    assert sleeps == [pytest.approx(2.0, abs=0.02)]


def test_rate_limit_longer_than_cap_gives_up_at_once(client, httpserver, sleeps, caplog):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script(
            (
                429,
                {"message": "Rate limit exceeded"},
                {"X-RateLimit-Reset": "60000", "x-ik-requestId": "rl"},
            )
        ),
    )
    with pytest.raises(RateLimitedError) as info:
        client.get_file_details("abc")
    assert info.value.reset_after == 60.0
    assert info.value.retryable is True
    assert str(info.value) == "ImageKit 429 Too Many Requests: Rate limit exceeded (request id rl)"
    assert len(script.seen) == 1 and sleeps == []
    assert "giving up" in caplog.text


def test_rate_limit_gives_up_after_max_retries(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files/abc/details",
        Script((429, {"message": "x"}, {"X-RateLimit-Reset": "100"})),
    )
    with pytest.raises(RateLimitedError) as info:
        client.get_file_details("abc")
    assert info.value.reset_after == pytest.approx(0.1)
    assert len(script.seen) == 4
    assert all(delay >= 0.1 for delay in sleeps) and len(sleeps) == 3


def test_retries_are_logged_without_query_or_key(client, httpserver, caplog):
    caplog.set_level(logging.DEBUG)
    serve(
        httpserver,
        "/v1/files/abc/details",
        Script((503, {"message": "busy"}, {"x-ik-requestId": "req-42"}), (200, {"fileId": "abc"})),
    )
    client.get_file_details("abc")
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "imagekit_bgremove.client"
    ]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "GET /v1/files/abc/details" in line and "503" in line and "req-42" in line
    assert "retry 1 of 3" in line
    assert KEY not in caplog.text


def test_timeout_raises_imagekit_timeout_after_retries(sleeps):
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)

    def slow(request):
        time.sleep(0.4)
        return Response("{}", 200, content_type="application/json")

    server.expect_request("/v1/files/slow/details").respond_with_handler(slow)
    server.start()
    try:
        base = server.url_for("").rstrip("/")
        client = ImageKitClient(
            private_key=KEY,
            upload_base_url=base,
            api_base_url=base,
            timeout=(1, 0.1),
            max_retries=2,
            backoff=0.01,
            backoff_max=1,
            sleep=sleeps.append,
        )
        with pytest.raises(ImageKitTimeout) as info:
            client.get_file_details("slow")
        assert isinstance(info.value, TransportError) and isinstance(info.value, TimeoutError)
        assert info.value.status is None and info.value.retryable
        assert info.value.attempts == 3 and len(sleeps) == 2
        assert str(info.value).startswith("ImageKit timeout: GET /v1/files/slow/details")
        assert KEY not in str(info.value) and KEY not in repr(info.value)
    finally:
        server.clear()
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_raises_transport_error(sleeps, caplog):
    base = f"http://127.0.0.1:{free_port()}"
    client = ImageKitClient(
        private_key=KEY,
        upload_base_url=base,
        api_base_url=base,
        timeout=1,
        max_retries=2,
        backoff=0.01,
        backoff_max=1,
        sleep=sleeps.append,
    )
    with pytest.raises(TransportError) as info:
        client.upload(b"data", "a.jpg")
    assert not isinstance(info.value, ImageKitTimeout)
    assert info.value.retryable and info.value.attempts == 3 and len(sleeps) == 2
    assert str(info.value).startswith("ImageKit connection error: POST /api/v1/files/upload")
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert KEY not in str(info.value) and KEY not in caplog.text


# --- secrets ----------------------------------------------------------------------------------


def test_basic_auth_header_and_user_agent(client, httpserver):
    script = serve(httpserver, "/v1/files/abc/details", Script((200, {"fileId": "abc"})))
    client.get_file_details("abc")
    headers = script.seen[0].headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert headers["User-Agent"] == USER_AGENT
    expected = f"imagekit-bgremove/{__version__} python-requests/{requests.__version__}"
    assert expected == USER_AGENT


def test_private_key_never_in_errors_reprs_or_logs(client, httpserver, caplog):
    caplog.set_level(logging.DEBUG)
    encoded = base64.b64encode(f"{KEY}:".encode()).decode()
    errors = []
    for status in (400, 401, 403, 404, 429, 500):
        # A server that echoes the key back (as some proxies do) must not leak it either.
        body = {"message": f"bad key {KEY}", "help": f"header Basic {encoded}"}
        httpserver.clear()
        serve(
            httpserver, "/v1/files/abc/details", Script((status, body, {"X-RateLimit-Reset": "1"}))
        )
        with pytest.raises(ImageKitError) as info:
            client.get_file_details("abc")
        errors.append(info.value)
    for error in errors:
        for text in (str(error), repr(error), repr(error.body), repr(error.__dict__)):
            assert KEY not in text and encoded not in text
        restored = pickle.loads(pickle.dumps(error))
        assert type(restored) is type(error) and str(restored) == str(error)
    assert KEY not in repr(client) and KEY not in str(client)
    assert KEY not in caplog.text and encoded not in caplog.text


# --- upload -----------------------------------------------------------------------------------


def test_upload_multipart_on_the_wire(client, httpserver):
    script = serve(httpserver, UPLOAD_PATH, Script((200, UPLOADED)), method="POST")
    options = RemoveBgOptions(add_shadow=True, bg_color="81d4fa")
    payload = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"
    result = client.upload(
        payload,
        "cat.jpg",
        folder="/bgremove",
        use_unique_file_name=False,
        overwrite_file=True,
        tags=["pets", "cat"],
        extensions=[options.to_extension()],
        webhook_url="https://example.com/hook/tok?x=1",
        custom_metadata={"job": 7},
        description="A cat",
        is_private_file=False,
        response_fields=["tags", "customMetadata"],
    )
    assert result == UPLOADED
    seen = script.seen[0]
    assert seen.method == "POST" and seen.path == UPLOAD_PATH
    assert seen.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(seen.headers["Content-Length"]) == len(seen.body)
    assert "Transfer-Encoding" not in seen.headers
    form, files = parse_multipart(seen)
    assert dict(form) == {
        "fileName": "cat.jpg",
        "folder": "/bgremove",
        "useUniqueFileName": "false",
        "overwriteFile": "true",
        "tags": "pets,cat",
        "isPrivateFile": "false",
        "customMetadata": '{"job":7}',
        "responseFields": "tags,customMetadata",
        "description": "A cat",
        "extensions": json.dumps([options.to_extension()], separators=(",", ":")),
        "webhookUrl": "https://example.com/hook/tok?x=1",
    }
    assert json.loads(form["extensions"]) == [
        {
            "name": "remove-bg",
            "options": {"add_shadow": True, "semitransparency": True, "bg_color": "81d4fa"},
        }
    ]
    assert list(files) == ["file"]
    upload = files["file"]
    assert upload.filename == "cat.jpg"
    assert upload.mimetype == "image/jpeg"
    assert upload.read() == payload


def test_upload_sends_only_fields_that_are_set(client, httpserver):
    script = serve(httpserver, UPLOAD_PATH, Script((200, UPLOADED)))
    client.upload(b"abc", "x.png", extensions=[RemoveBgOptions()])
    form, files = parse_multipart(script.seen[0])
    assert dict(form) == {
        "fileName": "x.png",
        "extensions": (
            '[{"name":"remove-bg","options":{"add_shadow":false,"semitransparency":true}}]'
        ),
    }
    assert files["file"].mimetype == "image/png" and files["file"].read() == b"abc"


def test_upload_from_path_and_unicode_file_name(client, httpserver, tmp_path):
    path = tmp_path / "photo.webp"
    path.write_bytes(b"RIFF" + b"\x00" * 5000)
    script = serve(httpserver, UPLOAD_PATH, Script((200, UPLOADED)))
    client.upload(path, 'ph"öto.webp')
    client.upload(str(path), "p.webp")
    for seen in script.seen:
        _, files = parse_multipart(seen)
        assert files["file"].read() == path.read_bytes()
    form, files = parse_multipart(script.seen[0])
    assert form["fileName"] == 'ph"öto.webp'
    assert files["file"].filename == 'ph"öto.webp'
    assert 'filename="ph%22öto.webp"'.encode() in script.seen[0].body  # escaped as browsers do


def test_upload_django_files(client, httpserver, tmp_path):
    script = serve(httpserver, UPLOAD_PATH, Script((200, UPLOADED)))
    client.upload(SimpleUploadedFile("a.bin", b"uploaded!", content_type="image/gif"), "a.gif")
    client.upload(ContentFile(b"content", name="c.jpg"), "c.jpg")
    path = tmp_path / "d.jpg"
    path.write_bytes(b"from disk")
    with path.open("rb") as handle:
        handle.read(5)  # a seekable file is sent from where it stands
        client.upload(File(handle), "d.jpg")
    bodies = [parse_multipart(seen)[1]["file"] for seen in script.seen]
    assert [f.read() for f in bodies] == [b"uploaded!", b"content", b"disk"]
    assert bodies[0].mimetype == "image/gif"


class OneWayStream(io.RawIOBase):
    """A pipe-like binary stream: readable once, not seekable."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buffer):
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_streaming_upload_of_non_seekable_file_is_retried_whole(client, httpserver, sleeps):
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MB and a bit
    stream = OneWayStream(payload)
    with pytest.raises(OSError):
        stream.seek(0)
    script = serve(
        httpserver,
        UPLOAD_PATH,
        Script((503, {"message": "try again"}, {"x-ik-requestId": "u1"}), (200, UPLOADED)),
    )
    assert client.upload(stream, "big.jpg", tags=["a"]) == UPLOADED
    assert len(script.seen) == 2 and len(sleeps) == 1
    for seen in script.seen:
        assert int(seen.headers["Content-Length"]) == len(seen.body)
        form, files = parse_multipart(seen)
        assert form["tags"] == "a"
        assert files["file"].read() == payload
    assert script.seen[0].body == script.seen[1].body


def test_upload_of_seekable_file_retried_from_its_start(client, httpserver, sleeps):
    handle = io.BytesIO(b"0123456789" * 1000)
    script = serve(
        httpserver, UPLOAD_PATH, Script((500, {"message": "oops"}), (500, {}), (200, UPLOADED))
    )
    client.upload(handle, "n.jpg")
    assert len(script.seen) == 3
    assert {parse_multipart(seen)[1]["file"].read() for seen in script.seen} == {handle.getvalue()}


def test_upload_rejects_text_files_and_bad_tags(client, tmp_path):
    with pytest.raises(TypeError):
        client.upload(io.StringIO("text"), "a.jpg")
    with pytest.raises(TypeError):
        client.upload(12, "a.jpg")
    with pytest.raises(ValueError):
        client.upload(b"x", "a.jpg", tags=["a,b"])
    with pytest.raises(ValueError):
        client.upload(b"x", "")


# --- file details, versions -------------------------------------------------------------------


def test_update_file_details_exact_json(client, httpserver):
    script = serve(
        httpserver,
        "/v1/files/file/1/details",
        Script((200, {"fileId": "file/1"})),
        method="PATCH",
    )
    options = RemoveBgOptions(bg_image_url="https://example.com/bg.png", semitransparency=False)
    result = client.update_file_details(
        "file/1",
        extensions=[options],
        webhook_url="https://example.com/hook",
        tags=["x", "y"],
        custom_metadata={"k": "v"},
        description="d",
        remove_ai_tags="all",
    )
    assert result == {"fileId": "file/1"}
    seen = script.seen[0]
    assert seen.uri == "/v1/files/file%2F1/details"  # the id is one path segment
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {
        "extensions": [
            {
                "name": "remove-bg",
                "options": {
                    "add_shadow": False,
                    "semitransparency": False,
                    "bg_image_url": "https://example.com/bg.png",
                },
            }
        ],
        "webhookUrl": "https://example.com/hook",
        "tags": ["x", "y"],
        "customMetadata": {"k": "v"},
        "description": "d",
        "removeAITags": "all",
    }


def test_update_file_details_sends_only_set_fields(client, httpserver):
    script = serve(httpserver, "/v1/files/abc/details", Script((200, {})), method="PATCH")
    client.update_file_details("abc", extensions=[RemoveBgOptions().to_extension()])
    assert json.loads(script.seen[0].body) == {
        "extensions": [
            {"name": "remove-bg", "options": {"add_shadow": False, "semitransparency": True}}
        ]
    }


def test_get_details_versions_and_restore(client, httpserver):
    details = serve(
        httpserver, "/v1/files/abc/details", Script((200, {"fileId": "abc"})), method="GET"
    )
    versions = serve(
        httpserver,
        "/v1/files/abc/versions",
        Script((200, [{"versionInfo": {"id": "v1"}}])),
        method="GET",
    )
    restore = serve(
        httpserver,
        "/v1/files/abc/versions/v1/restore",
        Script((200, {"fileId": "abc"})),
        method="PUT",
    )
    assert client.get_file_details("abc") == {"fileId": "abc"}
    assert client.list_versions("abc") == [{"versionInfo": {"id": "v1"}}]
    assert client.restore_version("abc", "v1") == {"fileId": "abc"}
    assert [len(s.seen) for s in (details, versions, restore)] == [1, 1, 1]


def test_not_json_success_is_an_error(client, httpserver):
    serve(httpserver, "/v1/files/abc/details", Script((200, "<html>portal</html>")))
    with pytest.raises(ImageKitError) as info:
        client.get_file_details("abc")
    assert "not JSON" in str(info.value)


# --- download ---------------------------------------------------------------------------------


def here(httpserver: HTTPServer) -> list[str]:
    """The test server as the only allowed download host."""
    return [f"{httpserver.host}:{httpserver.port}"]


def test_download_returns_bytes_and_type_without_credentials(client, httpserver):
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 1000
    script = serve(
        httpserver, "/ik/cat.png", Script((200, png, {"Content-Type": "image/png; q=1"}))
    )
    content, content_type = client.download(
        httpserver.url_for("/ik/cat.png?updatedAt=1"),
        max_bytes=2000,
        allowed_hosts=here(httpserver),
    )
    assert content == png and content_type == "image/png"
    assert "Authorization" not in script.seen[0].headers


def test_download_refuses_declared_size_over_limit(client, httpserver):
    serve(httpserver, "/ik/big.png", Script((200, b"x" * 5000, {"Content-Type": "image/png"})))
    with pytest.raises(ResponseTooLargeError) as info:
        client.download(
            httpserver.url_for("/ik/big.png"), max_bytes=4999, allowed_hosts=here(httpserver)
        )
    assert info.value.size == 5000 and info.value.limit == 4999
    assert "limit is 4999 bytes" in str(info.value)
    assert info.value.retryable is False


def test_download_refuses_undeclared_size_over_limit(client, httpserver):
    def endless(request):
        def chunks():
            for _ in range(1000):
                yield b"y" * 10_000

        return Response(chunks(), 200, content_type="image/png")  # no Content-Length

    httpserver.expect_request("/ik/stream.png").respond_with_handler(endless)
    with pytest.raises(ResponseTooLargeError) as info:
        client.download(
            httpserver.url_for("/ik/stream.png"), max_bytes=50_000, allowed_hosts=here(httpserver)
        )
    assert info.value.size is None


def test_download_errors_and_bad_urls(client, httpserver):
    serve(httpserver, "/ik/gone.png", Script((404, "no such image")))
    with pytest.raises(NotFoundError):
        client.download(
            httpserver.url_for("/ik/gone.png"), max_bytes=10, allowed_hosts=here(httpserver)
        )
    with pytest.raises(ValueError):
        client.download("file:///etc/passwd", max_bytes=10, allowed_hosts=here(httpserver))


# --- construction and get_client --------------------------------------------------------------


def test_client_reads_settings(settings):
    settings.IMAGEKIT_BGREMOVE = {
        "PRIVATE_KEY": "private_real",
        "API_BASE_URL": "https://api.example/",
        "CONNECT_TIMEOUT": 2,
        "READ_TIMEOUT": 9,
        "MAX_RETRIES": 5,
    }
    client = ImageKitClient(backoff=0.2)
    assert client.api_base_url == "https://api.example"
    assert client.upload_base_url == "https://upload.imagekit.io"
    assert client.timeout == (2.0, 9.0)
    assert client.max_retries == 5 and client.backoff == 0.2
    assert "private_real" not in repr(client)


def test_get_client_cached_per_settings(settings):
    settings.IMAGEKIT_BGREMOVE = {"PRIVATE_KEY": "private_a"}
    first = get_client()
    assert get_client() is first
    settings.IMAGEKIT_BGREMOVE = {"PRIVATE_KEY": "private_b"}
    second = get_client()
    assert second is not first and first.closed
    settings.IMAGEKIT_BGREMOVE = {"PRIVATE_KEY": "private_b", "MAX_RETRIES": 0}
    assert get_client() is not second


def test_get_client_talks_to_the_emulator_only_at_its_url(settings):
    settings.IMAGEKIT_BGREMOVE = {"EMULATOR_URL": "http://127.0.0.1:9999/"}
    client = get_client()
    assert client.api_base_url == client.upload_base_url == "http://127.0.0.1:9999"
    settings.IMAGEKIT_BGREMOVE = {"PRIVATE_KEY": "private_real", "EMULATOR_URL": "http://x:1"}
    client = get_client()  # a key means ImageKit, whatever else is set
    assert client.api_base_url == "https://api.imagekit.io"


def test_get_client_refuses_when_no_imagekit_is_configured(settings):
    settings.IMAGEKIT_BGREMOVE = {"WEBHOOK_BASE_URL": "http://testserver"}
    with pytest.raises(ImproperlyConfigured, match=r"PRIVATE_KEY.*EMULATOR_URL"):
        get_client()


def test_delete_file_at_the_emulator_and_a_file_already_gone_counts_as_deleted(emulator):
    client = get_client()
    file_id = client.upload(b"GIF89a" + b"\0" * 64, "gone.gif")["fileId"]
    client.delete_file(file_id)
    with pytest.raises(NotFoundError):
        client.get_file_details(file_id)
    client.delete_file(file_id)  # a rerun after a lost answer finds it gone


def test_delete_file_raises_other_refusals(client, httpserver):
    serve(
        httpserver,
        "/v1/files/abc",
        Script((403, {"message": "Your account cannot be authenticated."}, {})),
        method="DELETE",
    )
    with pytest.raises(AuthenticationError):
        client.delete_file("abc")
