"""The REST API's routes, included by :mod:`imagekit_bgremove.urls` under ``api/``.

Names (in the ``imagekit_bgremove`` namespace): ``removal-list``, ``removal-detail``,
``removal-retry``.
"""

from rest_framework.routers import SimpleRouter

from .api import RemovalViewSet

router = SimpleRouter()
router.register("removals", RemovalViewSet, basename="removal")

urlpatterns = router.urls
