"""``GET /v1/files``: list and search, as the app uses it to find out whether an upload whose
answer was lost was stored (by its deterministic name in its folder). Over HTTP only."""

from __future__ import annotations

import pytest
import requests

from imagekit_emulator.testing import running_emulator, sample_image

UPLOAD = "/api/v1/files/upload"
HELP = "For support kindly contact us at support@imagekit.io."


@pytest.fixture(scope="module")
def ik():
    with running_emulator() as emulator:
        files = {}
        for name, folder, data in [
            ("job-1.jpg", "/removal", sample_image()),
            ("job-2.jpg", "/removal", sample_image(colour=(0, 0, 255))),
            ("job-10.png", "/removal/archive", sample_image(fmt="PNG")),
            ("notes.txt", "/removal", b"text"),
            ("other.jpg", "/", sample_image()),
        ]:
            r = requests.post(
                emulator.url + UPLOAD,
                auth=emulator.auth,
                data={"fileName": name, "folder": folder, "useUniqueFileName": "false"},
                files={"file": (name, data)},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            files[name] = r.json()
        # A second version of job-1.jpg.
        requests.post(
            emulator.url + UPLOAD,
            auth=emulator.auth,
            data={"fileName": "job-1.jpg", "folder": "/removal", "useUniqueFileName": "false"},
            files={"file": ("job-1.jpg", sample_image(colour=(0, 200, 0)))},
            timeout=10,
        ).raise_for_status()
        emulator.uploaded = files
        yield emulator


def listing(ik, **params):
    r = requests.get(ik.url + "/v1/files", auth=ik.auth, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def names(items):
    return sorted(item.get("name") for item in items)


def test_lists_current_files_as_file_details(ik):
    items = listing(ik)
    assert names(items) == ["job-1.jpg", "job-10.png", "job-2.jpg", "notes.txt", "other.jpg"]
    job1 = next(i for i in items if i["name"] == "job-1.jpg")
    assert job1["type"] == "file" and job1["versionInfo"]["name"] == "Version 2"
    details = requests.get(
        f"{ik.url}/v1/files/{job1['fileId']}/details", auth=ik.auth, timeout=10
    ).json()
    assert job1 == details  # the spec's FileDetails object


def test_path_limits_to_one_folder(ik):
    assert names(listing(ik, path="/removal")) == ["job-1.jpg", "job-2.jpg", "notes.txt"]
    assert names(listing(ik, path="/removal/")) == ["job-1.jpg", "job-2.jpg", "notes.txt"]
    assert names(listing(ik, path="/removal/archive")) == ["job-10.png"]
    assert listing(ik, path="/nowhere") == []


@pytest.mark.parametrize("query", ['name = "job-1.jpg"', 'name="job-1.jpg"', 'name: "job-1.jpg"'])
def test_search_by_name_in_a_folder(ik, query):
    found = listing(ik, path="/removal", searchQuery=query)
    assert [f["fileId"] for f in found] == [ik.uploaded["job-1.jpg"]["fileId"]]


def test_name_colon_is_a_prefix_and_equals_is_exact(ik):
    assert names(listing(ik, searchQuery='name: "job-1"')) == ["job-1.jpg", "job-10.png"]
    assert listing(ik, searchQuery='name = "job-1"') == []


def test_search_combinations(ik):
    query = '(name = "job-1.jpg" OR name = "job-2.jpg") AND path = "/removal"'
    assert names(listing(ik, searchQuery=query)) == ["job-1.jpg", "job-2.jpg"]
    assert names(listing(ik, searchQuery='path: "/removal" AND format = "png"')) == ["job-10.png"]
    assert names(listing(ik, searchQuery='name IN ["other.jpg", "notes.txt"]')) == [
        "notes.txt",
        "other.jpg",
    ]
    assert names(listing(ik, searchQuery='name NOT IN ["other.jpg"] AND size > 100')) == [
        "job-1.jpg",
        "job-10.png",
        "job-2.jpg",
    ]
    assert names(listing(ik, searchQuery='createdAt > "1d"')) == names(listing(ik))


def test_search_versions_with_type(ik):
    found = listing(ik, searchQuery='type = "file-version" AND name = "job-1.jpg"')
    assert [(f["type"], f["versionInfo"]["name"]) for f in found] == [("file-version", "Version 1")]


def test_type_and_file_type_filters(ik):
    versions = listing(ik, type="file-version")
    assert [(v["name"], v["type"]) for v in versions] == [("job-1.jpg", "file-version")]
    assert names(listing(ik, fileType="non-image")) == ["notes.txt"]
    folders = listing(ik, type="folder")
    assert {(f["type"], f["name"], f["folderPath"]) for f in folders} == {
        ("folder", "removal", "/"),
        ("folder", "archive", "/removal"),
    }
    everything = listing(ik, type="all", path="/removal")
    assert {i["type"] for i in everything} == {"file", "folder"}


def test_limit_skip_and_sort(ik):
    by_name = listing(ik, sort="ASC_NAME")
    assert [i["name"] for i in by_name] == sorted(i["name"] for i in by_name)
    assert [i["name"] for i in listing(ik, sort="DESC_NAME", limit=2)] == [
        "other.jpg",
        "notes.txt",
    ]
    assert [i["name"] for i in listing(ik, sort="ASC_NAME", skip=3)] == ["notes.txt", "other.jpg"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"skip": "-1"},
            "The value of skip parameter should be greater than or equal to 0. Value sent is -1.",
        ),
        ({"limit": "0"}, "Minimum value of limit parameter is 1. Value sent is 0."),
        ({"limit": "2000"}, "Maximum value of limit parameter is 1000. Value sent is 2000."),
        ({"sort": "BY_MOOD"}, "Your request contains invalid value for sort parameters."),
        (
            {"type": "dir"},
            "Your request contains invalid value for type parameter. Please provide one of the "
            "following: file, file-version, folder, all.",
        ),
    ],
)
def test_bad_parameters_get_the_specs_messages(ik, params, message):
    r = requests.get(ik.url + "/v1/files", auth=ik.auth, params=params, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"message": message, "help": HELP}


def test_bad_search_query_is_400(ik):
    r = requests.get(
        ik.url + "/v1/files", auth=ik.auth, params={"searchQuery": 'name = "x'}, timeout=10
    )
    assert r.status_code == 400 and "searchQuery" in r.json()["message"]


def test_listing_needs_auth(ik):
    assert requests.get(ik.url + "/v1/files", timeout=10).status_code == 401
