"""Fixtures of the security suite: the real host with every installed plugin on free loopback ports, and the routes
of its running apps (so a route added later is covered without touching a test)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from llama_host.testing import RunningHost, serve_host

KEY = "sec-test-key"
LISTENERS = {"main": "core", "ollama": "ollama_api", "lmstudio": "lmstudio_api"}


def site(tmp_path, **extra) -> dict:
    """Every plugin, discovery on an empty folder, one model whose file does not exist (no runner ever starts)."""
    (tmp_path / "models").mkdir(exist_ok=True)
    return {"log_dir": str(tmp_path / "logs"),
            "plugins": {"discovery_gguf": {"dirs": [str(tmp_path / "models")],
                                           "state_file": str(tmp_path / "discovered.yaml")}},
            "models": {"ghost": {"path": str(tmp_path / "models" / "absent.gguf")}}, **extra}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[RunningHost]:
    """The host with ``api_keys`` set."""
    with serve_host(site(tmp_path_factory.mktemp("keyed"), api_keys=[KEY])) as rh:
        yield rh


@pytest.fixture(scope="module")
def open_host(tmp_path_factory) -> Iterator[RunningHost]:
    """The host with the default site file: no keys."""
    with serve_host(site(tmp_path_factory.mktemp("open"))) as rh:
        yield rh


@dataclass(frozen=True)
class Route:
    listener: str  # main, ollama, lmstudio (or the port, for a listener of a third-party surface)
    port: int
    method: str
    path: str  # as declared, e.g. /api/v1/models/{name:str}

    @property
    def template(self) -> str:
        """The path with parameters written ``{name}``, as the README lists them."""
        return re.sub(r"\{([^}:]+)(:[^}]*)?\}", r"{\1}", self.path)

    def url_path(self) -> str:
        """A request path for the route: every parameter filled with a name that exists nowhere."""
        return re.sub(r"\{[^}]*\}", "nowhere", self.path)


def routes_of(rh: RunningHost) -> list[Route]:
    """Every (listener, method, path) the running host serves, read from its apps (OPTIONS is the CORS preflight,
    answered by the browser check before any route)."""
    names = {rh.port(surface): listener for listener, surface in LISTENERS.items()}
    out = []
    for port, app in rh.host.build_apps().items():
        for route in app.routes:
            for method in sorted(getattr(route, "methods", ()) or ()):
                if method != "OPTIONS":
                    out.append(Route(names.get(port, str(port)), port, method, route.path))
    return sorted(set(out), key=lambda r: (r.listener, r.path, r.method))
