"""The ``llama-server`` runtime: one llama.cpp server process per model, bound to loopback on a free port.

Each runner gets a random key that only the host knows (``--api-key-file``, from a 0600 file in a private folder that
is removed as soon as the runner has read it) and sends on every request, so a local user or a web page that finds
the runner's port cannot use it; CORS on the runner allows no page but its own origin.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from llama_host import Host, ModelSpec, hookimpl
from llama_host.binaries import find_binary
from llama_host.errors import RunnerStartError
from llama_host.facts import ModelFacts, RuntimeFacts, truthy
from llama_host.process import ProcessRunner, flag_args

from .rpc import RpcWorkers

NAME = "llama_server"
log = logging.getLogger(__name__)

#: ``--threads-http`` unless a model's ``params`` set it. With llama-server's default (about ``--parallel`` + 2
#: threads) a burst of new connections (32 clients at once; the host's pool after the runner closed idle ones) left
#: some requests unread until a kept-alive connection had been idle for cpp-httplib's 5 s: stalls of 5 or 10 s, also
#: for clients that connect directly. Every thread is created at start: 128 added ~4.5 ms to a cold start, 64 ~1 ms
#: (bench/README.md, "Fourth pass"); 64 also leave room for ``--parallel`` up to ~60 slots.
HTTP_THREADS = 64

#: Flags the runner's lockdown needs that an older llama-server may not know (it then exits at once naming one).
NEWER_FLAGS = ("--api-key-file", "--cors-origins", "--no-cors-credentials", "--no-ui")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    binary: str | None = None
    """llama-server to run: a path or a command name; default: on PATH, else built by scripts/get-llama-server."""
    params: dict[str, Any] = {}
    """Flags every model gets (a model's own ``params`` win), e.g. ``{n_gpu_layers: 99}``."""


def lockdown_args(port: int, key_file: str | None, key: str | None = None) -> list[str]:
    """The flags that make a runner answer only the host: its key (from ``key_file``; ``key`` on the command line
    only for a llama-server too old for the file), CORS for no page but the runner's own origin, no web UI."""
    if key_file is None:
        return ["--api-key", key or ""]
    return ["--api-key-file", key_file, "--cors-origins", f"http://127.0.0.1:{port}", "--no-cors-credentials",
            "--no-ui"]


def build_argv(binary: str, spec: ModelSpec, port: int, defaults: dict[str, Any],
               lockdown: list[str] | None = None, rpc: list[str] | None = None) -> list[str]:
    """The command line; ``lockdown`` flags come before the model's ``params`` and ``args``, which may override the
    CORS and UI ones (llama-server takes the last), and may add keys but not remove the host's. ``rpc``: the RPC
    workers to spread the layers over (default: the model's ``rpc``)."""
    params = {**defaults, **spec.params}
    argv = [binary, "-m", str(spec.path), "--host", "127.0.0.1", "--port", str(port), "--alias",
            spec.upstream_model or spec.name]
    if spec.mmproj and "mmproj" not in params:
        argv += ["--mmproj", spec.mmproj]
    workers = spec.rpc if rpc is None else rpc
    if workers and "rpc" not in params:
        argv += ["--rpc", ",".join(workers)]
    if _configured_http_threads(spec, defaults) is _UNSET:
        argv += ["--threads-http", str(HTTP_THREADS)]
    return argv + list(lockdown or []) + flag_args(params) + list(spec.args)


_UNSET = object()


def _configured_http_threads(spec: ModelSpec, defaults: dict[str, Any]) -> Any:
    """``--threads-http`` as the model's ``args`` (the last one) or ``params`` (or the plugin's) set it, else _UNSET."""
    args = list(spec.args)
    if "--threads-http" in args:
        at = len(args) - 1 - args[::-1].index("--threads-http")
        return args[at + 1] if at + 1 < len(args) else None
    params = {**defaults, **spec.params}
    for key in ("threads_http", "threads-http"):
        if key in params:
            return params[key]
    return _UNSET


def http_threads(spec: ModelSpec, defaults: dict[str, Any]) -> int | None:
    """The runner's HTTP threads: :data:`HTTP_THREADS` unless configured; ``None`` when configured as llama-server's
    own choice (``-1``) or as something unreadable (the host then does not bound its connections)."""
    value = _configured_http_threads(spec, defaults)
    if value is _UNSET:
        return HTTP_THREADS
    try:
        threads = int(value)
    except (TypeError, ValueError):
        return None
    return threads if threads > 0 else None


_CTX_KEYS = ("ctx_size", "c", "ctx-size", "n_ctx")
_CTX_FLAGS = ("-c", "--ctx-size")
_EMBEDDING_KEYS = ("embeddings", "embedding")
_EMBEDDING_FLAGS = ("--embedding", "--embeddings")


def runtime_facts(spec: ModelSpec, host: Host) -> RuntimeFacts:
    """llama-server's part of a model's facts: the flags it runs with (``plugins.llama_server.params`` < the
    model's ``params``, which hold any load parameters), the context ``--ctx-size`` gives (``args`` win, as on the
    command line) and whether ``--embeddings`` is on. ``ctx_size: 0`` means the model's own context."""
    settings: Settings = host.settings(NAME, Settings) if host is not None else Settings()
    params = {**settings.params, **spec.params}
    spellings = [params.pop(key) for key in _CTX_KEYS if key in params]
    if spellings:  # one spelling, so that a load request's ctx_size compares equal to a configured -c
        params["ctx_size"] = spellings[0]
    value = params.get("ctx_size")
    context = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).isdigit() \
        and int(value) > 0 else None
    args = list(spec.args)
    for i, arg in enumerate(args[:-1]):
        if arg in _CTX_FLAGS and args[i + 1].isdigit():
            context = int(args[i + 1]) or None
    embedding = any(truthy(params.get(k)) for k in _EMBEDDING_KEYS) or any(a in _EMBEDDING_FLAGS for a in args)
    return RuntimeFacts(params=params, context=context, embedding=embedding)


KV_BYTES = 2  # f16 K and V cache entries


def kv_cache_bytes(meta: Mapping[str, Any], context: int | None) -> int:
    """The f16 KV cache of a model (GGUF metadata: layers, heads, KV heads, embedding width) at ``context`` tokens;
    0 when the metadata does not say."""
    layers, heads, kv_heads, width = (_count(meta.get(k))
                                      for k in ("block_count", "head_count", "head_count_kv", "embedding_length"))
    if not (context and layers and heads and width):
        return 0
    return 2 * layers * context * (kv_heads or heads) * (width // heads) * KV_BYTES


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def memory_estimate(spec: ModelSpec, facts: ModelFacts) -> int:
    """The memory a llama-server of ``spec`` takes: its weights (the model file and projector) plus the KV cache at
    the context it runs with (``facts.context_length``: configured, load-time or trained)."""
    return (facts.file_size or 0) + kv_cache_bytes(spec.metadata or {}, facts.context_length)


class LlamaServerRunner(ProcessRunner):
    def __init__(self, spec: ModelSpec, host: Host) -> None:
        settings: Settings = host.settings(NAME, Settings)
        self._binary = find_binary("llama-server", spec.binary or settings.binary)
        self._rpc = RpcWorkers(spec.name, spec.rpc, spec.rpc_failover) if spec.rpc else None
        #: why the runner ended on its own, when known (read by the scheduler)
        self.exit_reason: str | None = None
        self._key = secrets.token_urlsafe(32)
        self._key_file: str | None = None
        self._legacy_key = False  # an old llama-server: the key goes on the command line
        #: read by the relay: requests name the model as its ``--alias`` does
        self.upstream_model = spec.upstream_model
        #: read by the relay: the host opens no more connections than the runner has HTTP threads
        self.max_connections = http_threads(spec, settings.params)
        super().__init__(spec, lambda port: build_argv(self._binary or "llama-server", spec, port, settings.params,
                                                       self._lockdown(port), rpc=self._rpc.used if self._rpc else None),
                         env=spec.env, log_dir=host.site.log_dir,
                         headers={"Authorization": f"Bearer {self._key}"})

    def _lockdown(self, port: int) -> list[str]:
        if self._legacy_key:
            return lockdown_args(port, None, self._key)
        return lockdown_args(port, self._key_file or "")

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
        if self._rpc is not None:
            used = await self._rpc.choose()
            dropped = [a for a in self._rpc.configured if a not in used]
            self._note(f"RPC workers: {', '.join(used)}" + (f" (left out, unreachable: {', '.join(dropped)})"
                                                             if dropped else ""))
        folder = tempfile.mkdtemp(prefix="llama-host-runner-")  # 0700: only this user can look inside
        try:
            self._key_file = os.path.join(folder, "api-key")
            fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(self._key + "\n")
            try:
                await super().start(timeout)
            except RunnerStartError as exc:
                if not _rejects_newer_flags(exc.log_tail):
                    raise
                log.warning("%s: this llama-server is too old for --api-key-file or --cors-origins; its key goes "
                            "on its command line instead (visible to local users)", self.model.name)
                self._legacy_key = True
                await super().start(timeout)
        finally:
            _remove_key(folder, self._key_file)  # read at startup only: the running server keeps the key
            self._key_file = None
        if self._rpc is not None:
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


def _remove_key(folder: str, key_file: str | None) -> None:
    """Remove the key's file and folder: two calls on the way from healthy to the first reply, where
    ``shutil.rmtree`` made a dozen (~0.3 ms); it takes over if anything else is in the folder."""
    try:
        if key_file is not None:
            os.unlink(key_file)
        os.rmdir(folder)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)


def _rejects_newer_flags(log_tail: list[str]) -> bool:
    return any("invalid argument" in line and any(flag in line for flag in NEWER_FLAGS) for line in log_tail)


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


def check(spec: ModelSpec) -> list[str]:
    """What keeps a model from ever starting (a missing file is not: it may appear later)."""
    return [] if spec.path else ["path: runtime 'llama-server' needs the path of a GGUF file"]


def embedding_params(spec: ModelSpec) -> dict[str, Any] | None:
    """The flags of ``spec``'s embedding runner: ``--embeddings`` with mean pooling (unless the model's ``params``
    name a pooling), and a physical batch as large as the logical one, since llama-server embeds an input in one
    batch (``input is too large to process`` otherwise)."""
    if not spec.path:
        return None
    params = {k: v for k, v in spec.params.items() if k not in ("reranking", "rerank")}
    params["embeddings"] = True
    params.setdefault("pooling", "mean")
    batch = params.get("batch_size") or params.get("b") or 2048
    params.setdefault("ubatch_size", batch)
    return params


@hookimpl
def register_runtimes(register) -> None:
    register("llama-server", LlamaServerRunner, description="llama.cpp llama-server, one process per model",
             facts=runtime_facts, check=check, embedding=embedding_params, local=True, memory=memory_estimate)
