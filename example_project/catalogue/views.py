"""The demo page: upload a product photo through the Product API and watch its background go.

A template and one static ES module (``catalogue/demo.js``), no build step and no inline script:
the page sends a Content-Security-Policy that forbids inline script and style, and everything it
needs (the API's URLs, the CSRF token) is in ``data-`` attributes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import JsonResponse
from django.views import defaults
from django.views.generic import TemplateView

from imagekit_bgremove.conf import app_settings


def origin(url: str) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy() -> str:
    # Cut-outs are shown from this site's media (the stored copy) or, without a copy, from the
    # ImageKit URL endpoint; blob: is the preview of the file chosen before it is uploaded.
    images = " ".join(filter(None, ["'self'", "blob:", origin(app_settings.url_endpoint)]))
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class DemoView(LoginRequiredMixin, TemplateView):
    template_name = "catalogue/demo.html"

    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        response["Content-Security-Policy"] = content_security_policy()
        return response


API_PREFIXES = ("/api/", "/imagekit-bgremove/api/")


def not_found(request, exception=None):
    """404 for a URL nothing answers: JSON under the APIs (as their own 404s), else Django's."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)
