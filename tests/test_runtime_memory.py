"""A runtime says at registration whether it occupies local memory and how its memory is estimated: the scheduler
counts a model against ``max_loaded`` and ``memory_budget`` by that, never by guessing from its runner. No processes:
a third-party plugin registers in-process runtimes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llama_host import hookimpl
from llama_host.facts import ModelFacts
from llama_host.host import Host
from llama_host.process import LogBuffer
from llama_host.types import ModelSpec, RunnerBase

GiB = 2**30


class InstantRunner(RunnerBase):
    """Ready at once, ends only when stopped; ``local`` (no process: False) says nothing about memory."""

    def __init__(self, spec: ModelSpec, host: Host) -> None:
        self.model, self.base_url, self.headers, self.logs = spec, "http://127.0.0.1:9", {}, LogBuffer()
        self._stopped = asyncio.Event()

    async def start(self, timeout: float) -> None:
        return None

    async def stop(self, grace: float) -> None:
        self._stopped.set()

    async def wait(self) -> int | None:
        await self._stopped.wait()
        return 0


class TunnelRunner(InstantRunner):
    """A local process (say a tunnel) in front of a server elsewhere: its exit can be watched, its memory is far."""

    local = True


class ThirdParty:
    """Registers ``far`` (a server elsewhere: local=False), ``near`` (local, with its own estimate) and ``plain``
    (local, no estimate: the files' size)."""

    def __init__(self) -> None:
        self.estimates: list[tuple[str, int | None]] = []

    def estimate(self, spec: ModelSpec, facts: ModelFacts) -> int:
        self.estimates.append((spec.name, facts.context_length))
        return 3 * GiB + int(spec.params.get("extra", 0))

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("far", TunnelRunner, description="a server elsewhere", local=False)
        register("near", InstantRunner, description="in memory here", memory=self.estimate)
        register("plain", InstantRunner, description="in memory here, no estimate")


def make_host(tmp_path: Path, models: dict[str, Any], **scheduler: Any) -> tuple[Host, ThirdParty]:
    plugin = ThirdParty()
    site = {"log_dir": str(tmp_path / "logs"), "scheduler": {"max_loaded": 0, **scheduler}, "models": models}
    return Host.from_config(data=site, only=[], extra=[("third_party", plugin)]), plugin


def test_the_runtimes_memory_estimate_is_used_and_memory_in_the_site_file_wins(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(bytes(1000))
    models = {"n": {"runtime": "near", "metadata": {"context_length": 2048}, "params": {"extra": 5}},
              "configured": {"runtime": "near", "memory": "1GiB"},
              "p": {"runtime": "plain", "path": str(weights)},
              "f": {"runtime": "far", "path": str(weights)}}
    host, plugin = make_host(tmp_path, models)
    facts = {name: host.scheduler.facts(name) for name in models}
    assert facts["n"].memory == 3 * GiB + 5 and ("n", 2048) in plugin.estimates  # given the model's facts
    assert host.scheduler.status("n").memory == 3 * GiB + 5
    assert facts["configured"].memory == GiB and "configured" not in dict(plugin.estimates)
    assert facts["p"].memory == 1000  # local without an estimate: the files' size
    assert facts["f"].memory == 0 and facts["f"].file_size == 1000  # occupies no local memory
    assert host.runtimes["far"].local is False and host.runtimes["near"].local is True


def test_a_runtime_registered_not_local_never_counts_against_memory_budget(tmp_path: Path) -> None:
    models = {"big-far": {"runtime": "far", "memory": "100GiB"},  # even a configured size is not local memory
              "other-far": {"runtime": "far"},
              "a": {"runtime": "near"}, "b": {"runtime": "near"}}
    host, _ = make_host(tmp_path, models, memory_budget="4GiB", max_loaded=1)
    scheduler = host.scheduler

    async def scenario() -> None:
        async def use(name: str) -> None:
            lease = await scheduler.acquire(name)
            lease.release()

        await use("a")  # 3 GiB of the 4 GiB budget, the one local slot of max_loaded
        await use("big-far")  # not refused for its size, and "a" is not evicted for it
        await use("other-far")
        assert {n: scheduler.status(n).state for n in models} == {
            "big-far": "loaded", "other-far": "loaded", "a": "loaded", "b": "unloaded"}
        await use("b")  # evicts "a" (budget and max_loaded), never the servers elsewhere
        await asyncio.sleep(0.05)
        assert {n: scheduler.status(n).state for n in models} == {
            "big-far": "loaded", "other-far": "loaded", "a": "unloaded", "b": "loaded"}
        await scheduler.shutdown()

    asyncio.run(scenario())
