"""Peers: other llama-host nodes (``peers:`` in the site file) whose models join this host's catalogue.

Each peer is polled (``/api/v1/health``, then ``/api/v1/models`` with its key). A model a peer serves itself and that
is not known here becomes a model of the ``peer`` runtime: one catalogue entry, whatever the number of nodes serving
it, with the nodes in its ``metadata.nodes``. Its runner sends each request to one of those nodes through the node's
raw passthrough (``/upstream/{model}/...``), so every dialect works through a peer exactly as through a local
llama-server. The node is chosen by :func:`choose` (a pure decision): the fewest requests in flight, an unloaded
replica counting as one more, a loaded one winning ties. A node that cannot be reached is marked down at once (its
models leave the listings when no other node serves them) and the request goes to the next replica; with none left
the client gets a 503 naming the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
from litestar import Controller, get

from llama_host.config import PeerSettings
from llama_host.errors import ModelUnavailable, RunnerCrashed
from llama_host.hookspecs import hookimpl
from llama_host.host import HostDep
from llama_host.process import LogBuffer
from llama_host.proxy import Upstream
from llama_host.types import ModelSpec, ModelsChanged, PeerChanged, RunnerBase, Surface

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.types import RegisterRuntime

log = logging.getLogger(__name__)

RUNTIME = "peer"
#: the node's own raw passthrough to a model's runner (served by the openai_api plugin of every llama-host)
UPSTREAM = "/upstream/"


class _PeerModel(msgspec.Struct, kw_only=True):
    """One entry of a peer's ``GET /api/v1/models`` (unknown fields ignored: peers may run a newer version)."""

    name: str
    state: str = "unloaded"
    runtime: str = ""
    aliases: list[str] = []
    unlisted: bool = False
    missing: bool = False
    metadata: dict[str, Any] = {}


class _PeerModels(msgspec.Struct):
    models: list[_PeerModel]


_decode_models = msgspec.json.Decoder(_PeerModels).decode


class PeerDown(Exception):
    """A poll found the peer unusable (its message says why)."""


@dataclass(frozen=True)
class Candidate:
    """A node serving a model, as :func:`choose` sees it."""

    node: str
    in_flight: int
    loaded: bool
    order: int = 0


def choose(candidates: Iterable[Candidate]) -> Candidate | None:
    """The node a request goes to: fewest requests in flight, where an unloaded replica counts one more (it must
    load first); on a tie a loaded one, then the order of ``peers:``. None when there is no candidate."""
    return min(candidates, key=lambda c: (c.in_flight + (0 if c.loaded else 1), not c.loaded, c.order), default=None)


class Node:
    """One peer: its settings, what its last poll found and its counters."""

    def __init__(self, settings: PeerSettings, order: int) -> None:
        self.settings = settings
        self.order = order
        self.url = settings.url.rstrip("/").removesuffix("/v1")
        parts = urlsplit(self.url)
        self.name = settings.name or parts.netloc or self.url
        self.headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.up = False
        self.error: str | None = "not polled yet"
        self.models: dict[str, _PeerModel] = {}
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.last_poll: float | None = None
        self.wake = asyncio.Event()

    def serves(self, model: str) -> bool:
        return self.up and model in self.models

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "up": self.up, "error": self.error, "in_flight": self.in_flight,
                "requests": self.requests, "failures": self.failures, "last_poll": self.last_poll,
                "models": {name: m.state for name, m in sorted(self.models.items())}}


class PeerPool:
    """The peers of this host; registered into the plugin manager as ``llama_host.peers`` when ``peers:`` is set, so
    the ``peer`` runtime, the peer models and ``/api/v1/peers`` come through the normal hooks."""

    def __init__(self, host: Host, peers: Iterable[PeerSettings]) -> None:
        self.host = host
        self.nodes = [Node(p, i) for i, p in enumerate(peers)]
        self._published: Any = None
        self._available: dict[str, bool] = {}
        self._session: aiohttp.ClientSession | None = None

    def stats(self) -> list[dict[str, Any]]:
        """Each peer: name, url, up, error, requests, failures, in_flight, last_poll, models (name → state)."""
        return [n.as_dict() for n in self.nodes]

    # --- hooks ----------------------------------------------------------------------------------------------------

    @hookimpl
    def register_runtimes(self, register: RegisterRuntime) -> None:
        register(RUNTIME, lambda spec, host: PeerRunner(spec, self),
                 description="a model served by other llama-host nodes (peers:)", local=False)

    @hookimpl(trylast=True)  # called last among discovery hooks: a model found locally wins its name
    def discover_models(self, host: Host) -> list[ModelSpec]:
        return self.specs()

    @hookimpl
    def register_surfaces(self, host: Host) -> list[Surface]:
        from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

        return [Surface(name="peers", port=host.site.port, route_handlers=[PeersController],
                        exception_handlers=OPENAI_EXCEPTION_HANDLERS)]

    @hookimpl
    def lifespan(self, host: Host) -> contextlib.AbstractAsyncContextManager[None]:
        return self._running()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        tasks: list[asyncio.Task[None]] = []
        try:
            # One first look at every peer before the listeners bind (bounded by each peer's timeout).
            await asyncio.gather(*(self.poll(node) for node in self.nodes))
            await self.publish()
            tasks = [asyncio.create_task(self._watch(node), name=f"peer {node.name}") for node in self.nodes]
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    # --- polling ------------------------------------------------------------------------------------------------

    async def _watch(self, node: Node) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.wake.wait(), node.settings.poll_seconds)
            node.wake.clear()
            try:
                await self.poll(node)
                await self.publish()
            except Exception:  # a bug here must not end the watch of this peer
                log.exception("peer %s: poll failed", node.name)

    async def poll(self, node: Node) -> None:
        """Read the peer's health and model list; a failure marks it down (its models stay known, as unavailable)."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=node.settings.timeout)
        try:
            async with self._session.get(node.url + "/api/v1/health", timeout=timeout) as r:
                await r.read()
                if r.status != 200:
                    raise PeerDown(f"health check: HTTP {r.status}")
            async with self._session.get(node.url + "/api/v1/models", headers=node.headers, timeout=timeout) as r:
                raw = await r.read()
                if r.status != 200:
                    raise PeerDown(f"model list: HTTP {r.status}")
            listed = _decode_models(raw).models
        except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError, msgspec.ValidationError,
                PeerDown) as exc:
            self._down(node, _describe(exc))
            return
        finally:
            node.last_poll = time.time()
        # Only what the peer serves itself: its own peer models would route back here, or in circles.
        node.models = {m.name: m for m in listed if m.runtime != RUNTIME and not m.missing}
        if not node.up:
            log.info("peer %s (%s) is up: %d model(s)", node.name, node.url, len(node.models))
        node.up, node.error = True, None

    def _down(self, node: Node, error: str) -> None:
        if node.up or node.error != error:
            log.warning("peer %s (%s) is down: %s", node.name, node.url, error)
        node.up, node.error = False, error

    def _fingerprint(self) -> Any:
        return [(n.up, n.error, sorted((name, m.state) for name, m in n.models.items())) for n in self.nodes]

    async def publish(self) -> None:
        """When anything changed since the last call: a ``peer_changed`` event per peer, the catalogue refreshed from
        ``specs()``, and ``models_changed`` for models that became available or unavailable."""
        now = self._fingerprint()
        if now == self._published:
            return
        self._published = now
        for node in self.nodes:
            self.host.emit(PeerChanged(peer=node.name, url=node.url, up=node.up, error=node.error,
                                       models=sorted(node.models), requests=node.requests, failures=node.failures))
        available = {s.name: not s.missing for s in self.specs()}
        before, self._available = self._available, available
        added = sorted(n for n, ok in available.items() if ok and not before.get(n))
        gone = sorted(n for n, ok in available.items() if not ok and before.get(n))
        await self.host.refresh_models()
        if added or gone:
            self.host.emit(ModelsChanged(added=added, missing=gone))

    # --- the catalogue --------------------------------------------------------------------------------------------

    def specs(self) -> list[ModelSpec]:
        """One ``peer`` model per name served by any peer; ``missing`` (out of listings) when no node serving it is
        up. Facts (aliases, metadata) come from the first node in ``peers:`` order that serves it."""
        served: dict[str, list[tuple[Node, _PeerModel]]] = {}
        for node in self.nodes:
            for name, model in node.models.items():
                served.setdefault(name, []).append((node, model))
        specs = []
        for name, pairs in served.items():
            first = next((m for n, m in pairs if n.up), pairs[0][1])
            nodes = [{"node": n.name, "url": n.url, "up": n.up, "state": m.state} for n, m in pairs]
            specs.append(ModelSpec(
                name=name, runtime=RUNTIME, aliases=list(first.aliases), unlisted=first.unlisted, memory=0,
                source="peers", missing=not any(n.up for n, _ in pairs),
                metadata={**{k: v for k, v in first.metadata.items() if k != "nodes"}, "nodes": nodes}))
        return specs

    # --- routing --------------------------------------------------------------------------------------------------

    def pick(self, model: str, exclude: Iterable[str] = ()) -> Node | None:
        skip = set(exclude)
        by_name = {n.name: n for n in self.nodes if n.serves(model) and n.name not in skip}
        best = choose(Candidate(n.name, n.in_flight, n.models[model].state == "loaded", n.order)
                      for n in by_name.values())
        return by_name[best.node] if best else None

    def unavailable(self, model: str, errors: Iterable[str] = ()) -> ModelUnavailable:
        reasons = list(errors) or [f"{n.name}: {n.error or 'does not serve it'}" for n in self.nodes
                                   if model in n.models]
        poll = min((n.settings.poll_seconds for n in self.nodes), default=5.0)
        return ModelUnavailable(f"model '{model}' is not available: no peer serving it can be reached"
                                + (f" ({'; '.join(reasons)})" if reasons else ""), retry_after=poll)

    async def open(self, model: str, session: aiohttp.ClientSession, method: str, path: str, *, data: Any,
                   headers: Mapping[str, str]) -> Upstream:
        """Send one request to the best node serving ``model``; on a node that cannot be reached, mark it down and go
        to the next. Nothing has reached the client yet, so this is safe for any body that can be sent again."""
        resendable = data is None or isinstance(data, bytes)
        tried: list[str] = []
        errors: list[str] = []
        while True:
            node = self.pick(model, exclude=tried)
            if node is None:
                raise self.unavailable(model, errors)
            tried.append(node.name)
            url = node.url + UPSTREAM + quote(model, safe="") + path
            for attempt in (0, 1):
                node.requests += 1
                node.in_flight += 1
                failed: Exception | None
                try:
                    response = await session.request(method, url, data=data, headers={**headers, **node.headers})
                except aiohttp.ClientConnectorError as exc:
                    failed, retry_same = exc, False
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    failed, retry_same = exc, attempt == 0  # maybe a kept-alive connection the peer closed
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failed, retry_same = exc, False
                else:
                    failed = None
                if failed is not None:
                    node.in_flight -= 1
                    if retry_same and resendable:
                        node.requests -= 1  # counted once, by the retry
                        continue
                    node.failures += 1
                    why = _describe(failed)
                    errors.append(f"{node.name}: {why}")
                    self._down(node, why)
                    node.wake.set()  # the poller confirms (or revives) at once and refreshes the catalogue
                    if not resendable:
                        raise RunnerCrashed(f"model '{model}': peer {node.name} unreachable ({why})") from None
                    break
                if response.status in (404, 503) and resendable and self.pick(model, exclude=tried):
                    # this node lost the model or cannot load it now: another replica may
                    body = await response.read()
                    response.release()
                    node.in_flight -= 1
                    node.failures += 1
                    errors.append(f"{node.name}: HTTP {response.status} {body[:200].decode('utf-8', 'replace')}")
                    break
                if response.status < 400 and model in node.models and node.models[model].state != "loaded":
                    node.models[model].state = "loaded"  # until the next poll says otherwise
                    node.wake.set()  # the poller confirms at once, and the catalogue (model metadata) shows it
                return PeerUpstream(response, model, node)


class PeerUpstream(Upstream):
    """A response from a peer: ends the node's in-flight count when closed, counts a cut stream as a failure."""

    def __init__(self, response: aiohttp.ClientResponse, model: str, node: Node) -> None:
        super().__init__(response, model)
        self._node = node
        self._open = True

    def _crashed(self, exc: BaseException | None) -> RunnerCrashed:
        self._node.failures += 1
        return RunnerCrashed(f"model '{self._model}': peer {self._node.name} went away mid-response "
                             f"({type(exc).__name__})")

    def close(self) -> None:
        super().close()
        if self._open:
            self._open = False
            self._node.in_flight -= 1


class PeerRunner(RunnerBase):
    """A model served by peers. No process: ``start`` only checks that some node serving it is up; each request
    picks its node (``open_upstream``, read by the relay)."""

    local = False
    pid = None

    def __init__(self, spec: ModelSpec, pool: PeerPool) -> None:
        self.model = spec
        self.headers: dict[str, str] = {}
        self.logs = LogBuffer(200)
        self._pool = pool

    @property
    def base_url(self) -> str:
        """The node the next request would go to (for views; requests go through ``open_upstream``)."""
        node = self._pool.pick(self.model.name)
        return node.url + UPSTREAM + quote(self.model.name, safe="") if node else ""

    async def start(self, timeout: float) -> None:
        serving = [n.name for n in self._pool.nodes if n.serves(self.model.name)]
        if not serving:
            raise self._pool.unavailable(self.model.name)
        self.logs.append(f"served by peer(s): {', '.join(serving)}")
        self.stopped.clear()


    async def open_upstream(self, session: aiohttp.ClientSession, method: str, path: str, *, data: Any,
                            headers: Mapping[str, str]) -> Upstream:
        return await self._pool.open(self.model.name, session, method, path, data=data, headers=headers)


class PeersController(Controller):
    path = "/api/v1/peers"
    tags = ["management"]

    @get("/", sync_to_thread=False)
    def peers(self, host: HostDep) -> dict[str, Any]:
        """Every peer: up or down (and why), requests sent, failures, requests in flight, models and their state."""
        return {"peers": host.peers.stats()}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PeerDown):
        return str(exc)
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
