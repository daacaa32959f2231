"""The ImageKit emulator's HTTP API: upload, file details, versions, restore, delivery, auth,
errors, persistence, the CLI and the embedded starter. Plain pytest, real HTTP."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from imagekit_emulator import Emulator, EmulatorConfig
from imagekit_emulator.testing import running_emulator, sample_image

UPLOAD = "/api/v1/files/upload"
HELP = "For support kindly contact us at support@imagekit.io."
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared():
    with running_emulator() as emulator:
        yield emulator


@pytest.fixture
def ik(shared):
    shared.reset()
    return shared


def upload(ik, data=None, *, name="photo.jpg", files=None, auth=True, **fields):
    payload = {"fileName": name, **{k: v for k, v in fields.items() if v is not None}}
    if files is None:
        files = {"file": (name, sample_image() if data is None else data, "image/jpeg")}
    return requests.post(
        ik.url + UPLOAD, data=payload, files=files, auth=ik.auth if auth else None, timeout=10
    )


def api(ik, method, path, **kwargs):
    kwargs.setdefault("auth", ik.auth)
    return requests.request(method, ik.url + path, timeout=10, **kwargs)


# ----------------------------------------------------------------------------- basics


def test_emulator_imports_without_django():
    code = (
        "import sys; import imagekit_emulator, imagekit_emulator.__main__, "
        "imagekit_emulator.testing; print('django' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_health_needs_no_auth_and_every_response_has_a_request_id(ik):
    health = requests.get(ik.url + "/_emulator/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["emulator"] is True
    responses = [
        health,
        api(ik, "GET", "/v1/files/nope/details"),
        api(ik, "GET", "/v1/files/nope/details", auth=None),
        requests.get(ik.url + "/ik/missing.jpg", timeout=5),
        requests.get(ik.url + "/nothing/here", timeout=5),
    ]
    ids = [r.headers.get("x-ik-requestId") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)


def test_auth_missing_401_wrong_403_password_ignored(ik):
    missing = upload(ik, auth=False)
    assert missing.status_code == 401
    assert missing.json() == {
        "message": "Your request does not contain private API key.",
        "help": HELP,
    }
    wrong = api(ik, "GET", "/v1/files/abc/details", auth=("someone_else", ""))
    assert wrong.status_code == 403
    assert wrong.json()["message"] == "Your account cannot be authenticated."
    bearer = api(
        ik,
        "GET",
        "/v1/files/abc/details",
        auth=None,
        headers={"Authorization": "Bearer " + ik.private_key},
    )
    assert bearer.status_code == 403
    garbage = api(
        ik, "GET", "/v1/files/abc/details", auth=None, headers={"Authorization": "Basic %%%"}
    )
    assert garbage.status_code == 403
    with_password = api(ik, "GET", "/v1/files/abc/details", auth=(ik.private_key, "whatever"))
    assert with_password.status_code == 404


# ----------------------------------------------------------------------------- upload


def test_upload_returns_the_upload_object_and_the_file_is_delivered(ik):
    data = sample_image()
    r = upload(ik, data, name="my photo.jpg", folder="/products/shoes")
    assert r.status_code == 200, r.text
    body = r.json()
    assert re.fullmatch(r"my_photo_[A-Za-z0-9]{9}\.jpg", body["name"])
    assert body["filePath"] == "/products/shoes/" + body["name"]
    assert body["url"] == ik.url_endpoint + body["filePath"]
    assert body["thumbnailUrl"] == f"{ik.url_endpoint}/tr:n-ik_ml_thumbnail{body['filePath']}"
    assert re.fullmatch(r"[0-9a-f]{24}", body["fileId"])
    assert body["versionInfo"] == {"id": body["fileId"], "name": "Version 1"}
    assert (body["width"], body["height"], body["size"]) == (200, 150, len(data))
    assert body["fileType"] == "image"
    assert body["AITags"] is None
    assert "extensionStatus" not in body
    assert "tags" not in body  # only with responseFields
    served = requests.get(body["url"] + "?updatedAt=123", timeout=5)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/jpeg"
    assert served.content == data
    thumb = requests.get(body["thumbnailUrl"], timeout=5)
    assert thumb.status_code == 200 and thumb.content == data
    head = requests.head(body["url"], timeout=5)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))


def test_upload_response_fields_tags_and_metadata(ik):
    r = upload(
        ik,
        tags="a, b,c",
        customMetadata=json.dumps({"brand": "Nike"}),
        description="red ball",
        isPrivateFile="true",
        customCoordinates="1,2,3,4",
        responseFields="tags,customMetadata,isPrivateFile,customCoordinates,isPublished",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["a", "b", "c"]
    assert body["customMetadata"] == {"brand": "Nike"}
    assert body["isPrivateFile"] is True
    assert body["isPublished"] is True
    assert body["customCoordinates"] == "1,2,3,4"
    assert body["description"] == "red ball"


def test_any_file_type_is_accepted_without_extensions(ik):
    r = upload(ik, name="notes.txt", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fileType"] == "non-image"
    assert "width" not in body
    details = api(ik, "GET", f"/v1/files/{body['fileId']}/details").json()
    assert details["mime"] == "text/plain"
    served = requests.get(body["url"], timeout=5)
    assert served.content == b"hello" and served.headers["Content-Type"] == "text/plain"


def test_upload_accepts_base64_data_uri_and_trusted_url(ik):
    data = sample_image(fmt="PNG")
    plain = upload(ik, files={}, file=base64.b64encode(data).decode(), name="a.png")
    assert plain.status_code == 200, plain.text
    assert plain.json()["size"] == len(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert upload(ik, files={}, file=uri, name="b.png").json()["size"] == len(data)
    by_url = upload(ik, files={}, file=plain.json()["url"], name="c.png")
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["size"] == len(data)
    untrusted = upload(ik, files={}, file="http://example.com/a.png", name="d.png")
    assert untrusted.status_code == 400
    assert "not trusted" in untrusted.json()["message"]
    nonsense = upload(ik, files={}, file="this is not base64!", name="e.png")
    assert nonsense.status_code == 400
    assert nonsense.json()["message"].startswith("Your request contains invalid file parameter.")


def test_upload_with_chunked_body(ik):
    data = sample_image()
    boundary = "XyZ123boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="fileName"\r\n\r\nc.jpg\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = requests.post(
        ik.url + UPLOAD,
        data=chunks(),
        auth=ik.auth,
        timeout=10,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(data)


def test_missing_file_or_file_name(ik):
    no_file = requests.post(
        ik.url + UPLOAD,
        data={"fileName": "a.jpg"},
        auth=ik.auth,
        files={"other": ("x", b"x")},
        timeout=5,
    )
    assert no_file.status_code == 400
    assert no_file.json() == {"message": "Your request is missing file parameter.", "help": HELP}
    no_name = requests.post(
        ik.url + UPLOAD, files={"file": ("a.jpg", sample_image())}, auth=ik.auth, timeout=5
    )
    assert no_name.status_code == 400
    assert no_name.json()["message"] == "Your request is missing fileName parameter."
    bad_bool = upload(ik, useUniqueFileName="maybe")
    assert bad_bool.status_code == 400
    assert "useUniqueFileName" in bad_bool.json()["message"]
    bad_meta = upload(ik, customMetadata="{nope")
    assert bad_meta.status_code == 400
    assert bad_meta.json()["message"] == "Invalid custom metadata."


def test_file_too_large_is_400():
    with running_emulator(max_upload_bytes=2000) as small:
        r = upload(small, b"x" * 2001, name="big.bin")
        assert r.status_code == 400
        assert r.json()["message"] == (
            "Your request contains invalid file parameter. The file size exceeds limits."
        )
        as_base64 = upload(small, files={}, file=base64.b64encode(b"x" * 2500).decode())
        assert as_base64.status_code == 400
        assert upload(small, b"x" * 2000, name="ok.bin").status_code == 200
        assert requests.get(small.url + "/_emulator/health", timeout=5).status_code == 200


def test_unique_names_by_default_and_overwrite_makes_versions(ik):
    first = upload(ik, name="same.jpg").json()
    second = upload(ik, name="same.jpg").json()
    assert first["fileId"] != second["fileId"] and first["name"] != second["name"]

    original = sample_image(colour=(0, 0, 255))
    replacement = sample_image(colour=(0, 255, 0))
    a = upload(ik, original, name="fixed.jpg", useUniqueFileName="false").json()
    assert a["name"] == "fixed.jpg" and a["filePath"] == "/fixed.jpg"
    b = upload(ik, replacement, name="fixed.jpg", useUniqueFileName="false").json()
    assert b["fileId"] == a["fileId"]
    assert b["versionInfo"]["name"] == "Version 2"
    assert b["versionInfo"]["id"] != a["versionInfo"]["id"]
    assert requests.get(b["url"], timeout=5).content == replacement

    refused = upload(ik, name="fixed.jpg", useUniqueFileName="false", overwriteFile="false")
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("A file with the same name already exists")

    versions = api(ik, "GET", f"/v1/files/{a['fileId']}/versions").json()
    assert [v["versionInfo"]["name"] for v in versions] == ["Version 1", "Version 2"]
    assert [v["type"] for v in versions] == ["file-version", "file"]
    old = versions[0]
    assert f"ik-obj-version={a['versionInfo']['id']}" in old["url"]
    assert requests.get(old["url"], timeout=5).content == original

    state = ik.state()
    assert state["uploadsByFileName"] == {"same.jpg": 2, "fixed.jpg": 3}
    [fixed] = [f for f in state["files"] if f["filePath"] == "/fixed.jpg"]
    assert [v["source"] for v in fixed["versions"]] == ["upload", "overwrite"]


def test_overwrite_drops_tags_unless_told_to_keep_them(ik):
    upload(ik, name="t.jpg", useUniqueFileName="false", tags="keep")
    dropped = upload(ik, name="t.jpg", useUniqueFileName="false", responseFields="tags").json()
    assert dropped["tags"] is None
    upload(ik, name="t.jpg", useUniqueFileName="false", tags="x")
    kept = upload(
        ik, name="t.jpg", useUniqueFileName="false", overwriteTags="false", responseFields="tags"
    ).json()
    assert kept["tags"] == ["x"]


# ----------------------------------------------------------------------------- extensions


def test_extension_validation_against_the_spec_schema(ik):
    """What ImageKit's OpenAPI schema for ``extensions`` refuses is a synchronous 400 with
    ImageKit's error body; nothing is stored."""

    def ext(value, data=None, **kw):
        return upload(
            ik, data, extensions=value if isinstance(value, str) else json.dumps(value), **kw
        )

    def refused(response, *words):
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["help"] == HELP and body["message"].startswith(
            "Your request contains invalid extensions parameter"
        ), body
        for word in words:
            assert word in body["message"], body
        return body

    assert ext("[not json").status_code == 400
    refused(ext({"name": "remove-bg"}), "array")  # not an array
    refused(ext([{"name": "remove-everything"}]), "remove-everything")
    refused(ext(["remove-bg"]))  # an item must be an object
    body = refused(ext([{"name": "remove-bg", "options": {"add_shadow": "yes"}}]), "add_shadow")
    assert body["errors"] == {"remove-bg.add_shadow": ["must be a boolean"]}
    refused(ext([{"name": "remove-bg", "options": {"bg_color": 5}}]), "bg_color")
    refused(ext([{"name": "remove-bg", "options": "none"}]), "options")
    refused(ext([{"name": "google-auto-tagging", "minConfidence": "high", "maxTags": 5}]))
    refused(ext([{"name": "google-auto-tagging", "maxTags": 5}]), "minConfidence")
    refused(ext([{"name": "ai-tasks", "tasks": []}]), "tasks")
    # Valid per the spec, but the emulator has no AI tasks: refused, saying so.
    task = {"type": "yes_no", "instruction": "Is it red?"}
    tasks = ext([{"name": "ai-tasks", "tasks": [task]}])
    assert tasks.status_code == 400 and "not supported" in tasks.json()["message"]
    twice = ext([{"name": "remove-bg"}, {"name": "remove-bg"}])
    assert twice.status_code == 400
    bad_hook = upload(ik, webhookUrl="ftp://example.com/x")
    assert bad_hook.status_code == 400
    assert ik.state()["files"] == []  # nothing was stored by the refused requests
    assert ik.state()["removeBgRunCount"] == 0


@pytest.mark.parametrize(
    ("extension", "data", "reason"),
    [
        # remove-bg options go "to remove.bg as it is": what remove.bg refuses fails the job.
        ({"options": {"bg_color": "notacolour"}}, None, "invalid_bg_color"),
        (
            {"options": {"bg_color": "fff", "bg_image_url": "http://127.0.0.1/x.png"}},
            None,
            "conflicting_background",
        ),
        ({"options": {"bg_image_url": "not a url"}}, None, "invalid_bg_image_url"),
        # Any file is stored; remove-bg then cannot read it.
        ({}, b"plain text", "invalid_image"),
        ({}, "corrupt", "invalid_image"),
    ],
)
def test_what_remove_bg_refuses_is_a_failure_callback(ik, extension, data, reason):
    from imagekit_emulator.testing import CallbackReceiver

    if data == "corrupt":
        data = sample_image()[:300]
    with CallbackReceiver() as hooks:
        r = upload(
            ik,
            data,
            name="a.txt" if data == b"plain text" else "a.jpg",
            extensions=json.dumps([{"name": "remove-bg", **extension}]),
            webhookUrl=hooks.url,
        )
        assert r.status_code == 200, r.text
        assert r.json()["extensionStatus"] == {"remove-bg": "pending"}
        assert ik.wait_idle(20)
        [call] = hooks.requests
    body = call.json()
    assert body["status"] == "FAILURE" and body["fileId"] == r.json()["fileId"]
    assert body["error"]["reason"] == reason, body
    [file] = ik.state()["files"]
    assert len(file["versions"]) == 1


def test_unknown_remove_bg_options_pass_through(ik):
    """The schema does not close ``options``; remove.bg has more options than ImageKit
    documents (``size``...): the emulator passes them on and ignores them."""
    r = upload(ik, extensions=json.dumps([{"name": "remove-bg", "options": {"size": "full"}}]))
    assert r.status_code == 200, r.text
    assert ik.wait_idle(20)
    [job] = ik.state()["jobs"]
    assert job["status"] == "success"
    assert job["requestedOptions"] == {"size": "full"}


def test_extension_statuses(ik):
    r = upload(
        ik,
        extensions=json.dumps(
            [
                {"name": "google-auto-tagging", "minConfidence": 80, "maxTags": 5},
                {"name": "ai-auto-description"},
                {"name": "remove-bg", "options": {"add_shadow": False}},
            ]
        ),
    )
    assert r.status_code == 200, r.text
    assert r.json()["extensionStatus"] == {
        "google-auto-tagging": "success",
        "ai-auto-description": "success",
        "remove-bg": "pending",
    }
    assert ik.wait_idle(20)
    [job] = ik.state()["jobs"]
    assert job["status"] == "success" and job["webhookUrl"] is None
    assert ik.state()["callbacks"] == []


def test_extension_quota():
    with running_emulator(extension_quota_units=130) as small:
        first = upload(small, extensions=json.dumps([{"name": "remove-bg"}]))
        assert first.json()["extensionStatus"] == {"remove-bg": "pending"}
        second = upload(small, extensions=json.dumps([{"name": "remove-bg"}]))
        assert second.status_code == 400
        assert second.json()["message"] == "Extensions quota exceeded."
        file_id = first.json()["fileId"]
        patch = api(
            small,
            "PATCH",
            f"/v1/files/{file_id}/details",
            json={"extensions": [{"name": "remove-bg"}]},
        )
        assert patch.status_code == 400
        assert patch.json()["message"] == "Extensions quota exceeded."
        assert upload(small).status_code == 200  # plain uploads need no units
        assert small.wait_idle(20)
        assert small.state()["quota"] == {"used": 130, "limit": 130}


# ----------------------------------------------------------------------------- details


def test_get_details_and_404(ik):
    uploaded = upload(ik, tags="x").json()
    details = api(ik, "GET", f"/v1/files/{uploaded['fileId']}/details")
    assert details.status_code == 200
    body = details.json()
    assert body["fileId"] == uploaded["fileId"] and body["type"] == "file"
    assert body["mime"] == "image/jpeg" and body["hasAlpha"] is False
    assert body["tags"] == ["x"]
    assert re.fullmatch(re.escape(uploaded["url"]) + r"\?updatedAt=\d+", body["url"])
    assert body["thumbnail"] == body["url"] + "&tr=n-ik_ml_thumbnail"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["createdAt"])
    for key in (
        "versionInfo",
        "isPrivateFile",
        "isPublished",
        "customCoordinates",
        "width",
        "height",
        "size",
        "customMetadata",
        "updatedAt",
        "AITags",
        "fileType",
    ):
        assert key in body
    missing = api(ik, "GET", "/v1/files/000000000000000000000000/details")
    assert missing.status_code == 404
    assert missing.json() == {"message": "The requested file does not exist.", "help": HELP}
    invalid = api(ik, "GET", "/v1/files/not%20an%20id/details")
    assert invalid.status_code == 400


def test_update_details(ik):
    uploaded = upload(ik, tags="old", customMetadata=json.dumps({"a": 1, "b": 2})).json()
    path = f"/v1/files/{uploaded['fileId']}/details"
    r = api(
        ik,
        "PATCH",
        path,
        json={
            "tags": ["new", "tags"],
            "customMetadata": {"a": None, "c": 3},
            "description": "described",
            "customCoordinates": "10,10,100,100",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["new", "tags"]
    assert body["customMetadata"] == {"b": 2, "c": 3}
    assert body["description"] == "described"
    assert body["customCoordinates"] == "10,10,100,100"
    assert "extensionStatus" not in body
    assert body["versionInfo"]["name"] == "Version 1"  # metadata changes make no version
    assert api(ik, "GET", path).json()["tags"] == ["new", "tags"]

    with_ext = api(ik, "PATCH", path, json={"extensions": [{"name": "remove-bg"}]})
    assert with_ext.json()["extensionStatus"] == {"remove-bg": "pending"}
    assert ik.wait_idle(20)

    bad_json = api(ik, "PATCH", path, data=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    bad_tags = api(ik, "PATCH", path, json={"tags": "not-a-list"})
    assert bad_tags.status_code == 400 and "tags" in bad_tags.json()["errors"]
    bad_options = api(
        ik, "PATCH", path, json={"extensions": [{"name": "remove-bg", "options": {"bg_color": 5}}]}
    )
    assert bad_options.status_code == 400
    assert "remove-bg.bg_color" in bad_options.json()["errors"]
    missing = api(ik, "PATCH", "/v1/files/000000000000000000000000/details", json={"tags": []})
    assert missing.status_code == 404
    assert missing.json()["message"] == "The requested file does not exist."


def test_versions_and_restore(ik):
    first = sample_image(colour=(10, 10, 200))
    a = upload(ik, first, name="r.jpg", useUniqueFileName="false").json()
    upload(ik, sample_image(colour=(10, 200, 10)), name="r.jpg", useUniqueFileName="false")
    file_id, v1 = a["fileId"], a["versionInfo"]["id"]
    one = api(ik, "GET", f"/v1/files/{file_id}/versions/{v1}")
    assert one.status_code == 200 and one.json()["type"] == "file-version"
    assert api(ik, "GET", f"/v1/files/{file_id}/versions/{'f' * 24}").json() == {
        "message": "The requested file version does not exist.",
        "help": HELP,
    }
    assert api(ik, "GET", f"/v1/files/{'0' * 24}/versions").status_code == 404

    restored = api(ik, "PUT", f"/v1/files/{file_id}/versions/{v1}/restore")
    assert restored.status_code == 200, restored.text
    body = restored.json()
    # Restoring makes the old version current again; it creates no new version.
    assert body["versionInfo"] == {"id": v1, "name": "Version 1"}
    assert body["type"] == "file"
    assert len(api(ik, "GET", f"/v1/files/{file_id}/versions").json()) == 2
    assert requests.get(a["url"], timeout=5).content == first
    assert api(ik, "GET", f"/v1/files/{file_id}/details").json()["versionInfo"]["id"] == v1
    assert api(ik, "PUT", f"/v1/files/{file_id}/versions/{'e' * 24}/restore").status_code == 404
    wrong_method = api(ik, "POST", f"/v1/files/{file_id}/versions/{v1}/restore")
    assert wrong_method.status_code == 405


def test_version_limit():
    with running_emulator(max_versions=2) as small:
        a = upload(small, name="v.jpg", useUniqueFileName="false").json()
        assert upload(small, name="v.jpg", useUniqueFileName="false").status_code == 200
        third = upload(small, name="v.jpg", useUniqueFileName="false")
        assert third.status_code == 400
        assert "maximum of 100 versions" in third.json()["message"]
        patch = api(
            small,
            "PATCH",
            f"/v1/files/{a['fileId']}/details",
            json={"extensions": [{"name": "remove-bg"}]},
        )
        assert patch.json()["extensionStatus"] == {"remove-bg": "failed"}
        assert small.state()["jobs"] == []


def test_delivery_404s(ik):
    assert requests.get(ik.url + "/ik/nothing.jpg", timeout=5).status_code == 404
    a = upload(ik).json()
    assert requests.get(a["url"] + "?ik-obj-version=" + "1" * 24, timeout=5).status_code == 404
    assert requests.get(a["url"] + "?tr=w-100", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- robustness


def _raw(ik, payload: bytes) -> bytes:
    with socket.create_connection((ik.host, ik.port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_requests_never_crash_the_server(ik):
    auth = {"Authorization": "Basic " + base64.b64encode(f"{ik.private_key}:".encode()).decode()}
    multipart = {"Content-Type": "multipart/form-data; boundary=abc", **auth}
    cases = [
        (b"garbage", multipart),
        (b"--abc\r\nno headers end", multipart),
        (b"--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--", multipart),
        (b'--abc\r\nContent-Disposition: form-data; name="file"\r\n\r\nunterminated', multipart),
        (b"--abc\r\nX: y\r\n\r\nbody\r\n--abc--\r\n", multipart),
        (b"--abc--", multipart),
        (b"x" * 1000, {"Content-Type": "multipart/form-data", **auth}),
        (b"\x00\xff" * 500, {"Content-Type": "application/octet-stream", **auth}),
        (b"fileName=a.jpg", {"Content-Type": "application/x-www-form-urlencoded", **auth}),
    ]
    for body, headers in cases:
        r = requests.post(ik.url + UPLOAD, data=body, headers=headers, timeout=5)
        assert r.status_code == 400, (body[:40], r.status_code, r.text)
        assert "message" in r.json()
    for body in (b"[1, 2", b"\xff\xfe", b"null", b"[]", b'{"extensions": "remove-bg"}'):
        a = upload(ik).json()
        r = api(
            ik,
            "PATCH",
            f"/v1/files/{a['fileId']}/details",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, (body, r.text)
    assert b"400" in _raw(ik, b"NOT HTTP AT ALL\r\n\r\n").split(b"\r\n")[0]
    assert b"400" in _raw(ik, b"POST /api/v1/files/upload HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    _raw(ik, b"POST /api/v1/files/upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\nshort")
    _raw(ik, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert _raw(ik, b"") == b""
    put = requests.put(ik.url + "/_emulator/faults", data=b"{bad", timeout=5)
    assert put.status_code == 400
    assert requests.get(ik.url + "/_emulator/health", timeout=5).status_code == 200
    assert upload(ik).status_code == 200


# ----------------------------------------------------------------------------- persistence


def test_state_survives_a_restart_with_data_dir(tmp_path):
    with running_emulator(data_dir=str(tmp_path)) as first:
        data = sample_image()
        a = upload(first, data, name="keep.jpg", useUniqueFileName="false").json()
        upload(first, sample_image(colour=(0, 0, 0)), name="keep.jpg", useUniqueFileName="false")
        port = first.port
    assert (tmp_path / "index.json").exists()
    with running_emulator(data_dir=str(tmp_path), port=port) as second:
        details = api(second, "GET", f"/v1/files/{a['fileId']}/details")
        assert details.status_code == 200
        assert details.json()["versionInfo"]["name"] == "Version 2"
        versions = api(second, "GET", f"/v1/files/{a['fileId']}/versions").json()
        assert requests.get(versions[0]["url"], timeout=5).content == data
        assert second.state()["uploadsByFileName"] == {"keep.jpg": 2}
        second.reset()
    with running_emulator(data_dir=str(tmp_path)) as third:
        assert third.state()["files"] == []


# ----------------------------------------------------------------------------- CLI


def test_cli_starts_and_prints_its_line(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imagekit_emulator",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--data-dir",
            str(tmp_path),
            "--error-rate-5xx",
            "0",
            "--seed",
            "3",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        match = re.fullmatch(
            r"ImageKit emulator listening on (http://127\.0\.0\.1:(\d+)) "
            r"\(url endpoint (http://127\.0\.0\.1:\d+/ik)\)",
            line,
        )
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = match.group(1)
        assert match.group(3) == url + "/ik"
        assert requests.get(url + "/_emulator/health", timeout=5).json()["emulator"] is True
        assert requests.get(url + "/_emulator/faults", timeout=5).json()["_seed"] == 3
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_cli_flags_become_config():
    from imagekit_emulator.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "--port",
            "0",
            "--webhook-secret",
            "whsec_a",
            "--webhook-secret",
            "whsec_b",
            "--trust-host",
            "cdn.example.com",
            "--extension-quota-units",
            "260",
            "--webhook-delay-seconds",
            "0.1,0.2",
            "--webhook-reorder",
            "--drop-rate",
            "0.5",
            "--faults",
            '{"error_rate_5xx": 0.25}',
            "--rate-limit-upload",
        ]
    )
    config = config_from_args(args)
    assert config.webhook_secrets == ("whsec_a", "whsec_b")
    assert config.trust_hosts == ("cdn.example.com",)
    assert config.extension_quota_units == 260
    assert config.faults.delay_seconds == (0.1, 0.2)
    assert config.faults.reorder is True and config.faults.rate_limit_upload is True
    assert config.faults.drop_rate == 0.5 and config.faults.error_rate_5xx == 0.25
    with pytest.raises(SystemExit):
        config_from_args(build_parser().parse_args(["--drop-rate", "2"]))


def test_emulator_lifecycle_leaves_no_threads():
    import threading

    before = {t.ident for t in threading.enumerate()}
    emulator = Emulator(EmulatorConfig(port=0))
    with emulator:
        session = requests.Session()  # keeps a connection open that stop() must close
        assert session.get(emulator.url + "/_emulator/health", timeout=5).status_code == 200
        assert upload(emulator).status_code == 200
    assert not emulator.running
    time.sleep(0.05)
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []
    session.close()
    with pytest.raises(RuntimeError):
        emulator.start()


def test_png_with_alpha_is_reported(ik):
    im = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    r = upload(ik, buffer.getvalue(), name="alpha.png").json()
    details = api(ik, "GET", f"/v1/files/{r['fileId']}/details").json()
    assert details["mime"] == "image/png" and details["hasAlpha"] is True


def test_delete_file_removes_every_version_and_then_404s(tmp_path):
    with running_emulator(data_dir=str(tmp_path)) as ik:
        a = upload(ik, name="gone.jpg", useUniqueFileName="false").json()
        upload(ik, sample_image(colour=(0, 0, 0)), name="gone.jpg", useUniqueFileName="false")
        kept = upload(ik, name="kept.jpg").json()
        deleted = api(ik, "DELETE", f"/v1/files/{a['fileId']}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert api(ik, "GET", f"/v1/files/{a['fileId']}/details").status_code == 404
        assert requests.get(a["url"], timeout=5).status_code == 404
        again = api(ik, "DELETE", f"/v1/files/{a['fileId']}")
        assert again.status_code == 404
        assert again.json() == {"message": "The requested file does not exist.", "help": HELP}
        assert api(ik, "DELETE", "/v1/files/not%20an%20id").status_code == 400
        assert api(ik, "DELETE", f"/v1/files/{kept['fileId']}", auth=None).status_code == 401
        port = ik.port
    assert len(list((tmp_path / "blobs").iterdir())) == 1  # only kept.jpg's bytes are left
    with running_emulator(data_dir=str(tmp_path), port=port) as restarted:
        assert api(restarted, "GET", f"/v1/files/{a['fileId']}/details").status_code == 404
        assert api(restarted, "GET", f"/v1/files/{kept['fileId']}/details").status_code == 200
        # The path is free again, as after a real deletion.
        again = upload(restarted, name="gone.jpg", useUniqueFileName="false").json()
        assert again["fileId"] != a["fileId"]
