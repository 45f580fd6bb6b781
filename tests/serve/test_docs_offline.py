"""/docs (Swagger UI) and /redoc render in a real headless Chromium with the network cut off:
every request that is not to the service on 127.0.0.1 is refused, three times over (the pages'
Content-Security-Policy, Chromium resolving no other host, playwright aborting and recording any
request that gets that far)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # fmt: skip


def offline_page(browser, requested: list[str], refused: list[str], errors: list[str], failed: dict[str, str]):
    """A page whose context lets only 127.0.0.1 through (data: and blob: URLs are local)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})

    def route(r) -> None:
        url = r.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1":
            r.continue_()
        else:
            refused.append(url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    context.on("request", lambda req: requested.append(req.url))
    context.on("requestfailed", lambda req: failed.__setitem__(req.url, req.failure or ""))
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


@pytest.mark.slow
def test_docs_and_redoc_render_offline(live_server, index_copy: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing: apt-get install chromium")
    from playwright.sync_api import expect, sync_playwright

    server = live_server(index_copy)
    requested: list[str] = []
    refused: list[str] = []
    errors: list[str] = []
    failed: dict[str, str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = offline_page(browser, requested, refused, errors, failed)

        page.goto(server.url + "/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("clipforge search")
        paths = page.locator(".opblock-summary-path")
        expect(paths.filter(has_text="/api/search").first).to_be_visible()
        expect(paths.filter(has_text="/encode").first).to_be_visible()
        assert paths.count() >= 12
        # The page works, not just renders: run GET /health from it.
        health = page.locator(".opblock-get", has=page.locator(".opblock-summary-path", has_text="/health"))
        health.locator(".opblock-summary").click()
        health.get_by_role("button", name="Try it out").click()
        health.get_by_role("button", name="Execute").click()
        expect(health.locator(".live-responses-table tbody td.response-col_status").first).to_contain_text("200")

        page.goto(server.url + "/redoc")
        expect(page.locator("redoc h1").first).to_contain_text("clipforge search")
        expect(page.get_by_text("/api/search", exact=False).first).to_be_attached()
        browser.close()

    assert refused == []  # no request got as far as the network
    outside = {u for u in requested if urlsplit(u).hostname != "127.0.0.1" and urlsplit(u).scheme not in ("data", "blob")}
    assert {u: failed.get(u) for u in outside} == {u: "csp" for u in outside}  # asked for, and stopped in the browser
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in requested)
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in requested)
    # The one refusal expected: the page's own policy keeps ReDoc's logo from a CDN from loading.
    assert [e for e in errors if not ("Content Security Policy" in e and "cdn.redoc.ly" in e)] == [], errors
