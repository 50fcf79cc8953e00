"""The ``llama-server`` runtime: one llama.cpp server process per model, bound to loopback on a free port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from llama_host import Host, ModelSpec, hookimpl
from llama_host.binaries import find_binary
from llama_host.errors import RunnerStartError
from llama_host.process import ProcessRunner, flag_args

from .rpc import RpcWorkers

NAME = "llama_server"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    binary: str | None = None
    """llama-server to run: a path or a command name; default: on PATH, else built by scripts/get-llama-server."""
    params: dict[str, Any] = {}
    """Flags every model gets (a model's own ``params`` win), e.g. ``{n_gpu_layers: 99}``."""


def build_argv(binary: str, spec: ModelSpec, port: int, defaults: dict[str, Any],
               rpc: list[str] | None = None) -> list[str]:
    """``rpc``: the RPC workers to spread the layers over (default: the model's ``rpc``)."""
    params = {**defaults, **spec.params}
    argv = [binary, "-m", str(spec.path), "--host", "127.0.0.1", "--port", str(port), "--alias", spec.name]
    if spec.mmproj and "mmproj" not in params:
        argv += ["--mmproj", spec.mmproj]
    workers = spec.rpc if rpc is None else rpc
    if workers and "rpc" not in params:
        argv += ["--rpc", ",".join(workers)]
    return argv + flag_args(params) + list(spec.args)


class LlamaServerRunner(ProcessRunner):
    def __init__(self, spec: ModelSpec, host: Host) -> None:
        settings: Settings = host.settings(NAME, Settings)
        self._binary = find_binary("llama-server", spec.binary or settings.binary)
        self._rpc = RpcWorkers(spec.name, spec.rpc, spec.rpc_failover) if spec.rpc else None
        #: why the runner ended on its own, when known (read by the scheduler)
        self.exit_reason: str | None = None
        super().__init__(spec, lambda port: build_argv(self._binary or "llama-server", spec, port, settings.params,
                                                       rpc=self._rpc.used if self._rpc else None),
                         env=spec.env, log_dir=host.site.log_dir)

    @property
    def details(self) -> dict[str, Any]:
        """Shown in the model's status: its RPC workers and their last check."""
        return self._rpc.details() if self._rpc else {}

    async def start(self, timeout: float) -> None:
        if self._binary is None:
            raise RunnerStartError(f"model '{self.model.name}': llama-server binary not found (set "
                                   f"plugins.llama_server.binary or run scripts/get-llama-server)")
        if not self.model.path:
            raise RunnerStartError(f"model '{self.model.name}': no 'path' to a GGUF file is configured")
        if not Path(self.model.path).is_file():
            raise RunnerStartError(f"model '{self.model.name}': model file not found: {self.model.path}")
        if self._rpc is None:
            await super().start(timeout)
            return
        used = await self._rpc.choose()
        dropped = [a for a in self._rpc.configured if a not in used]
        self._note(f"RPC workers: {', '.join(used)}" + (f" (left out, unreachable: {', '.join(dropped)})"
                                                         if dropped else ""))
        await super().start(timeout)
        self._rpc.watch(lambda: self.pid, self._worker_lost)

    async def _worker_lost(self, reason: str) -> None:
        self.exit_reason = f"stopped: {reason}"
        self._note(f"{reason}: stopping llama-server")
        await super().stop(grace=1.0)

    async def stop(self, grace: float) -> None:
        if self._rpc is not None:
            self._rpc.stop_watch()
        await super().stop(grace)

    async def wait(self) -> int | None:
        code = await super().wait()
        if self._rpc is not None:
            self._rpc.stop_watch()
            if self.exit_reason is None and not self.stopping:
                reason = await self._rpc.explain_exit()
                if reason:
                    self.exit_reason = f"exited (code {code}): {reason}"
        return code


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_runtimes(register) -> None:
    register("llama-server", LlamaServerRunner, description="llama.cpp llama-server, one process per model")
