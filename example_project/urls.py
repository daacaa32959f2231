from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/catalogue/product/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),
]
