"""The JSON that keeps the admin's list (and the change form's preview) up to date while jobs
run, polled by ``static/imagekit_bgremove/admin/live.js``.

``GET <changelist>/removal-status/?kind=cell&pk=1&pk=2`` answers, for the objects asked for that
the user may see::

    {"objects": {"1": {"html": "<div …>", "unfinished": false, "failed": true}, …},
     "unfinished": 0}

``html`` is the same markup the page was rendered with (the list cell, or the preview with
``kind=preview``, which also carries the history table as ``history``), so the script only swaps
it in; it stops polling an object once it is no longer unfinished, and stops altogether when none
is. Three queries, whatever the number of rows (the history adds its own for a change form).
It is a view of the ModelAdmin (under the admin site's login and the model's view permission),
not of the app's public URLs, because it shows what the admin shows.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import JsonResponse

from ..state import prefetch_removal_state

#: At most this many objects per request (a list page shows 100 by default).
MAX_OBJECTS = 200


def status_response(model_admin, request) -> JsonResponse:
    if not model_admin.has_view_or_change_permission(request):
        raise PermissionDenied
    kind = request.GET.get("kind", "cell")
    if kind not in ("cell", "preview"):
        return JsonResponse({"error": "kind must be cell or preview"}, status=400)
    pks = [pk for pk in request.GET.getlist("pk") if pk][:MAX_OBJECTS]
    objects = {}
    if pks:
        try:
            found = list(model_admin.get_queryset(request).filter(pk__in=pks))
        except (ValueError, TypeError, ValidationError):
            return JsonResponse({"error": "invalid pk"}, status=400)
        prefetch_removal_state(found, model_admin.get_removal_fields())
        for obj in found:
            states = model_admin.removal_states(obj)
            render = (
                model_admin.render_removal_cell
                if kind == "cell"
                else model_admin.render_removal_preview
            )
            entry = {
                "html": render(obj, states),
                "unfinished": any(s.unfinished for s in states),
                "failed": any(s.failed for s in states),
            }
            if kind == "preview":
                # The change form's history table shows the same jobs: it follows the preview.
                entry["history"] = model_admin.render_removal_history(request, obj)
            objects[str(obj.pk)] = entry
    response = JsonResponse(
        {"objects": objects, "unfinished": sum(o["unfinished"] for o in objects.values())}
    )
    response["Cache-Control"] = "no-store"
    return response
