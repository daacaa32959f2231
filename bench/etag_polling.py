"""What polling a job costs: a 304 from the jobs API's ETag against a plain DRF detail view.

    python bench/etag_polling.py [--requests 2000] [--rounds 10] [--goal 1.2]

A front-end polls ``GET api/removals/<id>/`` with ``If-None-Match`` while a job runs; nothing
has changed most of the time, and the answer is a 304 with no body. Timed here, per request,
through Django's full request handling (URL resolution, middleware, DRF, token
authentication, the database):

- ``304``: the jobs API with the ETag of the job's current state (the job read once, the
  object permission checked, the tag computed from the row: nothing is serialised);
- ``200``: the same view without ``If-None-Match`` (what polling costs without ETags);
- ``plain``: a plain ``RetrieveAPIView`` of the same job, same serializer, same token
  authentication and the same permission class (the user's change permission on the model);
- ``plain, authenticated only``: the same with ``IsAuthenticated`` instead, for scale: it
  skips the two permission queries every answer of the jobs API pays, 304s included.

The user is not a superuser, so permission checks do their queries. The kinds are interleaved
in rounds so that drift hits all alike; medians are compared. The last line is the ratio
plain / 304 (how many 304s cost what one plain answer costs); the script exits 1 when it is
below ``--goal``. SQLite in memory; nothing leaves the process.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def configure() -> None:
    import django
    from django.conf import settings

    try:
        import django.tasks

        dummy = "django.tasks.backends.dummy.DummyBackend"
    except ImportError:  # Django 5.2 + backport
        dummy = "django_tasks.backends.dummy.DummyBackend"
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "rest_framework",
            "rest_framework.authtoken",
            "imagekit_bgremove",
            "tests.testapp",
        ],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        ROOT_URLCONF=__name__,
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
        TASKS={"default": {"BACKEND": dummy}},
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
        },
        IMAGEKIT_BGREMOVE={"WEBHOOK_BASE_URL": "http://bench"},
        SILENCED_SYSTEM_CHECKS=["imagekit_bgremove.W009"],
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, run_syncdb=True)


urlpatterns: list = []


def routes() -> None:
    from django.urls import include, path
    from rest_framework.generics import RetrieveAPIView
    from rest_framework.permissions import IsAuthenticated

    from imagekit_bgremove.api import CanChangeTarget, RemovalJobSerializer
    from imagekit_bgremove.models import RemovalJob

    class PlainJobDetail(RetrieveAPIView):
        queryset = RemovalJob.objects.select_related("requested_by", "retry")
        serializer_class = RemovalJobSerializer
        permission_classes = [CanChangeTarget]

    class AuthenticatedOnlyJobDetail(PlainJobDetail):
        permission_classes = [IsAuthenticated]

    urlpatterns[:] = [
        path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
        path("plain/<int:pk>/", PlainJobDetail.as_view()),
        path("plain-authenticated/<int:pk>/", AuthenticatedOnlyJobDetail.as_view()),
    ]


def fixtures() -> tuple[str, int]:
    """A non-superuser editor with a token, and a finished job of a product (a full row)."""
    from django.contrib.auth.models import Permission, User
    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from imagekit_bgremove.models import JobStatus, RemovalJob
    from tests.testapp.models import Product

    user = User.objects.create_user("editor")
    user.user_permissions.add(
        Permission.objects.get(codename="change_product", content_type__app_label="testapp")
    )
    product = Product.objects.create(name="mug")
    now = timezone.now()
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.SUCCEEDED,
        options={"add_shadow": False, "semitransparency": True, "bg_color": "ffffff"},
        trigger="api",
        requested_by=user,
        attempts=1,
        file_id="file_0123456789",
        result_url="https://ik.imagekit.io/demo/bgremove/mug.png?updatedAt=1",
        result_name="products/mug_nobg_1.png",
        result_mime="image/png",
        result_width=1024,
        result_height=768,
        submitted_at=now,
        finished_at=now,
    )
    return Token.objects.create(user=user).key, job.pk


def measure(requests: int, rounds: int) -> dict:
    from django.test import Client

    token, job_id = fixtures()
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    ours = f"/imagekit-bgremove/api/removals/{job_id}/"
    plain = f"/plain/{job_id}/"
    first = client.get(ours)
    etag = first["ETag"]
    assert first.status_code == 200 and etag, first.content
    assert client.get(ours, HTTP_IF_NONE_MATCH=etag).status_code == 304
    baseline = client.get(plain)
    assert baseline.status_code == 200
    assert baseline.json() == first.json(), "the two views must render the same job"

    authenticated_only = f"/plain-authenticated/{job_id}/"
    calls = {
        "304": lambda: client.get(ours, HTTP_IF_NONE_MATCH=etag),
        "200": lambda: client.get(ours),
        "plain": lambda: client.get(plain),
        "authenticated": lambda: client.get(authenticated_only),
    }
    expected = {"304": 304, "200": 200, "plain": 200, "authenticated": 200}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        for _ in range(100):
            call()
    per_round = max(1, requests // rounds)
    order = list(calls)
    for _ in range(rounds):
        order = order[1:] + order[:1]  # rotate who goes first
        for name in order:
            call, sink = calls[name], times[name]
            gc.collect()
            gc.disable()
            try:
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    response = call()
                    sink.append(time.perf_counter() - t0)
                    if response.status_code != expected[name]:
                        raise SystemExit(f"{name}: answered {response.status_code}")
            finally:
                gc.enable()
    return {
        "medians_us": {name: statistics.median(values) * 1e6 for name, values in times.items()},
        "bytes": {
            "304": 0,
            "200": len(first.content),
            "plain": len(baseline.content),
            "authenticated": len(baseline.content),
        },
        "count": len(times["304"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per kind")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--goal", type=float, default=1.2)
    args = parser.parse_args()

    configure()
    routes()
    result = measure(args.requests, args.rounds)
    medians, sizes = result["medians_us"], result["bytes"]
    print(f"job detail, {result['count']} requests each, Django test client, SQLite (medians)")
    labels = {
        "304": "jobs API, If-None-Match -> 304",
        "200": "jobs API, no ETag -> 200",
        "plain": "plain RetrieveAPIView -> 200",
        "authenticated": "plain, authenticated only -> 200",
    }
    for name, label in labels.items():
        print(f"  {label:<36}{medians[name]:>8.0f} us  {sizes[name]:>6} body bytes")
    scale = medians["authenticated"] / medians["304"]
    print(f"ratio plain authenticated-only (no permission queries) / ETag 304: {scale:.2f}x")
    ratio = medians["plain"] / medians["304"]
    print(f"ratio plain DRF detail / ETag 304: {ratio:.2f}x (goal >= {args.goal}x)")
    return 0 if ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
