"""llama-host: one process in front of llama-server and other runtimes, extended by pluggy plugins."""

from typing import TYPE_CHECKING, Any

from llama_host.hookspecs import hookimpl, hookspec
from llama_host.types import ModelSpec, Surface

if TYPE_CHECKING:
    from llama_host.host import Host, HostDep

__version__ = "0.1.0"

__all__ = ["Host", "HostDep", "ModelSpec", "Surface", "__version__", "hookimpl", "hookspec"]


def __getattr__(name: str) -> Any:  # Host imports litestar; keep `import llama_host` light for the CLI's fast paths
    if name in ("Host", "HostDep"):
        from llama_host import host

        return getattr(host, name)
    raise AttributeError(name)
