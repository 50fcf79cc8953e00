"""The dashboard's routes and assets, without a browser."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

import llama_host_dashboard
from llama_host.testing import serve_host
from llama_host_dashboard.routes import StaticAssets, dashboard_handlers

STATIC = Path(llama_host_dashboard.__file__).parent / "static"


@pytest.fixture
def client():
    app = Litestar(route_handlers=dashboard_handlers(StaticAssets.load()), logging_config=None)
    with TestClient(app) as client:
        yield client


def test_root_and_bare_prefix_redirect_to_the_page(client) -> None:
    for path in ("/", "/ui"):
        res = client.get(path, follow_redirects=False)
        assert res.status_code == 302
        assert res.headers["location"] == "/ui/"


def test_page_is_served_with_a_policy_that_keeps_it_on_this_origin(client) -> None:
    res = client.get("/ui/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert "<title>llama-host</title>" in res.text
    csp = res.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp


def test_assets_have_their_media_types_and_revalidate_by_etag(client) -> None:
    js = client.get("/ui/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/app.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/favicon.svg").headers["content-type"].startswith("image/svg+xml")
    again = client.get("/ui/app.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_unknown_assets_are_not_found(client) -> None:
    assert client.get("/ui/nope.js").status_code == 404
    assert client.get("/ui/..%2F__init__.py").status_code == 404


def test_every_referenced_asset_ships_in_the_package() -> None:
    html = (STATIC / "index.html").read_text()
    wanted = set(re.findall(r'(?:src|href)="([^"#:]+)"', html))
    for js in STATIC.glob("*.js"):
        wanted |= set(re.findall(r'from "\./([^"]+)"', js.read_text()))
    assert wanted, "no reference found"
    missing = sorted(name for name in wanted if not (STATIC / name.removeprefix("./")).is_file())
    assert missing == []


def test_no_asset_refers_to_the_internet() -> None:
    for path in STATIC.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")  # an XML namespace, never fetched
        assert not re.search(r"https?://", text), f"{path.name} names a URL"
        assert "//cdn" not in text and "@import" not in text


def test_the_surface_is_on_the_main_port_and_needs_no_key() -> None:
    host = SimpleNamespace(site=SimpleNamespace(port=8123))
    [surface] = llama_host_dashboard.register_surfaces(host)
    assert (surface.name, surface.port, surface.requires_auth) == ("dashboard", 8123, False)


def test_through_the_host_the_page_is_open_and_the_api_is_guarded() -> None:
    with serve_host({"api_keys": ["k1"]}, ["dashboard"]) as running:
        base = running.url("main")
        assert httpx.get(base + "/", follow_redirects=True).status_code == 200
        assert httpx.get(base + "/ui/models.js").status_code == 200
        assert httpx.get(base + "/api/v1/models").status_code == 401
        ok = httpx.get(base + "/api/v1/models", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200
