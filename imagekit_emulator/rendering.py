"""ImageKit's response objects: the file details (``FileDetails``: a file or a file version)
and the upload response (``Upload``)."""

from __future__ import annotations

from typing import Any

from .store import FileRecord, Version, iso


def file_details(record: FileRecord, version: Version, endpoint: str) -> dict[str, Any]:
    """The FileDetails object (``type`` file for the current version, else file-version)."""
    current = version.id == record.current_version_id
    query = f"updatedAt={version.updated_at}"
    if not current:
        query = f"ik-obj-version={version.id}&{query}"
    url = f"{endpoint}{record.file_path}?{query}"
    details: dict[str, Any] = {
        "fileId": record.id,
        "type": "file" if current else "file-version",
        "name": record.name,
        "filePath": record.file_path,
        "tags": version.tags,
        "AITags": version.ai_tags,
        "versionInfo": {"id": version.id, "name": version.name},
        "isPrivateFile": record.is_private,
        "isPublished": version.is_published,
        "customCoordinates": version.custom_coordinates,
        "url": url,
        "thumbnail": f"{url}&tr=n-ik_ml_thumbnail",
        "fileType": version.file_type,
        "mime": version.mime,
        "width": version.width or 0,
        "height": version.height or 0,
        "size": version.size,
        "hasAlpha": version.has_alpha,
        "customMetadata": dict(version.custom_metadata),
        "createdAt": iso(record.created_at if current else version.created_at),
        "updatedAt": iso(version.updated_at),
    }
    if version.description is not None:
        details["description"] = version.description
    return details


def upload_response(
    record: FileRecord,
    version: Version,
    endpoint: str,
    response_fields: list[str],
    statuses: dict[str, str],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fileId": record.id,
        "name": record.name,
        "size": version.size,
        "versionInfo": {"id": version.id, "name": version.name},
        "filePath": record.file_path,
        "url": f"{endpoint}{record.file_path}",
        "fileType": version.file_type,
    }
    if version.file_type == "image" and version.width is not None:
        body["height"] = version.height
        body["width"] = version.width
    body["thumbnailUrl"] = (
        f"{endpoint}/tr:n-ik_ml_thumbnail{record.file_path}" if version.file_type == "image" else ""
    )
    body["AITags"] = version.ai_tags
    if version.description is not None:
        body["description"] = version.description
    extras = {
        "tags": version.tags,
        "customCoordinates": version.custom_coordinates,
        "isPrivateFile": record.is_private,
        "isPublished": version.is_published,
        "customMetadata": dict(version.custom_metadata),
        "embeddedMetadata": {},
        "selectedFieldsSchema": {},
        "metadata": {
            "height": version.height or 0,
            "width": version.width or 0,
            "size": version.size,
            "format": (version.mime.split("/")[-1] if version.file_type == "image" else ""),
            "hasTransparency": version.has_alpha,
        },
    }
    for name in response_fields:
        if name in extras:
            body[name] = extras[name]
    if statuses:
        body["extensionStatus"] = statuses
    return body
