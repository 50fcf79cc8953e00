"""Browser protection on every listener: Origin (cross-site requests), Host (DNS rebinding), CORS preflight, CSRF."""

from __future__ import annotations

import socket

import httpx
import pytest

from llama_host.security import BrowserPolicy
from llama_host.testing import serve_host, tiny_site

from security_kit import site

EVIL = "http://evil.example"
#: One route per listener and dialect, and how its 403 must look.
PROBES = [("core", "/api/v1/config", "openai"), ("core", "/v1/models", "openai"),
          ("ollama_api", "/api/tags", "ollama"), ("ollama_api", "/v1/models", "openai"),
          ("lmstudio_api", "/api/v0/models", "openai"), ("lmstudio_api", "/v1/models", "openai")]


def shaped(r: httpx.Response, dialect: str, status: int, code: str) -> bool:
    error = r.json()["error"]
    if dialect == "ollama":
        return r.status_code == status and isinstance(error, str)
    return r.status_code == status and error["code"] == code and error["message"]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with serve_host(site(tmp_path_factory.mktemp("browser"))) as rh:
        yield rh


@pytest.mark.parametrize("surface, path, dialect", PROBES)
def test_a_foreign_origin_gets_403_in_the_dialect(host, surface, path, dialect):
    with host.client(surface) as c:
        r = c.get(path, headers={"Origin": EVIL})
        assert shaped(r, dialect, 403, "origin_not_allowed"), r.text
        assert "access-control-allow-origin" not in r.headers
        assert c.get(path).status_code == 200  # the same request without Origin (a CLI, an SDK)


@pytest.mark.parametrize("surface, path, dialect", PROBES)
def test_a_foreign_host_name_gets_421_in_the_dialect(host, surface, path, dialect):
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 reads nothing."""
    with host.client(surface) as c:
        port = host.port(surface)
        for name in ("attacker.example", f"attacker.example:{port}", "localhost.attacker.example", "127.0.0.1.nip.io"):
            r = c.get(path, headers={"Host": name})
            assert shaped(r, dialect, 421, "host_not_allowed"), (name, r.text)
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "app.localhost"):
            assert c.get(path, headers={"Host": name}).status_code == 200, name


@pytest.mark.parametrize("origin", ["http://localhost:3000", "https://localhost", "http://127.0.0.1:5173",
                                    "http://[::1]:8080", "vscode-webview://abcdef"])
def test_loopback_pages_and_local_apps_are_allowed(host, origin):
    with host.client() as c:
        r = c.get("/v1/models", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "Origin" in r.headers["vary"]


def test_the_listeners_own_origin_is_allowed(host):
    """The dashboard's own requests: Origin is the listener itself, by whatever loopback name it was opened."""
    for surface in ("core", "ollama_api", "lmstudio_api"):
        port = host.port(surface)
        with host.client(surface) as c:
            for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                assert c.get("/v1/models", headers={"Origin": origin}).status_code == 200


@pytest.mark.parametrize("origin", ["null", "http://evil.example:80", "http://localhost.evil.example",
                                    "http://127.0.0.1.evil.example", "https://evil.example/path", "file://", "garbage"])
def test_foreign_null_and_malformed_origins_are_refused(host, origin):
    with host.client() as c:
        assert c.get("/v1/models", headers={"Origin": origin}).status_code == 403


def test_cors_preflight_for_allowed_origins_only(host):
    asks = {"Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count, "
                                              "anthropic-version, x-api-key"}
    for surface, path in (("core", "/v1/chat/completions"), ("ollama_api", "/api/chat"),
                          ("lmstudio_api", "/api/v1/chat")):
        with host.client(surface) as c:
            r = c.options(path, headers={"Origin": "http://localhost:3000", **asks})
            assert r.status_code == 204, r.text
            assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert "POST" in r.headers["access-control-allow-methods"]
            allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "x-stainless-os", "anthropic-version", "x-api-key", "content-type"} <= allowed
            r = c.options(path, headers={"Origin": EVIL, **asks})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_private_network_access_preflight(host):
    with host.client() as c:
        r = c.options("/v1/models", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Private-Network": "true"})
        assert r.status_code == 204 and r.headers["access-control-allow-private-network"] == "true"


def test_cross_site_subresource_without_origin_is_refused(host):
    """``<img src=...>`` / ``<script src=...>`` carry no Origin; browsers mark them Sec-Fetch-Site: cross-site."""
    with host.client() as c:
        r = c.get("/api/v1/config", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
        assert r.status_code == 403
        # A link the user follows to the dashboard is a navigation: allowed.
        assert c.get("/ui/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}).status_code == 200
        assert c.get("/api/v1/config", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_site_keys_widen_origins_and_hosts(tmp_path):
    config = {"log_dir": str(tmp_path), "allowed_origins": ["https://*.example.com", "http://webui.lan:8080"],
              "allowed_hosts": ["llm.home.lan"]}
    with serve_host(config, ["openai_api"]) as rh, rh.client() as c:
        for origin, status in (("https://chat.example.com", 200), ("http://webui.lan:8080", 200),
                               ("http://webui.lan:8081", 403), ("https://example.com.evil.example", 403)):
            assert c.get("/v1/models", headers={"Origin": origin}).status_code == status, origin
        assert c.get("/v1/models", headers={"Host": "llm.home.lan"}).status_code == 200
        assert c.get("/v1/models", headers={"Host": f"llm.home.lan:{rh.port()}",
                                            "Origin": f"http://llm.home.lan:{rh.port()}"}).status_code == 200
        assert c.get("/v1/models", headers={"Host": "other.home.lan"}).status_code == 421
    config = {"log_dir": str(tmp_path), "allowed_origins": ["*"], "allowed_hosts": ["*"]}
    with serve_host(config, ["openai_api"]) as rh, rh.client() as c:
        assert c.get("/v1/models", headers={"Origin": EVIL, "Host": "attacker.example"}).status_code == 200


def test_bound_to_the_network_the_host_is_reached_by_address_not_by_foreign_names():
    """Bound to 0.0.0.0 (or a LAN address): addresses and the machine's name are served, other names are not
    (a rebinding page always uses a name); the dashboard opened by the LAN address is its own origin."""
    policy = BrowserPolicy("0.0.0.0")
    assert policy.host_allowed(b"192.168.1.5:8000") and policy.host_allowed(b"[fe80::1]:8000")
    assert policy.host_allowed(b"localhost:8000")
    assert not policy.host_allowed(b"attacker.example:8000") and not policy.host_allowed(b"192.168.1.5.nip.io")
    assert policy.origin_allowed(b"http://192.168.1.5:8000", b"192.168.1.5:8000")
    assert not policy.origin_allowed(b"http://192.168.1.6:8000", b"192.168.1.5:8000")
    assert not policy.origin_allowed(b"http://192.168.1.5:9000", b"192.168.1.5:8000")
    loopback = BrowserPolicy("127.0.0.1")
    assert not loopback.host_allowed(b"192.168.1.5:8000") and loopback.host_allowed(b"127.0.0.2")


# --- CSRF: a page posting text/plain (no preflight) must not start a model -----------------------------------------


@pytest.mark.real
def test_text_plain_posts_from_a_foreign_page_load_nothing(tmp_path, tiny_model, llama_server_bin):
    config = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path / "logs"))
    with serve_host(config, ["openai_api", "ollama_api", "llama_server"]) as rh:
        forged = {"Origin": EVIL, "Content-Type": "text/plain"}
        body = b'{"model": "tiny", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
        with rh.client() as main, rh.client("ollama_api") as ollama:
            for client, path in ((main, "/api/v1/models/tiny/load"), (main, "/v1/chat/completions"),
                                 (ollama, "/api/generate"), (ollama, "/v1/completions")):
                r = client.post(path, content=body, headers=forged)
                assert r.status_code == 403, (path, r.text)
            assert rh.host.scheduler.status("tiny").state == "unloaded"
            assert rh.host.scheduler.logs("tiny").tail(10) == []  # no runner was ever started
            # The control: the same request from an allowed page does load the model.
            r = main.post("/api/v1/models/tiny/load", content=body,
                          headers={"Origin": "http://localhost:3000", "Content-Type": "text/plain"})
            assert r.status_code == 200 and rh.host.scheduler.status("tiny").state == "loaded"


def test_two_origin_or_host_headers_are_refused(host):
    with host.client() as c:
        r = c.get("/v1/models", headers=[("Origin", "http://localhost:3000"), ("Origin", EVIL)])
        assert r.status_code == 403
    with socket.create_connection(("127.0.0.1", host.port()), timeout=10) as sock:  # httpx refuses to send it
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{host.port()}\r\nHost: attacker.example\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = sock.recv(65536)
    assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 421 ")), reply[:100]  # the parser or the check: not served
