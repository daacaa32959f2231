"""ImageKitClient.list_files and find_file against a real local server (pytest-httpserver)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from pytest_httpserver import HTTPServer

from imagekit_bgremove.client import ImageKitClient
from imagekit_bgremove.exceptions import ImageKitError, RateLimitedError
from tests.test_client import KEY, Script, serve


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
        max_retries=2,
        backoff=0.01,
        backoff_max=5,
        sleep=sleeps.append,
    ) as client:
        yield client


def query_of(script: Script, index: int = 0) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(script.seen[index].uri).query, keep_blank_values=True)


def item(name: str, file_path: str, type_: str = "file", file_id: str = "id") -> dict:
    return {"fileId": file_id, "type": type_, "name": name, "filePath": file_path}


# --- list_files -------------------------------------------------------------------------------


def test_list_files_sends_only_the_given_parameters(client, httpserver):
    listing = [item("a.jpg", "/a.jpg")]
    script = serve(httpserver, "/v1/files", Script((200, listing)), method="GET")
    assert client.list_files() == listing
    assert script.seen[0].uri == "/v1/files"
    client.list_files(
        path="/bg remove/", search_query='name = "a b.jpg"', file_type="image", limit=10, skip=0
    )
    assert query_of(script, 1) == [
        ("path", "/bg remove/"),
        ("searchQuery", 'name = "a b.jpg"'),
        ("fileType", "image"),
        ("limit", "10"),
        ("skip", "0"),
    ]
    assert "+" not in script.seen[1].uri  # spaces travel as %20
    assert script.seen[1].headers["Authorization"].startswith("Basic ")


def test_list_files_validates_limit_and_skip(client):
    for kwargs in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"skip": -1}, {"skip": "1"}):
        with pytest.raises(ValueError):
            client.list_files(**kwargs)


def test_list_files_retries_rate_limits_and_refuses_odd_answers(client, httpserver, sleeps):
    script = serve(
        httpserver,
        "/v1/files",
        Script((429, {"message": "Rate limit"}, {"X-RateLimit-Reset": "5"}), (200, [])),
    )
    assert client.list_files(path="/") == [] and len(script.seen) == 2
    httpserver.clear()
    serve(httpserver, "/v1/files", Script((200, {"message": "not a list"})))
    with pytest.raises(ImageKitError) as info:
        client.list_files()
    assert not isinstance(info.value, RateLimitedError) and "not a list" in str(info.value)


# --- find_file --------------------------------------------------------------------------------


def test_find_file_searches_the_folder_for_the_exact_name(client, httpserver):
    wanted = item("cat.jpg", "/bgremove/pets/cat.jpg", file_id="right")
    answer = [
        item("cat.jpg", "/bgremove/pets/old/cat.jpg", file_id="subfolder"),
        item("cat.jpg", "/bgremove/cat.jpg", file_id="parent"),
        item("cat.jpg", "/bgremove/pets/cat.jpg", type_="file-version", file_id="version"),
        {"folderId": "f", "type": "folder", "name": "cat.jpg", "folderPath": "/bgremove/pets"},
        item("Cat.jpg", "/bgremove/pets/Cat.jpg", file_id="case"),
        item("cat.jpg.png", "/bgremove/pets/cat.jpg.png", file_id="longer"),
        wanted,
    ]
    script = serve(httpserver, "/v1/files", Script((200, answer)), method="GET")
    assert client.find_file("bgremove//pets/", "cat.jpg") == wanted
    assert query_of(script) == [("path", "/bgremove/pets/"), ("searchQuery", 'name = "cat.jpg"')]


def test_find_file_returns_none_without_an_exact_match(client, httpserver):
    answer = [item("cat.jpg", "/other/cat.jpg"), item("cat_1.jpg", "/pets/cat_1.jpg")]
    serve(httpserver, "/v1/files", Script((200, answer)))
    assert client.find_file("/pets", "cat.jpg") is None


def test_find_file_in_the_root_folder(client, httpserver):
    root = item("a.jpg", "/a.jpg", file_id="root")
    script = serve(httpserver, "/v1/files", Script((200, [item("a.jpg", "/x/a.jpg"), root])))
    assert client.find_file("/", "a.jpg") == root
    assert client.find_file("", "a.jpg") == root
    assert query_of(script)[0] == ("path", "/")


def test_find_file_escapes_quotes_and_backslashes(client, httpserver):
    name = 'say "hi" \\ bye.jpg'
    match = item(name, f"/q/{name}")
    script = serve(httpserver, "/v1/files", Script((200, [match])))
    assert client.find_file("/q", name) == match
    assert dict(query_of(script))["searchQuery"] == 'name = "say \\"hi\\" \\\\ bye.jpg"'


def test_find_file_rejects_names_that_cannot_be_files(client):
    for bad in ("", "a/b.jpg", "a\nb.jpg", None):
        with pytest.raises(ValueError):
            client.find_file("/x", bad)
