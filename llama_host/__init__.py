"""llama-host: one process in front of llama-server and other runtimes, extended by pluggy plugins."""

from llama_host.hookspecs import hookimpl, hookspec
from llama_host.types import ModelSpec, Surface

__version__ = "0.1.0"

__all__ = ["Host", "ModelSpec", "Surface", "__version__", "hookimpl", "hookspec"]


def __getattr__(name: str):  # Host imports litestar; keep `import llama_host` light for the CLI's fast paths
    if name == "Host":
        from llama_host.host import Host

        return Host
    raise AttributeError(name)
