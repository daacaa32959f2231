"""System checks: each one fires when it should, and only then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.checks import run_checks

from imagekit_bgremove import checks

REAL = {
    "PRIVATE_KEY": "private_real_key",
    "WEBHOOK_SECRETS": ["whsec_real"],
    "WEBHOOK_BASE_URL": "https://www.example.com",
    "URL_ENDPOINT": "https://ik.imagekit.io/example",
}


# Development against the emulator: no key, so no W001 (nothing names an ImageKit).
EMULATOR = {"EMULATOR_URL": "http://127.0.0.1:8790"}


def ids(messages) -> list[str]:
    return sorted(message.id for message in messages)


def run() -> list[str]:
    return ids(run_checks(tags=[checks.TAG]))


@pytest.fixture
def production(settings):
    settings.DEBUG = False
    settings.IMAGEKIT_BGREMOVE = dict(REAL)
    return settings


def test_a_complete_production_setup_is_clean(production):
    assert run() == []


def test_nothing_vouching_for_callbacks_is_a_warning(production):
    production.IMAGEKIT_BGREMOVE = {
        **REAL,
        "WEBHOOK_SECRETS": [],
        "WEBHOOK_CONFIRM_WITH_API": False,
    }
    assert "imagekit_bgremove.W006" in run()
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_SECRETS": []}  # confirmation is on
    assert "imagekit_bgremove.W006" not in run()


def test_a_real_key_without_url_endpoint_is_an_error(production):
    production.IMAGEKIT_BGREMOVE = {k: v for k, v in REAL.items() if k != "URL_ENDPOINT"}
    assert run() == ["imagekit_bgremove.E011"]
    # Extra delivery hosts do not replace the endpoint every result is served from.
    production.IMAGEKIT_BGREMOVE = {
        **production.IMAGEKIT_BGREMOVE,
        "RESULT_HOSTS": ["images.example.com"],
    }
    assert run() == ["imagekit_bgremove.E011"]


def test_a_daily_limit_may_be_none_but_not_negative(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "DAILY_REMOVAL_LIMIT": None}
    assert run() == []
    production.IMAGEKIT_BGREMOVE = {**REAL, "DAILY_REMOVAL_LIMIT": -1}
    assert run() == ["imagekit_bgremove.E009"]


def test_test_settings_only_warn_about_the_emulator(settings):
    settings.DEBUG = False
    assert run() == ["imagekit_bgremove.W009"]


def test_settings_missing_entirely(settings):
    del settings.IMAGEKIT_BGREMOVE
    settings.DEBUG = True
    assert run() == ["imagekit_bgremove.W001"]
    settings.DEBUG = False
    messages = checks.check_settings_present()
    assert ids(messages) == ["imagekit_bgremove.E010"]
    assert "PRIVATE_KEY" in messages[0].msg


def test_no_imagekit_at_all_is_an_error_without_debug(settings):
    settings.IMAGEKIT_BGREMOVE = {"WEBHOOK_BASE_URL": "http://localhost:8000"}
    settings.DEBUG = False
    assert run() == ["imagekit_bgremove.E010"]
    settings.IMAGEKIT_BGREMOVE = {"PRIVATE_KEY": "", "EMULATOR_URL": ""}
    assert run() == ["imagekit_bgremove.E010"]
    settings.DEBUG = True  # development: a warning now, ImproperlyConfigured when used
    assert run() == ["imagekit_bgremove.W001"]


def test_an_emulator_url_is_development_only(settings):
    settings.IMAGEKIT_BGREMOVE = {"EMULATOR_URL": "http://127.0.0.1:8790"}
    settings.DEBUG = True
    assert run() == []
    settings.DEBUG = False
    assert run() == ["imagekit_bgremove.W009"]


def test_settings_not_a_dict(settings):
    settings.IMAGEKIT_BGREMOVE = ["PRIVATE_KEY", "x"]
    assert run() == ["imagekit_bgremove.E001"]  # and no other check crashes


def test_public_key_in_private_key(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "PRIVATE_KEY": "public_abc"}
    assert run() == ["imagekit_bgremove.E003"]


def test_unknown_keys_listed_with_valid_ones(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "PRIVATE_KEYS": "x", "retries": 3}
    messages = checks.check_unknown_keys()
    assert ids(messages) == ["imagekit_bgremove.E002"]
    message = messages[0]
    assert "'PRIVATE_KEYS', 'retries'" in message.msg
    assert "Valid keys: API_BASE_URL," in message.hint and "WEBHOOK_SECRETS" in message.hint
    assert "'PRIVATE_KEYS' -> 'PRIVATE_KEY'?" in message.hint
    production.IMAGEKIT_BGREMOVE = dict(REAL)
    assert checks.check_unknown_keys() == []


def test_no_webhook_secret_with_a_real_key(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_SECRETS": []}
    assert run() == ["imagekit_bgremove.W002"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_SECRETS": " , "}
    assert run() == ["imagekit_bgremove.W002"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_SECRETS": "whsec_a,whsec_b"}
    assert run() == []
    # The emulator has its own secret.
    production.DEBUG = True
    production.IMAGEKIT_BGREMOVE = {"WEBHOOK_SECRETS": [], "EMULATOR_URL": "http://e:1"}
    assert run() == []


def test_required_signature_without_secret_is_an_error(production):
    production.IMAGEKIT_BGREMOVE = {
        **REAL,
        "WEBHOOK_SECRETS": [],
        "WEBHOOK_REQUIRE_SIGNATURE": True,
    }
    assert run() == ["imagekit_bgremove.E004", "imagekit_bgremove.W002"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_REQUIRE_SIGNATURE": True}
    assert run() == []


def test_empty_webhook_base_url_with_a_real_key(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": ""}
    assert run() == ["imagekit_bgremove.W003"]
    production.DEBUG = True
    assert run() == ["imagekit_bgremove.W003"]
    production.IMAGEKIT_BGREMOVE = {"WEBHOOK_BASE_URL": "", "EMULATOR_URL": "http://e:1"}
    assert run() == []


@pytest.mark.parametrize("url", ["www.example.com", "ftp://example.com", "https://", "http://[::1"])
def test_webhook_base_url_must_be_absolute_http(production, url):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": url}
    assert run() == ["imagekit_bgremove.E005"]


def test_webhook_base_url_not_https_in_production(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": "http://www.example.com"}
    assert run() == ["imagekit_bgremove.W004"]
    production.DEBUG = True
    assert run() == []


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost:8000",
        "https://app.localhost",
        "https://127.0.0.1",
        "https://[::1]:8443/x",
        "https://0.0.0.0",
        "https://10.1.2.3",
        "https://192.168.1.20",
    ],
)
def test_webhook_base_url_local_in_production(production, url):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": url}
    messages = checks.check_webhooks()
    assert ids(messages) == ["imagekit_bgremove.W005"]
    production.DEBUG = True
    assert checks.check_webhooks() == []
    production.DEBUG = False
    production.IMAGEKIT_BGREMOVE = {"WEBHOOK_BASE_URL": url}  # the emulator can reach it
    assert checks.check_webhooks() == []


def test_local_http_url_gets_both_warnings(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": "http://127.0.0.1:8000"}
    assert run() == ["imagekit_bgremove.W004", "imagekit_bgremove.W005"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"bg_color": "notacolour"}, "bg_color"),
        ({"add_shadow": "yes"}, "add_shadow"),
        ({"bg_image_url": "ftp://x/y"}, "bg_image_url"),
    ],
)
def test_invalid_default_options_name_the_field(production, options, field):
    production.IMAGEKIT_BGREMOVE = {**REAL, "DEFAULT_OPTIONS": options}
    messages = checks.check_default_options()
    assert ids(messages) == ["imagekit_bgremove.E006"]
    assert f"IMAGEKIT_BGREMOVE['DEFAULT_OPTIONS']['{field}']:" in messages[0].msg


def test_default_options_other_errors(production):
    production.IMAGEKIT_BGREMOVE = {**REAL, "DEFAULT_OPTIONS": {"shadow": True}}
    (message,) = checks.check_default_options()
    assert message.id == "imagekit_bgremove.E006" and "Unknown option 'shadow'" in message.msg
    production.IMAGEKIT_BGREMOVE = {**REAL, "DEFAULT_OPTIONS": '{"add_shadow": true}'}
    (message,) = checks.check_default_options()
    assert "must be a dict" in message.msg
    production.IMAGEKIT_BGREMOVE = {
        **REAL,
        "DEFAULT_OPTIONS": {"bg_color": "fff", "bg_image_url": "https://example.com/b.png"},
    }
    assert ids(checks.check_default_options()) == ["imagekit_bgremove.E006"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "DEFAULT_OPTIONS": {"add_shadow": True}}
    assert run() == []


def test_task_backend_must_be_configured(production):
    backend = production.TASKS["default"]["BACKEND"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "TASK_BACKEND": "celery"}
    messages = checks.check_tasks()
    assert ids(messages) == ["imagekit_bgremove.E007"]
    assert "'celery'" in messages[0].msg and "'default'" in messages[0].hint
    production.TASKS = {"default": {"BACKEND": backend}, "celery": {"BACKEND": backend}}
    assert run() == []


def test_task_backend_when_tasks_is_unset(production):
    del production.TASKS
    assert checks.check_tasks() == []  # the implicit default backend
    production.IMAGEKIT_BGREMOVE = {**REAL, "TASK_BACKEND": "other"}
    assert ids(checks.check_tasks()) == ["imagekit_bgremove.E007"]


def test_task_queue_must_be_allowed(production):
    backend = production.TASKS["default"]["BACKEND"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "TASK_QUEUE": "images"}
    messages = checks.check_tasks()
    assert ids(messages) == ["imagekit_bgremove.E008"]
    assert "'images'" in messages[0].msg and "'default'" in messages[0].hint
    production.TASKS = {"default": {"BACKEND": backend, "QUEUES": ["default", "images"]}}
    assert run() == []
    production.TASKS = {"default": {"BACKEND": backend, "QUEUES": []}}  # any queue
    assert run() == []
    production.TASKS = {"default": {"BACKEND": backend, "QUEUES": ["other"]}}
    production.IMAGEKIT_BGREMOVE = dict(REAL)  # the default queue is checked too
    assert run() == ["imagekit_bgremove.E008"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_RETRIES", -1),
        ("MAX_RETRIES", 2.5),
        ("MAX_RETRIES", "3"),
        ("READ_TIMEOUT", 0),
        ("CONNECT_TIMEOUT", None),
        ("RETRY_BACKOFF", -0.1),
        ("RETRY_BACKOFF_MAX", True),
        ("RESULT_MAX_BYTES", 0),
    ],
)
def test_numbers_must_be_usable(production, name, value):
    production.IMAGEKIT_BGREMOVE = {**REAL, name: value}
    messages = checks.check_numbers()
    assert ids(messages) == ["imagekit_bgremove.E009"]
    assert f"['{name}']" in messages[0].msg


def test_good_numbers_pass(production):
    production.IMAGEKIT_BGREMOVE = {
        **REAL,
        "MAX_RETRIES": 0,
        "READ_TIMEOUT": 2.5,
        "CONNECT_TIMEOUT": 1,
        "RETRY_BACKOFF": 0,
        "RESULT_MAX_BYTES": 10.0,
    }
    assert run() == []


def test_webhook_host_outside_allowed_hosts(production):
    # A tunnel's host forgotten in ALLOWED_HOSTS: every callback would be a 400.
    production.ALLOWED_HOSTS = ["www.example.com"]
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": "https://abc.tunnel.example"}
    assert run() == ["imagekit_bgremove.E012"]
    production.ALLOWED_HOSTS = ["www.example.com", ".tunnel.example"]
    assert run() == []
    production.IMAGEKIT_BGREMOVE = {**REAL, "WEBHOOK_BASE_URL": "https://www.example.com:8443/"}
    assert run() == []


def test_webhook_host_with_debug_and_no_allowed_hosts(settings):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = []
    emulator = {"EMULATOR_URL": "http://127.0.0.1:8790"}
    settings.IMAGEKIT_BGREMOVE = {**emulator, "WEBHOOK_BASE_URL": "http://127.0.0.1:8000"}
    assert run() == []
    settings.IMAGEKIT_BGREMOVE = {**emulator, "WEBHOOK_BASE_URL": "http://[::1]:8000"}
    assert run() == []
    settings.IMAGEKIT_BGREMOVE = {**emulator, "WEBHOOK_BASE_URL": "http://192.168.1.5:8000"}
    assert run() == ["imagekit_bgremove.W008"]


def test_a_project_with_no_imagekit_fails_manage_py_check(tmp_path):
    # As a user meets it: the app installed, no key, no emulator URL, DEBUG off.
    (tmp_path / "proj_settings.py").write_text(
        'SECRET_KEY = "x"\n'
        "DEBUG = False\n"
        'INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", '
        '"imagekit_bgremove"]\n'
        'DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db"}}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=tmp_path,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "proj_settings", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "imagekit_bgremove.E010" in result.stderr
    assert "IMAGEKIT_BGREMOVE['PRIVATE_KEY'] is not set" in result.stderr


class _JobsElsewhere:
    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label == "imagekit_bgremove" else None

    db_for_write = db_for_read


def test_the_apps_tables_outside_the_default_database_are_an_error(settings):
    settings.DATABASE_ROUTERS = [_JobsElsewhere()]
    assert "imagekit_bgremove.E013" in run()
    settings.DATABASE_ROUTERS = ["tests.routers.PosterRouter"]
    assert "imagekit_bgremove.E013" not in run()
