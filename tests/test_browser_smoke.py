"""The browser fixture itself: Debian's Chromium, driven by Playwright, sees our pages."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_admin_login_page_renders_without_console_errors(page, live_server):
    page.goto(f"{live_server.url}/admin/login/")
    assert page.locator("input[name=username]").is_visible()
    shot = page.shots.take("login")
    assert shot.stat().st_size > 1000
    assert page.console_errors == []
