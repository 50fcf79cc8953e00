"""The OpenAI surface with the official SDK against the real llama-server on the tiny model."""

import base64
import struct

import httpx
import openai
import pytest

from llama_host.testing import serve_host, tiny_site

pytestmark = pytest.mark.real
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def rh(tiny_model, tiny_embedding_model, llama_server_bin, tmp_path_factory):
    site = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path_factory.mktemp("logs")), default_model="tiny",
                     plugins={"llama_server": {"binary": llama_server_bin}, "openai_api": {"max_body_bytes": 200_000}})
    site["models"]["embed"] = {"path": str(tiny_embedding_model),
                               "params": {"embeddings": True, "pooling": "mean", "ctx_size": 1024}}
    site["models"]["hidden"] = {"path": str(tiny_model), "unlisted": True, "params": {"ctx_size": 1024}}
    broken = tmp_path_factory.mktemp("broken") / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    site["models"]["broken"] = {"path": str(broken)}
    site["scheduler"]["max_loaded"] = 3
    with serve_host(site, ["openai_api", "llama_server"]) as running:
        yield running


@pytest.fixture
def sync(rh):
    with openai.OpenAI(base_url=rh.url() + "/v1", api_key="any", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(rh):
    async with openai.AsyncOpenAI(base_url=rh.url() + "/v1", api_key="any", max_retries=0) as c:
        yield c


def test_models_list_and_get(sync):
    ids = [m.id for m in sync.models.list()]
    assert "tiny" in ids and "embed" in ids and "hidden" not in ids
    model = sync.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model" and model.owned_by == "llama-host"
    assert model.model_extra["state"] in ("loaded", "unloaded") and model.model_extra["aliases"] == ["tiny-alias"]
    assert isinstance(model.created, int)
    with pytest.raises(openai.NotFoundError):
        sync.models.retrieve("no-such-model")


def test_chat_sync_and_stream(sync):
    reply = sync.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6)
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content
    chunks = list(sync.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, stream=True,
                                               stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6


async def test_chat_async_and_stream(aclient):
    reply = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4)
    assert reply.usage.completion_tokens == 4
    stream = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, stream=True)
    finish = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert finish[-1] == "length"


def test_completions_sync_stream(sync):
    reply = sync.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5)
    assert reply.choices[0].text and reply.usage.completion_tokens == 5
    parts = list(sync.completions.create(model="tiny", prompt="Once", max_tokens=5, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices)


async def test_completions_async(aclient):
    reply = await aclient.completions.create(model="tiny", prompt="Hello", max_tokens=3)
    assert reply.usage.completion_tokens == 3


def test_embeddings_float_and_base64(sync, rh):
    result = sync.embeddings.create(model="embed", input=["one", "two words"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 64
    raw = httpx.post(rh.url() + "/v1/embeddings", json={"model": "embed", "input": "one",
                                                        "encoding_format": "base64"}).json()
    decoded = struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"]))
    assert decoded == pytest.approx(result.data[0].embedding, rel=1e-5, abs=1e-6)


def test_default_model_is_used_without_model(rh):
    r = httpx.post(rh.url() + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_errors_in_openai_shape(sync, rh):
    with pytest.raises(openai.NotFoundError) as info:
        sync.chat.completions.create(model="nope", messages=CHAT)
    assert info.value.body["code"] == "model_not_found" and "'nope'" in info.value.body["message"]
    r = httpx.post(rh.url() + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(rh.url() + "/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "pad": "x" * 300_000})
    assert r.status_code == 413 and "error" in r.json()
    with pytest.raises(openai.APIStatusError) as info:
        sync.chat.completions.create(model="broken", messages=CHAT)
    assert info.value.status_code == 503
    message = info.value.body["message"]
    assert "broken" in message and "last log lines" in message


def test_missing_model_without_default(tiny_model, llama_server_bin, tmp_path):
    with serve_host(tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path)), ["openai_api", "llama_server"]) as h:
        c = openai.OpenAI(base_url=h.url() + "/v1", api_key="x", max_retries=0)
        with c, pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="", messages=CHAT)
        assert info.value.body["param"] == "model"


def test_upstream_passthrough(rh):
    r = httpx.get(rh.url() + "/upstream/tiny/props")
    assert r.status_code == 200 and "default_generation_settings" in r.json()
    r = httpx.post(rh.url() + "/upstream/tiny/tokenize", json={"content": "hello"})
    assert r.status_code == 200 and r.json()["tokens"]


def test_sse_headers(rh):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", rh.url() + "/v1/chat/completions", json=body) as r:
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
