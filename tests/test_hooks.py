"""The host calls every hook through the plugin manager, honouring pluggy's contract: implementations that take a
subset of the arguments (here: none), ``tryfirst``/``trylast``, wrappers, call monitoring. Listeners are computed
once, after the surfaces; route collisions fail when the host is built."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx
import pytest
from litestar import get

from llama_host import hookimpl
from llama_host.errors import PluginError
from llama_host.host import TRACE_ENV, Host
from llama_host.testing import serve_host
from llama_host.types import ModelsChanged, ModelSpec, Surface

CALLS: list[str] = []


class Echo:
    """A runner that is never started (the runtime is only registered)."""

    def __init__(self, spec: ModelSpec, host: Any) -> None:
        self.model = spec


@get("/bare/hello", sync_to_thread=False)
def bare_hello() -> str:
    return "hello"


class Bare:
    """Each hook implemented without any argument: pluggy passes only what an implementation asks for."""

    @hookimpl
    def config_schema(self) -> None:
        CALLS.append("config_schema")

    @hookimpl
    def register_runtimes(self) -> None:
        CALLS.append("register_runtimes")

    @hookimpl
    def register_surfaces(self) -> list[Surface]:
        CALLS.append("register_surfaces")
        return [Surface(name="bare", port=0, route_handlers=[bare_hello], on_api_ports=True)]

    @hookimpl
    def discover_models(self) -> list[ModelSpec]:
        CALLS.append("discover_models")
        return [ModelSpec(name="bare-model", runtime="bare-echo", source="config")]

    @hookimpl
    def resolve_model(self) -> None:
        CALLS.append("resolve_model")

    @hookimpl
    def lifespan(self) -> Any:
        CALLS.append("lifespan")

        @contextlib.asynccontextmanager
        async def run():
            CALLS.append("lifespan entered")
            yield
            CALLS.append("lifespan exited")

        return run()

    @hookimpl
    def track_event(self) -> None:
        CALLS.append("track_event")


class Ordered:
    """tryfirst/trylast and wrappers around the register_runtimes and discover_models calls."""

    def __init__(self) -> None:
        self.order: list[str] = []

    @hookimpl(tryfirst=True)
    def register_runtimes(self, register: Any) -> None:
        self.order.append("first")
        register("bare-echo", Echo, description="first wins", extra_future_keyword=True)

    @hookimpl(wrapper=True)
    def register_surfaces(self, host: Any):
        surfaces = yield
        self.order.append(f"wrapped {len(surfaces)} surface lists")
        return surfaces

    @hookimpl(wrapper=True)
    def discover_models(self):
        specs = yield
        return specs


class Later:
    @hookimpl(trylast=True)
    def register_runtimes(self, register: Any) -> None:
        register("bare-later", Echo)


def test_argumentless_implementations_of_every_hook_are_called(tmp_path, monkeypatch) -> None:
    CALLS.clear()
    ordered = Ordered()
    extra = [("bare", Bare()), ("ordered", ordered), ("later", Later())]
    with serve_host({"log_dir": str(tmp_path)}, ["openai_api"], extra=extra) as rh:
        host: Host = rh.host
        assert httpx.get(rh.url() + "/bare/hello").text == "hello"
        assert host.scheduler.resolve("bare-model") is not None  # through the argument-less resolve_model
        assert host.scheduler.models["bare-model"].source == "bare"  # discovered: named after its plugin
        assert host.runtimes["bare-echo"].plugin == "ordered" and host.runtimes["bare-later"].plugin == "later"
        assert host.runtimes["bare-echo"].description == "first wins"
        host.emit(ModelsChanged(added=["bare-model"]))
    assert {"config_schema", "register_runtimes", "register_surfaces", "discover_models", "resolve_model",
            "lifespan", "lifespan entered", "lifespan exited"} <= set(CALLS)
    assert "track_event" in CALLS
    assert ordered.order[0] == "first"
    assert any(o.startswith("wrapped") for o in ordered.order)  # the wrapper saw the real result


def test_trace_switch_logs_every_hook_call(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    with caplog.at_level(logging.INFO, logger="llama_host.hooks"):
        with serve_host({"log_dir": str(tmp_path)}, ["openai_api"], extra=[("bare", Bare())]) as rh:
            httpx.get(rh.url() + "/bare/hello")
    traced = [r.getMessage() for r in caplog.records if r.name == "llama_host.hooks"]
    for hook in ("register_runtimes", "register_surfaces", "discover_models", "lifespan"):
        assert any(m.startswith(f"hook {hook}(") for m in traced), hook
    assert any("returned" in m for m in traced)


class Renamer:
    @hookimpl
    def resolve_model(self, host: Host, requested: str) -> ModelSpec | None:
        return host.scheduler.models.get("bare-model") if requested == "gpt-4o" else None


def test_resolve_model_is_asked_as_soon_as_a_plugin_implements_it(tmp_path) -> None:
    """Without a plugin implementing it the core answers alone (no pluggy call per request); a plugin registered
    while the host runs is asked from its first request on, and stops being asked once it is gone."""
    with serve_host({"log_dir": str(tmp_path)}, ["openai_api"], extra=[("ordered", Ordered())]) as rh:
        scheduler = rh.host.scheduler
        scheduler.set_models({}, [ModelSpec(name="bare-model", runtime="bare-echo", source="config")])
        assert scheduler.resolve("gpt-4o") is None and scheduler.resolve("BARE-model").name == "bare-model"
        renamer = Renamer()
        rh.host.pm.register(renamer, name="renamer")
        assert scheduler.resolve("gpt-4o").name == "bare-model"
        assert scheduler.resolve("BARE-model").name == "bare-model"  # the plugin passes: the core answers
        rh.host.pm.unregister(renamer)
        assert scheduler.resolve("gpt-4o") is None


class Observer:
    def __init__(self, name: str, seen: list[str], fail: bool = False) -> None:
        self.name, self.seen, self.fail = name, seen, fail

    @hookimpl
    def track_event(self, event: Any) -> None:
        self.seen.append(f"{self.name} {event.kind}")
        if self.fail:
            raise RuntimeError("observer broke")


class EventWrapper:
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    @hookimpl(wrapper=True)
    def track_event(self, host: Host, event: Any):
        self.seen.append("wrapper before")
        yield
        self.seen.append("wrapper after")


def test_events_reach_every_observer_in_pluggy_order_even_past_a_failing_one(tmp_path, caplog) -> None:
    """Events skip the pluggy call but keep its contract: pluggy's order (the last registered first, ``tryfirst``
    before), each implementation given only what it names, plugins that come or go while the host runs taken into
    account at the next event. One failing observer is logged by name and the next ones still get the event; with a
    wrapper the call goes through pluggy again."""
    seen: list[str] = []
    with serve_host({"log_dir": str(tmp_path)}, ["openai_api"],
                     extra=[("bare", Bare()), ("first", Observer("first", seen, fail=True))]) as rh:
        host: Host = rh.host
        pluggy_order = [i.plugin_name for i in reversed(host.pm.hook.track_event.get_hookimpls())]
        CALLS.clear()
        with caplog.at_level(logging.ERROR, logger="llama_host.host"):
            host.emit(ModelsChanged(added=["x"]))
        assert seen == ["first models_changed"] and CALLS == ["track_event"]  # the argument-less Bare too
        assert any("plugin 'first' failed in track_event (models_changed)" in r.getMessage() for r in caplog.records)
        assert pluggy_order.index("first") < pluggy_order.index("bare")  # so Bare was called after the failure

        second = Observer("second", seen)
        host.pm.register(second, name="second")
        seen.clear()
        host.emit(ModelsChanged(added=["x"]))
        assert seen == ["second models_changed", "first models_changed"]  # the last registered first

        host.pm.unregister(second)
        wrapper = EventWrapper(seen)
        host.pm.register(wrapper, name="wrapper")
        seen.clear()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="llama_host.host"):
            host.emit(ModelsChanged(added=["x"]))
        # pluggy's call: the wrapper sees the failure come out of its yield, and the call ends there
        assert seen == ["wrapper before", "first models_changed"]
        assert any("a plugin failed in track_event" in r.getMessage() for r in caplog.records)


class Clash:
    @hookimpl
    def register_surfaces(self) -> list[Surface]:
        return [Surface(name="clash", port=0, route_handlers=[bare_hello]),
                Surface(name="clash2", port=0, route_handlers=[bare_hello])]


def test_route_collisions_are_rejected_when_the_host_is_built(tmp_path) -> None:
    with pytest.raises(PluginError, match=r"GET /bare/hello is served by both 'clash' and 'clash2'"):
        Host.from_config(data={"port": 18123, "log_dir": str(tmp_path)}, only=[], extra=[("clash", Clash())])


def test_listeners_are_computed_once(tmp_path, monkeypatch) -> None:
    import llama_host.host as host_module

    with serve_host({"log_dir": str(tmp_path)}, ["openai_api", "ollama_api"]) as rh:
        first = rh.host.listeners()
        calls = []
        monkeypatch.setattr(host_module, "_routes_of", lambda s: calls.append(s) or [])
        for _ in range(3):
            status = httpx.get(rh.url() + "/api/v1/status").json()
        assert rh.host.listeners() is first and calls == []
        assert {tuple(sorted(x["surfaces"])) for x in status["listeners"]} >= {("core", "openai_api")}
