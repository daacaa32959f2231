"""URLs of the app. Include them once, for example ``path("imagekit-bgremove/", include(...))``.

- ``webhooks/imagekit/<token>/`` (name ``imagekit_bgremove:webhook``): ImageKit's callbacks.
- ``api/removals/...``: the REST API for front-ends (see :mod:`imagekit_bgremove.api`).
"""

from django.urls import include, path

from .webhooks import webhook_view

app_name = "imagekit_bgremove"

urlpatterns = [
    path("webhooks/imagekit/<str:token>/", webhook_view, name="webhook"),
    path("api/", include("imagekit_bgremove.api_urls")),
]
