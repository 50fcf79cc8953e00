"""One source of model facts: the context and flags a runner really runs with (model params, plugin-level params,
load params), read alike by the scheduler's memory estimate, every surface's listing and ``/api/v1/models``.

The real host (every API surface, the llama_server runtime) in front of the fake llama-server, which counts its
starts (``FAKE_STARTS_FILE``): a load request equal to what the runner runs with must not restart it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

import fake_llama_server as fake
from llama_host.facts import applicable_load_params, model_facts
from llama_host.testing import serve_host
from llama_host.types import ModelSpec, RuntimeInfo
from llama_host_llama_server import kv_cache_bytes

PLUGINS = ["openai_api", "ollama_api", "lmstudio_api", "llama_server"]
META = {"context_length": 32768, "block_count": 4, "head_count": 4, "head_count_kv": 2, "embedding_length": 64,
        "architecture": "llama"}


def test_effective_context_and_flags_are_read_alike_everywhere(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    starts = tmp_path / "starts"
    config = {"log_dir": str(tmp_path / "logs"),
              "plugins": {"llama_server": {"params": {"ctx_size": 1024}}},
              "scheduler": {"max_loaded": 1, "startup_timeout": 30},
              "models": {"m": {"path": str(gguf), "binary": str(fake.write_wrapper(tmp_path)), "metadata": META,
                               "env": {"FAKE_STARTS_FILE": str(starts)}}}}
    with serve_host(config, PLUGINS) as rh:
        ollama, lms, main = rh.url("ollama_api"), rh.url("lmstudio_api"), rh.url()

        def contexts() -> dict[str, int]:
            ps = httpx.get(ollama + "/api/ps").json()["models"]
            v1 = httpx.get(lms + "/api/v1/models").json()["models"][0]
            v0 = httpx.get(lms + "/api/v0/models").json()["data"][0]
            core = httpx.get(main + "/api/v1/models").json()["models"][0]
            return {"ollama_ps": ps[0]["context_length"] if ps else 0,
                    "lmstudio_loaded": v1["loaded_instances"][0]["config"]["context_length"]
                    if v1["loaded_instances"] else 0,
                    "lmstudio_max": v0["max_context_length"],
                    "openai": httpx.get(main + "/v1/models").json()["data"][0]["context_length"],
                    "core": core["facts"]["context_length"], "memory": core["memory"]}

        # the plugin-level ctx_size is what the runner runs with, not the trained 32,768
        before = contexts()
        assert before["openai"] == before["core"] == 1024 and before["lmstudio_max"] == 32768
        assert before["memory"] == 64 + kv_cache_bytes(META, 1024)  # file + KV cache at the configured context

        # num_ctx equal to the effective context (plugin-level): loaded once, never restarted
        for _ in range(2):
            r = httpx.post(ollama + "/api/generate", json={"model": "m", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 1024, "num_predict": 2}}, timeout=30)
            assert r.status_code == 200, r.text
        r = httpx.post(lms + "/api/v1/models/load", json={"model": "m", "context_length": 1024}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(fake.read_starts(starts)) == 1
        loaded = contexts()
        assert loaded["ollama_ps"] == loaded["lmstudio_loaded"] == loaded["core"] == loaded["openai"] == 1024

        # another context restarts it, and every surface reports the new one; so does the memory estimate
        r = httpx.post(ollama + "/api/generate", json={"model": "m", "prompt": "", "options": {"num_ctx": 512}},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert len(fake.read_starts(starts)) == 2
        after = contexts()
        assert after["ollama_ps"] == after["lmstudio_loaded"] == after["core"] == after["openai"] == 512
        assert after["memory"] == 64 + kv_cache_bytes(META, 512)


def test_a_runtime_without_flags_takes_no_load_params() -> None:
    spec = ModelSpec(name="r", runtime="remote", url="http://127.0.0.1:1", metadata={"context_length": 4096})
    remote = RuntimeInfo("remote", lambda s, h: None, "remote_runtime")  # registers no facts function
    assert applicable_load_params(remote, {"ctx_size": 512}) == {}
    facts = model_facts(spec, remote)
    assert facts.context_length == 4096 and facts.params == {} and facts.memory == 0
