"""The browser fixture itself: Debian's Chromium, driven by Playwright, sees our pages."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_admin_login_page_renders_without_console_errors(page, live_server):
    page.goto(f"{live_server.url}/admin/login/")
    assert page.locator("input[name=username]").is_visible()
    shot = page.shots.take("login")
    assert shot.stat().st_size > 1000
    assert page.console_errors == []


@pytest.mark.urls("example_project.urls")
def test_the_redoc_page_fetches_nothing_from_another_site(page, live_server):
    pytest.importorskip("drf_spectacular")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    blocked: list[str] = []
    page.on(
        "requestfailed",
        lambda request: request.failure == "csp" and blocked.append(request.url),
    )
    page.goto(f"{live_server.url}/api/redoc/")
    page.get_by_text("API docs by Redocly").wait_for()  # the sidebar whose logo is on a CDN
    page.get_by_text("List products").first.wait_for(state="attached")
    page.shots.take("redoc")
    # The page's policy stops the browser before it contacts Redocly's CDN for the logo.
    assert blocked == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
    here = (live_server.url, f"blob:{live_server.url}")
    assert [url for url in asked if not url.startswith(here) and url not in blocked] == []
