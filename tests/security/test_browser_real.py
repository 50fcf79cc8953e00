"""The browser check against a real browser: Chromium on a page of a foreign site (``evil.example``, resolved to
127.0.0.1 by Chromium's own resolver rules, so no traffic leaves the machine) tries what the issue describes."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_kit import site

from llama_host.process import free_port
from llama_host.testing import serve_host

CHROMIUM = os.environ.get("LLAMA_HOST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pages() -> Iterator[int]:
    """A port serving an empty page: the attacker's site (as evil.example) or a local web UI (as localhost)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>page</title><p>a page"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with serve_host(site(tmp_path_factory.mktemp("browser-real"))) as rh:
        yield rh


def open_page(chromium, url: str):
    context = chromium.new_context()
    page = context.new_page()
    page.goto(url)
    return context, page


def test_a_foreign_page_cannot_drive_or_read_the_host(chromium, pages, host):
    main, ollama = host.port(), host.port("ollama_api")
    context, page = open_page(chromium, f"http://evil.example:{pages}/")
    try:
        # Simple requests need no preflight: the browser sends them, the host must refuse them.
        page.evaluate("""async ([main, ollama]) => {
            const forged = {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                            body: '{"model": "ghost", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}'};
            await fetch(`http://127.0.0.1:${main}/api/v1/models/ghost/load`, forged);
            await fetch(`http://127.0.0.1:${main}/v1/chat/completions`, forged);
            await fetch(`http://127.0.0.1:${ollama}/api/generate`, forged);
        }""", [main, ollama])
        read = page.evaluate("""async (main) => {
            try { const r = await fetch(`http://127.0.0.1:${main}/api/v1/config`); return await r.text(); }
            catch (e) { return "blocked: " + e; }
        }""", main)
        assert read.startswith("blocked")
    finally:
        context.close()
    assert host.host.scheduler.status("ghost").state == "unloaded"  # nothing tried to start it
    # DNS rebinding: the attacker's name now points at 127.0.0.1, the page is same-origin with the host's port.
    context, page = open_page(chromium, f"http://evil.example:{main}/api/v1/config")
    try:
        text = page.inner_text("body")
        assert "host_not_allowed" in text and "api_keys" not in text
    finally:
        context.close()


def test_a_local_web_ui_keeps_working(chromium, pages, host):
    """A page on localhost (another port): CORS preflight with the headers SDKs send, then the answer is readable."""
    context, page = open_page(chromium, f"http://localhost:{pages}/")
    try:
        reply = page.evaluate("""async (main) => {
            const r = await fetch(`http://127.0.0.1:${main}/v1/models`, {headers: {
                "Authorization": "Bearer x", "x-stainless-os": "Linux", "anthropic-version": "2023-06-01"}});
            return [r.status, await r.json()];
        }""", host.port())
        assert reply == [200, {"object": "list", "data": reply[1]["data"]}]
    finally:
        context.close()
