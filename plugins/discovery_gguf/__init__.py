"""discovery_gguf: serve every GGUF model dropped into the model folders, with its real metadata.

Site file::

    plugins:
      discovery_gguf:
        dirs: [~/models]
        rescan_seconds: 60          # 0 = at startup and on POST /api/v1/discovery/rescan only
        params: {ctx_size: 8192}    # params given to newly found models

Found models are kept in ``discovered.yaml`` next to the site file (never in the site file itself); edit their
params there. Routes on the main port: ``GET /api/v1/discovery`` (folders, last scan, models) and
``POST /api/v1/discovery/rescan`` (``{added, changed, missing, errors, ...}``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Controller, get, post

from llama_host import HostDep, hookimpl
from llama_host.types import ModelSpec, Surface

from .service import PLUGIN, Discovery, Settings

if TYPE_CHECKING:
    from llama_host.host import Host

__all__ = ["Settings", "config_schema", "discover_models", "lifespan", "reconfigure", "register_surfaces",
           "rescan_models"]

_discoveries: weakref.WeakKeyDictionary[Any, Discovery] = weakref.WeakKeyDictionary()


def discovery_of(host: Host) -> Discovery:
    """This host's discovery state (created on first use)."""
    found = _discoveries.get(host)
    if found is None:
        found = _discoveries[host] = Discovery(host, host.settings(PLUGIN, Settings))
    return found


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def discover_models(host: Host) -> list[ModelSpec]:
    """The cached catalogue. Outside an event loop (a one-shot command) the first call scans right away."""
    d = discovery_of(host)
    if d.specs is None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            d.scan_sync()
        else:
            return []  # the lifespan scans in a worker thread and refreshes the host's models
    return list(d.specs or [])


@hookimpl
def rescan_models(host: Host):
    """A pull or a delete changed the managed folder: scan now (the managed folder is always scanned)."""
    return discovery_of(host).rescan()


@hookimpl
def reconfigure(host: Host) -> bool:
    """A reload changed ``plugins.discovery_gguf``: apply it live (see :meth:`Discovery.reconfigure`)."""
    return discovery_of(host).reconfigure(host.settings(PLUGIN, Settings))


@hookimpl
def lifespan(host: Host):
    return discovery_of(host).running()


class DiscoveryController(Controller):
    path = "/api/v1/discovery"
    tags = ["discovery"]

    @get("/", sync_to_thread=False)
    def status(self, host: HostDep) -> dict[str, Any]:
        """Folders scanned, the state file, the last scan's report and the discovered models."""
        return discovery_of(host).status()

    @post("/rescan", status_code=200)
    async def rescan(self, host: HostDep) -> dict[str, Any]:
        """Scan the folders now; returns the names added, changed and missing, and the files that failed."""
        report = await discovery_of(host).rescan()
        return msgspec.to_builtins(report)


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

    return [Surface(name=PLUGIN, port=host.site.port, route_handlers=[DiscoveryController],
                    exception_handlers=OPENAI_EXCEPTION_HANDLERS)]
