"""Settings of the example project, read from the environment (django-environ).

Every variable has a safe local default; ``./dev run`` (scripts/run_example.sh) starts the ImageKit
emulator as a process of its own and sets IMAGEKIT_EMULATOR_URL to it.

=========================== ================================================================
IMAGEKIT_PRIVATE_KEY        your ImageKit private key (empty: use the emulator)
IMAGEKIT_URL_ENDPOINT       e.g. https://ik.imagekit.io/your_id
IMAGEKIT_UPLOAD_BASE_URL    only to override https://upload.imagekit.io
IMAGEKIT_API_BASE_URL       only to override https://api.imagekit.io
IMAGEKIT_WEBHOOK_SECRETS    comma-separated whsec_... secrets (several during rotation)
IMAGEKIT_EMULATOR_URL       a running ImageKit emulator, used without IMAGEKIT_PRIVATE_KEY
PUBLIC_BASE_URL             how ImageKit reaches this site (WEBHOOK_BASE_URL), default
                            http://127.0.0.1:8000; a public https URL with a real account
DATABASE_URL                default sqlite:///var/example.sqlite3
DATABASE_CONN_MAX_AGE       seconds a connection is kept between requests and task polls
                            (default 60; 0 opens one per request)
VAR_DIR                     where the database, media and emulator state go (default ./var)
DEBUG                       Django's debug pages and static files from runserver (default
                            off; scripts/run_example.sh turns it on unless DEBUG is set)
API_REMOVALS_RATE           paid API requests per user (default 120/hour)
API_TOKEN_RATE              /api/token/ requests per client address (default 20/hour)
IMAGEKIT_BG_IMAGE_ALLOWED_HOSTS  hosts bg_image_url may name although they are not public
                            (default with the emulator: 127.0.0.1,localhost; with an account:
                            none)
SECRET_KEY, ALLOWED_HOSTS
=========================== ================================================================
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

# Everything the example writes (database, media, emulator state) lives here; gitignored.
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="example-project-insecure-local-key-change-me")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = [PUBLIC_BASE_URL] if PUBLIC_BASE_URL.startswith("https://") else []

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_tasks_db",
    "imagekit_bgremove",
    "example_project.catalogue",
]
try:
    import django.tasks  # noqa: F401
except ImportError:  # Django 5.2: the tasks framework is the django-tasks backport, an app
    INSTALLED_APPS.insert(INSTALLED_APPS.index("django_tasks_db"), "django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'example.sqlite3'}")}
# db_worker closes "old" connections on every poll: at Django's default of 0, each of its polls
# and each request opened a new PostgreSQL connection, a forked server process costing more
# CPU than the statements it then ran. A URL's ?conn_max_age= still wins.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and db_worker write at the same time. A deferred transaction that reads,
    # then writes, fails at once with "database is locked" instead of waiting; IMMEDIATE takes
    # the write lock up front, so the timeout applies. WAL lets readers go on meanwhile.
    _sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    _sqlite_options.setdefault("timeout", 20)
    _sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    _sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL;")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Throttle counts must be shared by every process (gunicorn workers, runserver's threads): the
# database is enough here (`manage.py createcachetable`); a real site may use Redis or Memcached.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "example_cache",
    }
}

# Background work (submitting to ImageKit, copying results) runs in `manage.py db_worker`.
# django_tasks_db.DatabaseBackend is the same path on Django 6 and on 5.2 (with the backport).
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "/media/"
MEDIA_ROOT = VAR_DIR / "media"

LOGIN_URL = "admin:login"

# --- REST API: the Product API, token authentication, the OpenAPI schema (see README) --------
INSTALLED_APPS += ["rest_framework.authtoken"]
REST_FRAMEWORK = {
    # Session (the demo page, with CSRF), then token and basic: unauthenticated requests get 401
    # with "WWW-Authenticate: Token" (no browser password prompt).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    # Paid requests (removals, uploads) per user; None switches the app's throttle off.
    "DEFAULT_THROTTLE_RATES": {
        "imagekit_bgremove": env.str("API_REMOVALS_RATE", "120/hour"),
        # Password guesses at /api/token/, per client address.
        "token": env.str("API_TOKEN_RATE", "20/hour"),
    },
}
try:  # the "openapi" extra: schema, Swagger UI and Redoc served from this site
    import drf_spectacular  # noqa: F401
    import drf_spectacular_sidecar  # noqa: F401
except ImportError:
    pass
else:
    INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
    SPECTACULAR_SETTINGS = {
        "TITLE": "imagekit-bgremove example API",
        "DESCRIPTION": "Products with background removal, and the removal jobs.",
        "VERSION": "1",
        "COMPONENT_SPLIT_REQUEST": True,
        "SERVE_INCLUDE_SCHEMA": False,
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
    }


def _imagekit_settings() -> dict:
    """Only what the environment sets: unset keys keep the app's defaults."""
    values: dict = {"WEBHOOK_BASE_URL": PUBLIC_BASE_URL}
    for key in ("PRIVATE_KEY", "URL_ENDPOINT", "UPLOAD_BASE_URL", "API_BASE_URL", "EMULATOR_URL"):
        value = env.str(f"IMAGEKIT_{key}", default="")
        if value:
            values[key] = value
    secrets = env.list("IMAGEKIT_WEBHOOK_SECRETS", default=[])
    if secrets:
        values["WEBHOOK_SECRETS"] = secrets
    # The emulator fetches backgrounds from this machine (this site's media, say); ImageKit
    # fetches them from the internet only.
    values["BG_IMAGE_ALLOWED_HOSTS"] = env.list(
        "IMAGEKIT_BG_IMAGE_ALLOWED_HOSTS",
        default=[] if "PRIVATE_KEY" in values else ["127.0.0.1", "localhost"],
    )
    return values


IMAGEKIT_BGREMOVE = _imagekit_settings()
if "PRIVATE_KEY" not in IMAGEKIT_BGREMOVE:
    # The example runs on the emulator on purpose, with DEBUG off too.
    SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W009"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"imagekit_bgremove": {"handlers": ["console"], "level": "INFO"}},
}
