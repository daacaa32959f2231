"""Everything of the database and storage that ``verify`` needs, read once at the end, as plain
data."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from .images import sha256
from .workload import Plan


def take(plan: Plan) -> dict[str, Any]:
    from django.db.models import Sum

    from example_project.catalogue.models import Product
    from imagekit_bgremove.models import RemovalJob, WebhookCount, WebhookDelivery
    from imagekit_bgremove.removebg import RemoveBgOptions
    from imagekit_bgremove.state import prefetch_removal_state, state_of

    storage = Product._meta.get_field("photo").storage

    def digest(name: str) -> str | None:
        if not name or not storage.exists(name):
            return None
        with storage.open(name, "rb") as fh:
            return sha256(fh.read())

    jobs = list(
        RemovalJob.objects.order_by("pk").values(
            "id",
            "status",
            "object_id",
            "file_id",
            "source_name",
            "source_hash",
            "result_file_id",
            "result_version_id",
            "result_url",
            "result_name",
            "partial_result_name",
            "error_code",
            "error_message",
            "duplicate_of_id",
            "superseded_by_id",
            "attempts",
            "submission_uncertain",
            "trigger",
            "force",
            "options",
            "created_at",
            "submitted_at",
            "finished_at",
        )
    )
    for job in jobs:
        job["result_sha256"] = digest(job["result_name"])
        try:
            job["requested_options"] = RemoveBgOptions.from_dict(job["options"]).to_extension()[
                "options"
            ]
        except Exception:
            job["requested_options"] = job["options"]
        created, finished = job.pop("created_at"), job["finished_at"]
        job["took"] = (finished - created).total_seconds() if finished else None
        job["created_ts"] = created.timestamp()
        job["finished_at"] = finished.timestamp() if finished else None
        job["submitted_at"] = job["submitted_at"].timestamp() if job["submitted_at"] else None
    deliveries = [
        {
            "id": row["id"],
            "job_id": row["job_id"],
            "status_code": row["status_code"],
            "verdict": row["verdict"],
            "webhook_id": (row["headers"] or {}).get("webhook-id"),
            "error": row["error"],
        }
        for row in WebhookDelivery.objects.order_by("pk").values(
            "id", "job_id", "status_code", "verdict", "headers", "error"
        )
    ]
    products = []
    for product in prefetch_removal_state(Product.objects.order_by("pk")):
        result_file = product.photo.result_file  # the public API: this image's cut-out
        result = None
        if result_file is not None:
            result = {
                "job": state_of(product, "photo").current_success.pk,
                "name": result_file.name,
                "sha256": digest(result_file.name),
            }
        products.append(
            {
                "id": product.pk,
                "name": product.name,
                "photo": product.photo.name,
                "photo_sha256": digest(product.photo.name),
                "photo_removal_id": product.photo.removal.pk if product.photo.removal else None,
                "result": result,
            }
        )
    originals = {
        name: {"expected": expected, "actual": digest(name)}
        for name, expected in plan.originals.items()
    }
    known = set(plan.originals) | {j["result_name"] for j in jobs if j["result_name"]}
    try:
        on_disk = sorted(_names(storage))
    except FileNotFoundError:  # MEDIA_ROOT was never created: nothing was stored
        on_disk = []
    counted = dict(WebhookCount.objects.values_list("kind").annotate(total=Sum("count")).order_by())
    return {
        "jobs": jobs,
        "deliveries": deliveries,
        "counted": counted,
        "products": products,
        "deleted": list(plan.deleted),
        "originals": originals,
        "storage_files": len(on_disk),
        "stray_files": [name for name in on_disk if name not in known],
    }


def _names(storage: Any, folder: str = "") -> Iterator[str]:
    """Every file in ``storage`` (a local folder or a bucket alike)."""
    folders, files = storage.listdir(folder)
    for name in files:
        yield posixpath.join(folder, name) if folder else name
    for sub in folders:
        yield from _names(storage, posixpath.join(folder, sub) if folder else sub)
