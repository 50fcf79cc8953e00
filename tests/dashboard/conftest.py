"""Browser fixtures: Debian's Chromium driven by Playwright (sync API, so the tests are plain sync functions)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("LLAMA_HOST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
#: How long an expectation waits for the page to get there (a busy CI machine is slow, never wrong).
EXPECT_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """What a page did that a test must not let pass: script errors and requests leaving the machine."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.external: list[str] = []

    def on_request(self, request: object) -> None:
        url = request.url  # type: ignore[attr-defined]
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname in ("127.0.0.1", "localhost"):
            return
        self.external.append(url)


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light")  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = PageWatch()
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("request", watch.on_request)
    page.watch = watch
    try:
        yield page
    finally:
        context.close()
    assert watch.errors == [], f"script errors in the page: {watch.errors}"
    assert watch.external == [], f"the page reached outside the machine: {watch.external}"


@pytest.fixture
def shot(page: object):
    """``shot(name)`` saves a full-page screenshot of the page (or of ``of=``) as test-artifacts/dashboard/<name>.png."""

    def take(name: str, of: object = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        (of or page).screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path

    return take
