"""The file APIs on ``api.imagekit.io``: list and search, details, update details (with
extensions), versions and restore, delete."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .calls import Call, Reply
from .config import REMOVE_BG_UNITS
from .errors import MSG_NO_FILE, MSG_NO_VERSION, MSG_QUOTA, ApiError, bad_request
from .extensions import REMOVE_BG, parse_extensions, parse_webhook_url
from .records import FileRecord, Version, iso
from .rendering import file_details
from .search import SearchQueryError, compile_query
from .uploads import COORDS_RE, normalize_folder, parse_tags

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
LIST_TYPES = ("file", "file-version", "folder", "all")
FILE_TYPES = ("all", "image", "non-image")
SORT_KEYS = {
    "NAME": lambda d: d["name"].lower(),
    "CREATED": lambda d: d["createdAt"],
    "UPDATED": lambda d: d["updatedAt"],
    "HEIGHT": lambda d: d.get("height") or 0,
    "WIDTH": lambda d: d.get("width") or 0,
    "SIZE": lambda d: d.get("size") or 0,
    "RELEVANCE": lambda d: d["createdAt"],
}
MAX_LIMIT = 1000


def _file(call: Call, file_id: str) -> FileRecord:
    if not _ID_RE.fullmatch(file_id):
        raise bad_request("Your request contains invalid fileId parameter.")
    record = call.emulator.store.get_file(file_id)
    if record is None:
        raise ApiError(404, MSG_NO_FILE)
    return record


def _version(record: FileRecord, version_id: str) -> Version:
    if not _ID_RE.fullmatch(version_id):
        raise bad_request("Your request contains invalid versionId parameter.")
    version = record.version(version_id)
    if version is None:
        raise ApiError(404, MSG_NO_VERSION)
    return version


def get_details(call: Call) -> Reply:
    with call.emulator.store.lock:
        record = _file(call, call.params["file_id"])
        return Reply(200, file_details(record, record.current, call.emulator.url_endpoint))


def list_versions(call: Call) -> Reply:
    endpoint = call.emulator.url_endpoint
    with call.emulator.store.lock:
        record = _file(call, call.params["file_id"])
        return Reply(200, [file_details(record, v, endpoint) for v in record.versions])


def get_version(call: Call) -> Reply:
    with call.emulator.store.lock:
        record = _file(call, call.params["file_id"])
        version = _version(record, call.params["version_id"])
        return Reply(200, file_details(record, version, call.emulator.url_endpoint))


def restore_version(call: Call) -> Reply:
    store = call.emulator.store
    with store.lock:
        record = _file(call, call.params["file_id"])
        _version(record, call.params["version_id"])
        record = store.restore(record.id, call.params["version_id"])
        return Reply(200, file_details(record, record.current, call.emulator.url_endpoint))


def delete_file(call: Call) -> Reply:
    store = call.emulator.store
    with store.lock:
        record = _file(call, call.params["file_id"])
        store.delete_file(record.id)
    return Reply(204, None)


# ---------------------------------------------------------------------------- update details


def _changes(data: dict[str, Any], record: FileRecord) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    if "tags" in data:
        try:
            changes["tags"] = parse_tags(data["tags"], form=False)
        except ApiError as exc:
            errors["tags"] = [exc.message]
    if "customCoordinates" in data:
        value = data["customCoordinates"]
        if value is not None and (
            not isinstance(value, str) or not COORDS_RE.fullmatch(value.strip())
        ):
            errors["customCoordinates"] = ["must be x,y,width,height or null"]
        else:
            changes["custom_coordinates"] = value.strip() if value else None
    if "customMetadata" in data:
        value = data["customMetadata"]
        if not isinstance(value, dict):
            raise bad_request(
                "Invalid custom metadata.", errors={"customMetadata": ["must be an object"]}
            )
        merged = dict(record.current.custom_metadata)
        for key, item in value.items():
            if item is None:
                merged.pop(key, None)
            else:
                merged[key] = item
        changes["custom_metadata"] = merged
    if "description" in data:
        if data["description"] is not None and not isinstance(data["description"], str):
            errors["description"] = ["must be a string"]
        else:
            changes["description"] = data["description"]
    if "removeAITags" in data:
        value = data["removeAITags"]
        current = record.current.ai_tags
        if value == "all":
            changes["ai_tags"] = None
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            kept = [t for t in (current or []) if t.get("name") not in value]
            changes["ai_tags"] = kept or None
        else:
            errors["removeAITags"] = ['must be an array of tag names or "all"']
    if "publish" in data:
        value = data["publish"]
        if not isinstance(value, dict) or not isinstance(value.get("isPublished"), bool):
            errors["publish"] = ["must be an object with a boolean isPublished"]
        else:
            changes["is_published"] = value["isPublished"]
    if errors:
        first = next(iter(errors))
        raise bad_request(f"Your request contains invalid {first} parameter.", errors=errors)
    return changes


def update_details(call: Call) -> Reply:
    emulator = call.emulator
    store = emulator.store
    config = emulator.config
    data = call.json_body()
    record = _file(call, call.params["file_id"])
    if not isinstance(data, dict):
        raise bad_request("Your request body must be a JSON object.")
    changes = _changes(data, record)
    extensions = parse_extensions(data.get("extensions"))
    webhook_url = parse_webhook_url(data.get("webhookUrl"))
    wants_removal = any(e.name == REMOVE_BG for e in extensions)
    with store.lock:
        record = _file(call, record.id)
        if (
            wants_removal
            and len(record.versions) < config.max_versions
            and not store.consume_quota(REMOVE_BG_UNITS, config.extension_quota_units)
        ):
            raise bad_request(MSG_QUOTA)
        if changes:
            record = store.update_current(record.id, changes)
        started = emulator.jobs.start_extensions(
            record, extensions, webhook_url, "update", call.request_id
        )
        record = started.record
        body = file_details(record, record.current, emulator.url_endpoint)
    if extensions:
        body["extensionStatus"] = started.statuses
    return Reply(200, body)


# ---------------------------------------------------------------------------- list and search


def _int_param(call: Call, name: str, default: int) -> int:
    raw = call.request.args.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Your request contains invalid value for {name} parameter.") from None


def search_item(details: dict[str, Any], version: Version) -> dict[str, Any]:
    """The fields ``searchQuery`` can test, for one file or version."""
    folder = details["filePath"].rsplit("/", 1)[0] or "/"
    name = details["name"]
    item = {
        **details,
        "path": folder,
        "format": name.rsplit(".", 1)[-1].lower() if "." in name else "",
        "private": details["isPrivateFile"],
        "published": details["isPublished"],
        "transparency": details["hasAlpha"],
        "createdAt": version.created_at,
        "updatedAt": version.updated_at,
    }
    for key, value in (details.get("customMetadata") or {}).items():
        item[f"customMetadata.{key}"] = value
    return item


def _folders(records: list[FileRecord], under: str | None) -> list[dict[str, Any]]:
    """Folder objects implied by the stored file paths (the emulator has no folder API)."""
    seen: dict[str, int] = {}
    for record in records:
        parts = record.file_path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:depth])
            seen[path] = min(seen.get(path, record.created_at), record.created_at)
    folders = []
    for path, created in sorted(seen.items()):
        parent = path.rsplit("/", 1)[0] or "/"
        if under is not None and parent != under:
            continue
        folders.append(
            {
                "folderId": hashlib.sha256(path.encode()).hexdigest()[:24],
                "type": "folder",
                "name": path.rsplit("/", 1)[-1],
                "folderPath": parent,
                "createdAt": iso(created),
                "updatedAt": iso(created),
            }
        )
    return folders


def list_files(call: Call) -> Reply:
    args = call.request.args
    endpoint = call.emulator.url_endpoint
    query = (args.get("searchQuery") or "").strip()
    kind = args.get("type") or "file"
    if kind not in LIST_TYPES:
        raise bad_request(
            "Your request contains invalid value for type parameter. Please provide one of "
            "the following: file, file-version, folder, all."
        )
    file_type = args.get("fileType") or "all"
    if file_type not in FILE_TYPES:
        raise bad_request("Your request contains invalid value for fileType parameter.")
    sort = args.get("sort") or "ASC_CREATED"
    direction, _, key = sort.partition("_")
    if direction not in ("ASC", "DESC") or key not in SORT_KEYS:
        raise bad_request("Your request contains invalid value for sort parameters.")
    skip = _int_param(call, "skip", 0)
    if skip < 0:
        raise bad_request(
            f"The value of skip parameter should be greater than or equal to 0. "
            f"Value sent is {skip}."
        )
    limit = _int_param(call, "limit", MAX_LIMIT)
    if limit < 1:
        raise bad_request(f"Minimum value of limit parameter is 1. Value sent is {limit}.")
    if limit > MAX_LIMIT:
        raise bad_request(
            f"Maximum value of limit parameter is {MAX_LIMIT}. Value sent is {limit}."
        )
    try:
        predicate = compile_query(query) if query else None
    except SearchQueryError as exc:
        raise bad_request(
            f"Your request contains invalid syntax for the searchQuery parameter: {exc}."
        ) from None
    path = args.get("path")
    folder = normalize_folder(path) if path else None
    if predicate is not None:
        kind = "all-files"  # searchQuery overrides type (it may test type itself)
    records = call.emulator.store.list_files()
    results: list[dict[str, Any]] = []
    with call.emulator.store.lock:
        for record in records:
            if folder is not None and (record.file_path.rsplit("/", 1)[0] or "/") != folder:
                continue
            if kind in ("file", "all"):
                versions = [record.current]
            elif kind == "file-version":
                versions = [v for v in record.versions if v.id != record.current_version_id]
            elif kind == "all-files":
                versions = list(record.versions)
            else:
                versions = []
            for version in versions:
                details = file_details(record, version, endpoint)
                if file_type != "all" and details["fileType"] != file_type:
                    continue
                if predicate is not None:
                    if not predicate(search_item(details, version)):
                        continue
                    if "type" not in query and details["type"] != "file":
                        continue  # without a type test, a search finds current files
                results.append(details)
    results.sort(key=SORT_KEYS[key], reverse=direction == "DESC")
    if kind in ("folder", "all"):
        results = (
            _folders(records, folder) + results if kind == "all" else _folders(records, folder)
        )
    return Reply(200, results[skip : skip + limit])


__all__ = [
    "delete_file",
    "get_details",
    "get_version",
    "list_files",
    "list_versions",
    "restore_version",
    "update_details",
]
