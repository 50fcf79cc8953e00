"""Loading progress in every dialect (``loading_progress``): the real host in front of the fake llama-server made slow
to start (``FAKE_SLOW_START``), read with the official clients (which must accept it) and raw (where it shows)."""

from __future__ import annotations

import json

import anthropic
import httpx
import ollama
import openai

from llama_host.testing import serve_host
from test_faults import client_for, fake_bin, gguf, model, site  # noqa: F401 - fixtures

PLUGINS = ["openai_api", "anthropic_api", "ollama_api", "lmstudio_api", "llama_server"]
SLOW = 2.2  # seconds each model takes to become healthy: two or three loading sends


def _site(tmp_path, model, **models_extra):
    models = {name: {**model(name, FAKE_SLOW_START=SLOW), **models_extra.get(name, {})}
              for name in ("chat", "resp", "msgs", "olla", "lms", "raw", "quiet", "broken")}
    models["broken"] = model("broken", FAKE_EXIT_AT_START=1)
    config = site(tmp_path, models, max_loaded=0)
    config["loading_progress"] = True
    config["models"]["quiet"]["loading_progress"] = False
    return config


def test_loading_progress_in_every_dialect(tmp_path, model):
    with serve_host(_site(tmp_path, model), PLUGINS) as rh:
        # OpenAI chat: chunks whose reasoning_content says the model loads, then the reply as usual
        with client_for(rh.url()) as client:
            chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                         max_tokens=3, stream=True))
        loading = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.id ==
                   "chatcmpl-loading"]
        assert len(loading) >= 2 and all(text.startswith("loading model chat: ") for text in loading)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # the reply itself
        assert chunks[-1].choices[0].finish_reason == "length"

        # OpenAI Responses: response.created (queued), response.queued..., then the usual events
        with client_for(rh.url()) as client:
            events = list(client.responses.create(model="resp", input="x", max_output_tokens=3, stream=True))
        kinds = [e.type for e in events]
        assert kinds[0] == "response.created" and events[0].response.status == "queued"
        assert kinds[1] == "response.queued" and "loading model resp" in events[1].response.metadata["loading"]
        assert kinds.count("response.created") == 1 and kinds[-1] == "response.incomplete"
        assert [e.sequence_number for e in events] == list(range(len(events)))

        # Anthropic: ping events (the SDK skips them) carry the text
        with httpx.Client(base_url=rh.url(), timeout=30) as c:
            body = {"model": "msgs", "max_tokens": 3, "stream": True, "messages": [{"role": "user", "content": "x"}]}
            raw = c.post("/v1/messages", json=body).text
        pings = [json.loads(line[6:]) for line in raw.splitlines()
                 if line.startswith("data: ") and '"ping"' in line and "loading" in line]
        assert len(pings) >= 2 and raw.index('"loading"') < raw.index("message_start")
        with anthropic.Anthropic(base_url=rh.url(), api_key="x", max_retries=0) as claude:
            rh.call(rh.host.scheduler.unload("msgs"))
            with claude.messages.stream(model="msgs", max_tokens=3, messages=[{"role": "user", "content": "x"}]) as s:
                assert s.get_final_message().usage.output_tokens == 3

        # Ollama: lines with empty content and done: false (the text in their "loading" key)
        with httpx.Client(base_url=rh.url("ollama_api"), timeout=30) as c:
            lines = [json.loads(line) for line in c.post("/api/chat", json={
                "model": "olla", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 3}}
            ).text.splitlines()]
        waiting = [line for line in lines if "loading" in line]
        assert len(waiting) >= 2 and all(w["message"]["content"] == "" and w["done"] is False for w in waiting)
        assert "status" not in waiting[0] and lines[-1]["done"] is True
        rh.call(rh.host.scheduler.unload("olla"))
        with ollama.Client(host=rh.url("ollama_api"), timeout=30) as client:
            parts = list(client.chat("olla", messages=[{"role": "user", "content": "x"}], stream=True,
                                     options={"num_predict": 3}))
        assert parts[-1].done and parts[0].message.content == "" and not parts[0].done
        assert "".join(p.message.content for p in parts)

        # LM Studio v0: as the OpenAI surface
        with client_for(rh.url("lmstudio_api")) as client:
            r = client.with_options(base_url=rh.url("lmstudio_api") + "/api/v0")
            parts = list(r.chat.completions.create(model="lms", messages=[{"role": "user", "content": "x"}],
                                                   max_tokens=3, stream=True))
        assert [p for p in parts if p.id == "chatcmpl-loading"] and parts[-1].choices[0].finish_reason == "length"

        # a loaded model streams without any; a model switched off streams without any
        with client_for(rh.url()) as client:
            again = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                        max_tokens=2, stream=True))
            assert not [c for c in again if c.id == "chatcmpl-loading"]
            quiet = list(client.chat.completions.create(model="quiet", messages=[{"role": "user", "content": "x"}],
                                                        max_tokens=2, stream=True))
            assert not [c for c in quiet if c.id == "chatcmpl-loading"]

        # /v1/completions streams get SSE comments; a failed start is an error in the stream
        with httpx.Client(base_url=rh.url(), timeout=30) as c:
            text = c.post("/v1/completions", json={"model": "raw", "prompt": "x", "max_tokens": 2,
                                                   "stream": True}).text
            assert text.startswith(": loading model raw: ") and "data: [DONE]" in text
            failed = c.post("/v1/chat/completions", json={"model": "broken", "stream": True,
                                                          "messages": [{"role": "user", "content": "x"}]})
            assert failed.status_code == 200 and "chatcmpl-loading" in failed.text
            last = [json.loads(line[6:]) for line in failed.text.splitlines() if line.startswith("data: ")][-1]
            assert last["error"]["code"] == "model_load_failed"
        with client_for(rh.url()) as client:
            rh.call(rh.host.scheduler.unload("chat"))
            try:
                list(client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}],
                                                    stream=True))
                raise AssertionError("the SDK must raise the error event")
            except openai.APIError as exc:
                assert "broken" in str(exc.message)
