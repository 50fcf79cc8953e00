"""The ``llama-server`` runtime: one llama.cpp server process per model, bound to loopback on a free port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from llama_host import Host, ModelSpec, hookimpl
from llama_host.binaries import find_binary
from llama_host.errors import RunnerStartError
from llama_host.process import ProcessRunner, flag_args

NAME = "llama_server"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    binary: str | None = None
    """llama-server to run: a path or a command name; default: on PATH, else built by scripts/get-llama-server."""
    params: dict[str, Any] = {}
    """Flags every model gets (a model's own ``params`` win), e.g. ``{n_gpu_layers: 99}``."""


def build_argv(binary: str, spec: ModelSpec, port: int, defaults: dict[str, Any]) -> list[str]:
    params = {**defaults, **spec.params}
    argv = [binary, "-m", str(spec.path), "--host", "127.0.0.1", "--port", str(port), "--alias", spec.name]
    if spec.mmproj and "mmproj" not in params:
        argv += ["--mmproj", spec.mmproj]
    return argv + flag_args(params) + list(spec.args)


class LlamaServerRunner(ProcessRunner):
    def __init__(self, spec: ModelSpec, host: Host) -> None:
        settings: Settings = host.settings(NAME, Settings)
        self._binary = find_binary("llama-server", spec.binary or settings.binary)
        super().__init__(spec, lambda port: build_argv(self._binary or "llama-server", spec, port, settings.params),
                         env=spec.env, log_dir=host.site.log_dir)

    async def start(self, timeout: float) -> None:
        if self._binary is None:
            raise RunnerStartError(f"model '{self.model.name}': llama-server binary not found (set "
                                   f"plugins.llama_server.binary or run scripts/get-llama-server)")
        if not self.model.path:
            raise RunnerStartError(f"model '{self.model.name}': no 'path' to a GGUF file is configured")
        if not Path(self.model.path).is_file():
            raise RunnerStartError(f"model '{self.model.name}': model file not found: {self.model.path}")
        await super().start(timeout)


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


def check(spec: ModelSpec) -> list[str]:
    """What keeps a model from ever starting (a missing file is not: it may appear later)."""
    return [] if spec.path else ["path: runtime 'llama-server' needs the path of a GGUF file"]


@hookimpl
def register_runtimes(register) -> None:
    register("llama-server", LlamaServerRunner, description="llama.cpp llama-server, one process per model",
             check=check)
