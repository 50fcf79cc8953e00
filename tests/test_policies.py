"""The site file's scheduling policies end to end (groups, priority, max_concurrent, preload): the real host in front
of the fake llama-server. The decisions themselves are covered without processes in tests/test_placement.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import fake_llama_server as fake
from llama_host.errors import ConfigError
from llama_host.host import Host
from llama_host.testing import serve_host
from test_faults import (  # noqa: F401 - fixtures
    HELLO,
    PLUGINS,
    Recorder,
    chat,
    client_for,
    fake_bin,
    gguf,
    model,
    site,
    starts,
    wait_until,
)


def states(rh) -> dict[str, str]:
    return {s.name: s.state for s in rh.host.scheduler.statuses()}


def test_swap_group_members_replace_each_other_and_leave_others_loaded(tmp_path, model):
    models = {name: model(name) for name in ("c1", "c2", "other")}
    config = site(tmp_path, models, max_loaded=0, groups={"coders": {"members": ["c1", "c2"]}})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        for name in ("c1", "other", "c2"):
            chat(client, name)
        wait_until(lambda: states(rh)["c1"] == "unloaded", "c1 to be swapped out")
        assert states(rh) == {"c1": "unloaded", "c2": "loaded", "other": "loaded"}
        listed = {m["name"]: m for m in httpx.get(rh.url() + "/api/v1/models").json()["models"]}
        assert listed["c2"]["group"] == "coders" and listed["other"]["group"] is None


def test_exclusive_group_spares_persistent_members(tmp_path, model):
    models = {name: model(name) for name in ("solo", "embed", "a")}
    groups = {"big": {"members": ["solo"], "exclusive": True}, "keep": {"members": ["embed"], "persistent": True}}
    config = site(tmp_path, models, max_loaded=0, groups=groups)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        for name in ("embed", "a", "solo"):
            chat(client, name)
        wait_until(lambda: states(rh)["a"] == "unloaded", "a to be unloaded by the exclusive group")
        assert states(rh) == {"a": "unloaded", "embed": "loaded", "solo": "loaded"}


def test_lower_priority_is_evicted_first(tmp_path, model):
    models = {"important": {**model("important"), "priority": 10}, "cheap": model("cheap"), "x": model("x")}
    config = site(tmp_path, models, max_loaded=2)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        for name in ("important", "cheap", "x"):  # "cheap" is the most recently used of the two
            chat(client, name)
        wait_until(lambda: states(rh)["cheap"] == "unloaded", "the low-priority model to be evicted")
        assert states(rh) == {"cheap": "unloaded", "important": "loaded", "x": "loaded"}


def test_max_concurrent_queues_the_extra_requests(tmp_path, model):
    pause = tmp_path / "pause"
    pause.touch()
    recorder = Recorder()
    config = site(tmp_path, {"m": {**model("m", FAKE_PAUSE_FILE=pause), "max_concurrent": 1}})
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client, \
            ThreadPoolExecutor(3) as pool:
        first_token = threading.Event()

        def stream() -> str:
            parts = []
            for chunk in client.chat.completions.create(model="m", messages=HELLO, max_tokens=6, stream=True):
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    if choice.delta.content:
                        first_token.set()
            return "".join(parts)

        first = pool.submit(stream)
        assert first_token.wait(30)
        others = [pool.submit(chat, client, "m", 3), pool.submit(chat, client, "m", 4)]
        wait_until(lambda: recorder.kinds("m").count(("request_started", "m")) == 3, "three requests to arrive")
        assert rh.host.scheduler.status("m").in_flight == 1  # the other two wait in the queue, not at the runner
        assert not any(f.done() for f in others)
        pause.unlink()
        assert first.result(30) == fake.reply_text(6)
        assert [f.result(30) for f in others] == [fake.reply_text(3), fake.reply_text(4)]
        assert len(starts(tmp_path, "m")) == 1


def test_max_concurrent_wait_is_bounded_by_queue_timeout(tmp_path, model):
    pause = tmp_path / "pause"
    pause.touch()
    config = site(tmp_path, {"m": {**model("m", FAKE_PAUSE_FILE=pause), "max_concurrent": 1}}, queue_timeout=5)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client, ThreadPoolExecutor(1) as pool:
        got = threading.Event()

        def stream() -> None:
            for _ in client.chat.completions.create(model="m", messages=HELLO, max_tokens=3, stream=True):
                got.set()

        first = pool.submit(stream)
        assert got.wait(30)
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "m")
        assert info.value.status_code == 503 and info.value.response.json()["error"]["code"] == "queue_timeout"
        pause.unlink()
        first.result(30)


def test_preload_starts_models_in_order_at_startup(tmp_path, model):
    recorder = Recorder()
    config = site(tmp_path, {name: model(name) for name in ("a", "b", "c")}, max_loaded=0, preload=["b", "a"])
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh:
        wait_until(lambda: states(rh)["a"] == "loaded", "the preloaded models to load")
        assert states(rh) == {"a": "loaded", "b": "loaded", "c": "unloaded"}
        loads = [(k, m) for k, m in recorder.kinds() if k in ("model_loading", "model_loaded")]
        assert loads == [("model_loading", "b"), ("model_loaded", "b"), ("model_loading", "a"), ("model_loaded", "a")]


def test_a_model_in_two_groups_is_a_config_error():
    data = {"scheduler": {"groups": {"g1": {"members": ["a", "b"]}, "g2": {"members": ["b"], "swapp": True}}}}
    with pytest.raises(ConfigError) as info:
        Host.from_config(data=data, only=PLUGINS, env={})
    assert info.value.problems == [
        "scheduler.groups.g2.swapp: unknown key (did you mean 'swap'?)",
        "scheduler.groups.g2.members[0]: model 'b' is already in group 'g1' (a model belongs to one group)",
    ]
