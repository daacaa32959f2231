from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from rest_framework.routers import SimpleRouter

from example_project.catalogue.api import ObtainToken, ProductViewSet
from example_project.catalogue.views import DemoView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/catalogue/product/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),
]

# --- REST API: products, a token, the demo page, the schema and its docs (see README) ---------
products = SimpleRouter()
products.register("products", ProductViewSet, basename="product")
urlpatterns += [
    path("api/", include(products.urls)),
    path("api/token/", ObtainToken.as_view(), name="api-token"),
    path("demo/", DemoView.as_view(), name="demo"),
]
handler404 = "example_project.catalogue.views.not_found"  # JSON for unknown API URLs
if "drf_spectacular" in settings.INSTALLED_APPS:
    from drf_spectacular.views import (
        SpectacularAPIView,
        SpectacularRedocView,
        SpectacularSwaggerSplitView,
    )

    class RedocView(SpectacularRedocView):
        template_name = "catalogue/redoc.html"

        def finalize_response(self, request, response, *args, **kwargs):
            response = super().finalize_response(request, response, *args, **kwargs)
            # Redoc's sidebar shows Redocly's logo from their CDN: images from this site only.
            response["Content-Security-Policy"] = "img-src 'self' data:"
            return response

    urlpatterns += [
        path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
        path(
            "api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"
        ),
        path(
            "api/redoc/",
            RedocView.as_view(url_name="api-schema"),
            name="api-redoc",
        ),
    ]
