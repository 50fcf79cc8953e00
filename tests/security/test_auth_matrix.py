"""With ``api_keys`` set, every route of every listener asks for a key, except the README's exact public list.

The routes come from the running host's apps: a route added by any plugin is in the matrix without a change here.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from security_kit import KEY, Route, routes_of

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_public_routes() -> set[tuple[str, str, str]]:
    """The table between ``<!-- public-routes -->`` and ``<!-- /public-routes -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- public-routes -->", 1)[1].split("<!-- /public-routes -->", 1)[0]
    out = set()
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("listener", "") or set(cells[0]) <= {"-"}:
            continue
        path = re.search(r"`([^`]+)`", cells[2]).group(1)
        for method in cells[1].split(","):
            out.add((cells[0], method.strip(), path))
    return out


class Caller:
    """One kept-alive client per listener (a new client per request would cost more than the request)."""

    def __init__(self) -> None:
        self.clients: dict[int, httpx.Client] = {}

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients.values():
            client.close()

    def __call__(self, route: Route, headers: dict[str, str]) -> tuple[int, bytes]:
        client = self.clients.get(route.port)
        if client is None:
            client = self.clients[route.port] = httpx.Client(base_url=f"http://127.0.0.1:{route.port}", timeout=30)
        return call(client, route, headers)


def call(client: httpx.Client, route: Route, headers: dict[str, str]) -> tuple[int, bytes]:
    """The route's status and its body (an event stream is closed after its headers)."""
    with client.stream(route.method, route.url_path(), headers=headers,
                       content=None if route.method in ("GET", "HEAD") else b"{}") as r:
        body = b""
        if r.status_code != 200 or "text/event-stream" not in r.headers.get("content-type", ""):
            body = r.read()
        return r.status_code, body


def dialect_error(route: Route, body: bytes) -> bool:
    """A 401 in the route's own dialect: Ollama's ``{"error": "..."}`` on its routes, OpenAI's object elsewhere."""
    error = httpx.Response(200, content=body).json().get("error")
    if route.listener == "ollama" and (route.path == "/" or route.path.startswith("/api/")):
        return isinstance(error, str) and "API key" in error
    return isinstance(error, dict) and error.get("type") == "authentication_error"


def test_the_matrix_covers_every_listener(keyed):
    listeners = {r.listener for r in routes_of(keyed)}
    assert listeners == {"main", "ollama", "lmstudio"}
    assert len(routes_of(keyed)) > 40  # every surface's routes, not a handful


def test_every_route_asks_for_the_key_except_the_readme_list(keyed):
    public, problems = set(), []
    with Caller() as call:
        for route in routes_of(keyed):
            check_route(call, route, public, problems)
    assert not problems, "\n".join(problems)
    assert public == readme_public_routes(), "the routes answering without a key differ from the README's list"


def check_route(call: Caller, route: Route, public: set, problems: list[str]) -> None:
    status, body = call(route, {})
    if status != 401:
        public.add((route.listener, route.method, route.template))
        return
    if route.method != "HEAD" and not dialect_error(route, body):
        problems.append(f"{route}: 401 not in the surface's dialect: {body[:200]!r}")
    wrong, _ = call(route, {"Authorization": "Bearer not-" + KEY})
    if wrong != 401:
        problems.append(f"{route}: a wrong key got {wrong}")
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        right, body = call(route, headers)
        if right in (401, 403) or (right >= 500 and right != 501):  # 501: an Ollama verb llama-host does not do
            problems.append(f"{route}: with the key ({next(iter(headers))}) got {right}: {body[:200]!r}")


def test_without_keys_every_route_answers(open_host):
    """The default site file (no keys): nothing asks for one (the matrix above is not vacuous)."""
    with Caller() as call:
        problems = [f"{route}: {status}" for route in routes_of(open_host) if (status := call(route, {})[0]) in (401, 403)]
    assert not problems, "\n".join(problems)
