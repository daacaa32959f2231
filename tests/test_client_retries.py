"""Which failures ImageKitClient retries: rate limits answered as 400, and requests that start a
paid extension run (never re-sent once they may have reached ImageKit). Real local servers only."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer

from imagekit_bgremove.client import ImageKitClient
from imagekit_bgremove.exceptions import (
    BadRequestError,
    ImageKitError,
    RateLimitedError,
    TooManyUpdatesError,
)
from imagekit_bgremove.options import RemoveBgOptions
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


def test_maybe_applied_defaults_to_false():
    assert ImageKitError("x").maybe_applied is False
    assert ImageKitError("x", maybe_applied=True).maybe_applied is True
