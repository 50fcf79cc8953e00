"""This surface's state for one host, and what it learns from the runners it talks to."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
from litestar.di import NamedDependency

from llama_host import Host
from llama_host.errors import HostError
from llama_host.scheduler import Lease

from .settings import Settings
from .store import ResponseStore


@dataclass
class RunnerFacts:
    """What a running llama-server says about itself (``GET /props``): its context size and build."""

    n_ctx: int | None = None
    build: str | None = None


@dataclass
class SurfaceState:
    """This surface's state for one host: settings, stored v1 chats, runner facts by (model, pid)."""

    settings: Settings
    store: ResponseStore
    facts: OrderedDict[tuple[str, int | None, str], RunnerFacts] = field(default_factory=OrderedDict)


#: A handler parameter ``lms: LMSDep`` receives the surface state (provided by the controllers' dependencies).
LMSDep = NamedDependency[SurfaceState]


async def runner_facts(host: Host, state: SurfaceState, lease: Lease) -> RunnerFacts:
    """Ask a llama-server runner once for ``/props``; other runtimes (or a failure) give empty facts."""
    key = (lease.model.name, lease.runner.pid, lease.runner.base_url)
    if key in state.facts:
        return state.facts[key]
    facts = RunnerFacts()
    if lease.model.runtime == "llama-server":
        with contextlib.suppress(HostError, TimeoutError, msgspec.DecodeError, ValueError, TypeError, AttributeError):
            async with asyncio.timeout(5):
                async with await host.relay.open(lease, "GET", "/props") as up:
                    props = await up.json() if up.status == 200 else {}
            settings = props.get("default_generation_settings") or {}
            n_ctx = settings.get("n_ctx") or props.get("n_ctx")
            facts = RunnerFacts(n_ctx=int(n_ctx) if n_ctx else None, build=props.get("build_info") or None)
    state.facts[key] = facts
    while len(state.facts) > 64:
        state.facts.popitem(last=False)
    return facts
