"""The web dashboard: a page on the main port for managing and watching the host.

Only the page and its assets are served here, without an API key; every piece of data the page shows comes from the
host's JSON API (``/api/v1/...``), which the API-key guard protects. Everything ships in ``static/``: no build step, no
request to the internet.
"""

from __future__ import annotations

from llama_host import Host, Surface, hookimpl
from llama_host_dashboard.routes import StaticAssets, dashboard_handlers

__all__ = ["register_surfaces"]


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    assets = StaticAssets.load()
    return [Surface(name="dashboard", port=host.site.port, route_handlers=dashboard_handlers(assets),
                    requires_auth=False)]
