"""Settings for the test suite. DATABASE_URL picks the database (SQLite by default)."""

import os
import tempfile

import environ

env = environ.Env()

SECRET_KEY = "tests-only-secret-key"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "imagekit_bgremove",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite:///:memory:")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory, for NAME too: pytest-django's session-wide live server hands its
    # request threads the test's own connection object when NAME is in memory at the moment it
    # starts, which is before the test database exists when a browser test runs first (one file
    # on its own). Two threads on one sqlite3 connection crash the interpreter (segmentation
    # fault in sqlite) or corrupt its transaction state. With a file each thread has its own
    # connection; WAL lets readers run beside the writer, IMMEDIATE takes the write lock at
    # BEGIN so concurrent writers wait instead of failing to upgrade.
    _sqlite_file = os.path.join(tempfile.gettempdir(), f"imagekit-bgremove-test-{os.getpid()}")
    DATABASES["default"]["NAME"] = f"{_sqlite_file}.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": f"{_sqlite_file}-test.sqlite3"}
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF",
    )

# A second database for a model the router puts there (tests/routers.py): its jobs stay in default.
DATABASES["other"] = {**DATABASES["default"], "TEST": {**DATABASES["default"].get("TEST", {})}}
if DATABASES["other"]["ENGINE"].endswith("sqlite3"):
    DATABASES["other"]["TEST"]["NAME"] = DATABASES["default"]["TEST"]["NAME"] + "-other"
else:
    DATABASES["other"]["TEST"]["NAME"] = f"test_{DATABASES['default']['NAME']}_other"
DATABASE_ROUTERS = ["tests.routers.PosterRouter"]

TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
try:
    import django.tasks  # noqa: F401
except ImportError:  # Django 5.2 with the django-tasks backport
    TASKS["default"]["BACKEND"] = "django_tasks.backends.immediate.ImmediateBackend"

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

IMAGEKIT_BGREMOVE = {
    "WEBHOOK_BASE_URL": "http://testserver",
    # Nothing listens there: tests that reach ImageKit use the fake (imagekit_bgremove.testing)
    # or the emulator fixtures, which set their own URLs.
    "EMULATOR_URL": "http://127.0.0.1:9",
    "RETRY_BACKOFF": 0.01,
    "RETRY_BACKOFF_MAX": 0.05,
}

# --- The REST API's tests: the example project's catalogue and its Product API (token
# authentication), and the OpenAPI schema when the "openapi" extra is installed.
INSTALLED_APPS += ["rest_framework.authtoken", "example_project.catalogue"]
REST_FRAMEWORK = {
    # As the example project: views bind these when their class is created, so they are set here
    # rather than per test.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}
try:
    import drf_spectacular  # noqa: F401
except ImportError:
    pass
else:
    INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
    SPECTACULAR_SETTINGS = {
        "TITLE": "imagekit-bgremove test API",
        "SERVE_INCLUDE_SCHEMA": False,
        "COMPONENT_SPLIT_REQUEST": True,
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
    }
