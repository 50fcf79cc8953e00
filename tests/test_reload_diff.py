"""What a site-file change means, without a running host: llama_host.reload.site_diff."""

import msgspec

from llama_host.config import SiteConfig
from llama_host.reload import site_diff
from llama_host.types import ModelSpec


def site(**kw):
    models = {name: ModelSpec(name=name, **spec) for name, spec in kw.pop("models", {}).items()}
    return msgspec.structs.replace(SiteConfig(), models=models, **kw)


BASE = {"a": {"path": "/m/a.gguf"}, "b": {"path": "/m/b.gguf", "params": {"ctx_size": 1024}}}


def test_nothing_changed_is_empty():
    diff = site_diff(site(models=BASE), site(models=BASE))
    assert diff.empty and diff.summary() == "nothing changed"


def test_added_and_removed_models():
    diff = site_diff(site(models=BASE), site(models={"b": BASE["b"], "c": {"path": "/m/c.gguf"}}))
    assert (diff.added, diff.removed, diff.restart, diff.live) == (["c"], ["a"], [], [])


def test_runner_fields_restart_other_fields_apply_live():
    new = {"a": {"path": "/m/a.gguf", "aliases": ["x"], "ttl": 5, "pinned": True, "priority": 3},
           "b": {"path": "/m/b.gguf", "params": {"ctx_size": 2048}}}
    diff = site_diff(site(models=BASE), site(models=new))
    assert diff.restart == ["b"] and diff.live == ["a"]


def test_discovered_facts_alone_change_nothing():
    new = {**BASE, "a": {"path": "/m/a.gguf", "metadata": {"context_length": 4096}}}
    assert site_diff(site(models=BASE), site(models=new)).empty


def test_core_keys_live_or_needing_a_restart():
    diff = site_diff(site(models=BASE), site(models=BASE, port=9000, default_model="a", log_level="debug"))
    assert diff.core_changed == ["default_model", "log_level"] and diff.needs_restart == ["port"]
    assert "needs a restart: port" in diff.summary()


def test_scheduler_and_plugin_sections():
    old = site(plugins={"ollama_api": {"port": 11434}})
    new = msgspec.structs.replace(site(plugins={"ollama_api": {"port": 11435}, "metrics": {"enabled": False}}),
                                  scheduler=msgspec.structs.replace(SiteConfig().scheduler, max_loaded=2))
    diff = site_diff(old, new)
    assert diff.plugins == ["metrics", "ollama_api"] and diff.core_changed == ["scheduler"]


def test_filters_apply_live_and_the_upstream_name_restarts():
    new = {"a": {"path": "/m/a.gguf", "filters": {"strip": ["top_k"]}},
           "b": {"path": "/m/b.gguf", "params": {"ctx_size": 1024}, "upstream_model": "served-as"}}
    models = {name: msgspec.convert({**spec, "name": name}, ModelSpec) for name, spec in new.items()}
    diff = site_diff(site(models=BASE), msgspec.structs.replace(SiteConfig(), models=models))
    assert diff.live == ["a"] and diff.restart == ["b"]
