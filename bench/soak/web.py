"""Saves through the product admin's forms (a logged-in session, CSRF and all) and removal
requests through the REST API, over HTTP to the run's web server.

The web server is killed during the run, so a request may fail with no answer. The clients here
behave as an honest client should: when no answer came, they wait for the server, look (in the
database) whether the request took effect, and only then send it again."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

ADMIN_USER = "soak-admin"
ADMIN_PASSWORD = "soak-admin-password-loopback-only"  # a throw-away database
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class WebError(RuntimeError):
    pass


class Web:
    def __init__(self, base_url: str, *, is_up: Callable[[float], bool]):
        import requests

        self.base_url = base_url
        self.is_up = is_up
        self.session = requests.Session()
        self.api = requests.Session()
        self.api.auth = (ADMIN_USER, ADMIN_PASSWORD)
        self.retried = 0  # requests sent again after no answer, having checked they had not
        self.answer_lost_but_done = 0  # requests that took effect although no answer came
        # Uploads whose request was cut off (a killed server) without taking effect: Django
        # writes an upload to storage before the row commits, so its file may be left behind.
        self.cut_off_uploads: list[str] = []

    # -- plumbing --------------------------------------------------------------------------------
    def _honest(self, send: Callable[[], Any], took_effect: Callable[[], bool]) -> Any:
        """``send()``; when it gets no answer, wait for the server, then check ``took_effect``
        before sending again. Returns the response, or None when it took effect unanswered."""
        import requests

        for _ in range(20):
            try:
                return send()
            except (requests.ConnectionError, requests.Timeout):
                self.is_up(120.0)
                if took_effect():
                    self.answer_lost_but_done += 1
                    return None
                self.retried += 1
                time.sleep(0.2)
        raise WebError("the web server never answered")

    def _form(self, path: str) -> str:
        import requests

        for _ in range(20):
            try:
                page = self.session.get(self.base_url + path, timeout=30)
            except (requests.ConnectionError, requests.Timeout):
                self.is_up(120.0)
                continue
            if page.status_code == 200:
                found = _CSRF.search(page.text)
                if found:
                    return found.group(1)
            if "/login/" in page.url:
                self.login()
                continue
            raise WebError(f"GET {path}: {page.status_code} {page.text[:300]}")
        raise WebError(f"GET {path}: no form")

    def login(self) -> None:
        path = "/admin/login/?next=/admin/"
        for _ in range(20):
            token = None
            try:
                page = self.session.get(self.base_url + path, timeout=30)
                found = _CSRF.search(page.text)
                token = found.group(1) if found else None
                if token is None:
                    raise WebError(f"no login form: {page.status_code}")
                done = self.session.post(
                    self.base_url + path,
                    data={
                        "csrfmiddlewaretoken": token,
                        "username": ADMIN_USER,
                        "password": ADMIN_PASSWORD,
                        "next": "/admin/",
                    },
                    headers={"Referer": self.base_url + path},
                    timeout=30,
                )
            except OSError:
                self.is_up(120.0)
                continue
            if done.status_code == 200 and "/login/" not in done.url:
                return
            raise WebError(f"login failed: {done.status_code} {done.url}")
        raise WebError("login: the web server never answered")

    # -- the admin -------------------------------------------------------------------------------
    def admin_save(
        self,
        path: str,
        fields: dict[str, str],
        photo: tuple[str, bytes],
        took_effect: Callable[[], bool],
    ) -> None:
        """POST the product admin's add or change form with a new photo."""

        def send():
            token = self._form(path)
            return self.session.post(
                self.base_url + path,
                data={**fields, "csrfmiddlewaretoken": token, "_save": "Save"},
                files={"photo": (photo[0], photo[1])},
                headers={"Referer": self.base_url + path},
                timeout=60,
                allow_redirects=False,
            )

        def took_effect_or_left_a_file() -> bool:
            if took_effect():
                return True
            self.cut_off_uploads.append(photo[0])
            return False

        answer = self._honest(send, took_effect_or_left_a_file)
        if answer is not None and answer.status_code != 302:
            errors = re.findall(r'class="errorlist[^"]*"[^>]*>(.*?)</ul>', answer.text, re.S)
            raise WebError(f"POST {path}: {answer.status_code} {errors[:3] or answer.text[:300]}")

    # -- the REST API ----------------------------------------------------------------------------
    def api_request(
        self,
        object_id: int,
        options: dict[str, Any],
        force: bool,
        took_effect: Callable[[], bool],
    ) -> dict | None:
        def send():
            return self.api.post(
                self.base_url + "/imagekit-bgremove/api/removals/",
                json={
                    "model": "catalogue.product",
                    "object_id": str(object_id),
                    "field": "photo",
                    "options": options,
                    "force": force,
                },
                timeout=60,
            )

        answer = self._honest(send, took_effect)
        if answer is None:
            return None
        if answer.status_code == 409 and answer.json().get("code") == "job_in_progress":
            return None  # the API's rule: no second request while one is unfinished
        if answer.status_code != 202:
            raise WebError(f"API: {answer.status_code} {answer.text[:300]}")
        return answer.json()
