"""Helpers of the security suite: the site every test serves, and the routes of the running apps (so a route added
later is covered without touching a test)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llama_host.testing import RunningHost

KEY = "sec-test-key"
LISTENERS = {"main": "core", "ollama": "ollama_api", "lmstudio": "lmstudio_api"}


def site(tmp_path, **extra) -> dict:
    """Every plugin, discovery on an empty folder, one model whose file does not exist (no runner ever starts)."""
    (tmp_path / "models").mkdir(exist_ok=True)
    return {"log_dir": str(tmp_path / "logs"),
            "plugins": {"discovery_gguf": {"dirs": [str(tmp_path / "models")],
                                           "state_file": str(tmp_path / "discovered.yaml")}},
            "models": {"ghost": {"path": str(tmp_path / "models" / "absent.gguf")}}, **extra}


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
