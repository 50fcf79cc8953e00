"""The test kit for llama-host and its plugins, loaded by pytest as a plugin (entry point ``pytest11``).

Fixtures: ``tiny_model`` (a generated GGUF), ``llama_server_bin`` (the real llama-server), ``free_port``.
Helpers: :func:`serve_host` runs the real host (real uvicorn listeners on free loopback ports) in a background thread;
:func:`run_cli` runs the ``llama-host`` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest

from llama_host.binaries import find_binary
from llama_host.hookspecs import hookimpl

if TYPE_CHECKING:
    from llama_host.host import Host
from llama_host.process import free_port as _free_port


class RunningHost:
    """A host serving in a background thread: ``url("ollama_api")``, ``port("main")``, ``call(coroutine)``."""

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self.host = host
        self.loop = loop
        self._stop = stop

    def port(self, name: str = "main") -> int:
        if name in ("main", "core"):
            return self.host.site.port
        for surface in self.host.surfaces:
            if surface.name == name:
                return surface.port
        raise KeyError(f"no surface named {name!r}")

    def url(self, name: str = "main") -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def client(self, name: str = "main", **kwargs: Any) -> httpx.Client:
        """An httpx client for one listener (``with rh.client("ollama_api") as c: c.get("/api/tags")``)."""
        return httpx.Client(base_url=self.url(name), **kwargs)

    def async_client(self, name: str = "main", **kwargs: Any) -> httpx.AsyncClient:
        """An async httpx client for one listener, for async tests."""
        return httpx.AsyncClient(base_url=self.url(name), **kwargs)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        """Run a coroutine on the host's event loop (e.g. ``host.scheduler.load(...)``) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)


def _fill_ports(config: dict[str, Any], plugins: Iterable[str] | None) -> dict[str, Any]:
    """Give the main port and every plugin port that has an integer default a free port, unless set."""
    from llama_host.plugins import enabled_flags, make_plugin_manager, plugin_schemas

    config = copy.deepcopy(config)
    config.setdefault("port", _free_port())
    pm, infos = make_plugin_manager(enabled_flags(config.get("plugins")), only=plugins)
    sections = config.setdefault("plugins", {})
    for name, schema in plugin_schemas(pm, infos).items():
        if not schema:
            continue
        body = schema
        if "$ref" in schema:
            body = schema.get("$defs", {}).get(schema["$ref"].rsplit("/", 1)[1], {})
        port = body.get("properties", {}).get("port", {})
        section = sections.get(name) or {}
        if isinstance(port.get("default"), int) and "port" not in section and section.get("enabled", True):
            sections[name] = {**section, "port": _free_port()}
    return config


@contextlib.contextmanager
def serve_host(config: dict[str, Any], plugins: Iterable[str] | None = None, *,
               extra: Iterable[tuple[str, object]] = (), log_dir: str | Path | None = None,
               timeout: float = 60, site_file: str | Path | None = None) -> Iterator[RunningHost]:
    """Build a host from ``config`` (a site-file dict) and serve it until the block ends.

    ``plugins=None`` loads every installed plugin; a list loads only those. Ports not given are chosen free.
    ``site_file``: write the config there (ports filled in) and build the host from that file, as ``llama-host
    serve --config`` does (reloads read it again; :func:`write_site` writes an edit).
    """
    from llama_host.eventloop import loop_factory
    from llama_host.host import Host
    from llama_host.serve import bind_sockets, serve

    plugins = list(plugins) if plugins is not None else None
    data = _fill_ports(config, plugins)
    if log_dir is not None:
        data.setdefault("log_dir", str(log_dir))
    if site_file is not None:
        write_site(site_file, data)
        host = Host.from_config(Path(site_file), only=plugins, extra=extra)
    else:
        host = Host.from_config(data=data, only=plugins, extra=extra)
    sockets = bind_sockets(host)
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        factory = loop_factory(host.site.event_loop)  # the loop the CLI would serve on
        loop = factory() if factory is not None else asyncio.new_event_loop()
        stop = asyncio.Event()
        state["running"] = RunningHost(host, loop, stop)
        try:
            loop.run_until_complete(serve(host, stop=stop, sockets=sockets, install_signals=False,
                                          on_ready=lambda ports: ready.set()))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            state["error"] = exc
        finally:
            ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="llama-host", daemon=True)
    thread.start()
    if not ready.wait(timeout) or "error" in state:
        raise RuntimeError(f"host did not start: {state.get('error')!r}")
    running: RunningHost = state["running"]
    try:
        yield running
    finally:
        running.stop()
        thread.join(timeout + 30)
        host.scheduler.kill_all()
        if "error" in state:
            raise state["error"]


def write_site(path: str | Path, config: dict[str, Any]) -> None:
    """Write a site file atomically (as editors save), e.g. an edit of a running host's file."""
    import yaml

    from llama_host.atomic import write_atomic

    write_atomic(Path(path), yaml.safe_dump(config, sort_keys=False))


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``llama-host ARGS`` in a subprocess with this interpreter and capture its output."""
    return subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd, check=False)


@pytest.fixture
def free_port() -> int:
    return _free_port()


def runner_binary(name: str, env_var: str, script: str) -> str:
    """A real runner binary: ``$env_var``, PATH or the cache of ``scripts/<script>``. Missing → fail under CI (a
    skipped real test is not a passing one), skip elsewhere."""
    found = find_binary(name, os.environ.get(env_var))
    if found is None:
        message = f"{name} not found: run scripts/{script} (or set {env_var})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def llama_server_bin() -> str:
    """The real llama-server (scripts/get-llama-server builds it)."""
    return runner_binary("llama-server", "LLAMA_SERVER", "get-llama-server")


@pytest.fixture(scope="session")
def whisper_server_bin() -> str:
    """The real whisper-server (scripts/get-whisper-server builds it)."""
    return runner_binary("whisper-server", "WHISPER_SERVER", "get-whisper-server")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama GGUF (ChatML template with tools), generated once per session."""
    from llama_host.tinymodel import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llama_host.tinymodel import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-embed.gguf", name="tiny-embed",
                            embedding=True)


def tiny_site(model: Path, binary: str, **overrides: Any) -> dict[str, Any]:
    """A site config serving ``model`` as ``tiny`` through the real llama-server."""
    site: dict[str, Any] = {
        "scheduler": {"max_loaded": 2, "ttl": 300, "startup_timeout": 60},
        "plugins": {"llama_server": {"binary": binary}},
        "models": {"tiny": {"path": str(model), "params": {"ctx_size": 1024}, "aliases": ["tiny-alias"]}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(site.get(key), dict):
            site[key] = {**site[key], **value}
        else:
            site[key] = value
    return site


def gone(pid: int) -> bool:
    """True when process ``pid`` no longer runs (a zombie left to a non-reaping init counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; ``AssertionError`` naming ``what`` after
    ``timeout`` seconds. A bound against hangs, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class EventRecorder:
    """An in-process plugin keeping every event the host emits, in order (``extra=[("recorder", EventRecorder())]``
    for :func:`serve_host`)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Any]:
        return [e for e in list(self.events) if e.kind == kind]

    def kinds(self, model: str | None = None) -> list[tuple[str, str]]:
        return [(e.kind, e.model) for e in list(self.events) if model is None or getattr(e, "model", None) == model]

    def index(self, kind: str, model: str, **fields: Any) -> int:
        for i, e in enumerate(list(self.events)):
            if e.kind == kind and e.model == model and all(getattr(e, k) == v for k, v in fields.items()):
                return i
        raise AssertionError(f"no {kind} event for {model} {fields or ''} in {list(self.events)}")

    def requests(self) -> list[Any]:
        return [e for e in list(self.events) if e.kind in ("request_started", "request_finished")]
