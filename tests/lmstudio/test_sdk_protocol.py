"""The SDK protocol under bad input, spoken frame by frame with a plain WebSocket client (the ``websockets`` library).

Malformed frames, unknown namespaces, endpoints and signals get the protocol's own error messages and the socket
stays usable; a failed authentication gets its refusal and a close; a client that vanishes mid-prediction has its
generation stopped at the runner; the host goes on serving throughout.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_host_lmstudio_api.sdk_ws import MAX_OPEN
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from llama_host import hookimpl
from llama_host.testing import RunningHost, serve_host
from llama_host.tinymodel import write_tiny_model
from llama_host.types import RequestFinished

AUTH = {"authVersion": 1, "clientIdentifier": "test-client", "clientPasskey": "test-passkey"}
SETTLE_S = 30


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def open_socket(rh: RunningHost, namespace: str, auth: dict[str, Any] | None = None,
                **kw: Any) -> Iterator[ClientConnection]:
    """An authenticated socket on one namespace."""
    with connect(f"ws://127.0.0.1:{rh.port('lmstudio_api')}/{namespace}", open_timeout=10, **kw) as ws:
        ws.send(json.dumps(auth or AUTH))
        assert json.loads(ws.recv(10)) == {"success": True}
        yield ws


def exchange(ws: ClientConnection, frame: Any) -> dict[str, Any]:
    ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    return json.loads(ws.recv(10))


@pytest.fixture(scope="module")
def bare() -> Iterator[RunningHost]:
    """The LM Studio surface alone, without runners: enough for everything that is not a model call."""
    with serve_host({"models": {}}, plugins=["lmstudio_api"]) as rh:
        yield rh


def test_malformed_frames_get_the_protocols_errors_and_the_socket_stays(bare: RunningHost) -> None:
    with open_socket(bare, "system") as ws:
        for frame in ("not json", "[1, 2]", '{"type": "noSuchType"}', "{" * 200 + "}" * 200,
                      '{"type": "channelSend"}', '{"callId": 1}', b"\x00\x01binary"):
            reply = exchange(ws, frame)
            assert reply["type"] == "communicationWarning" and reply["warning"], (frame, reply)
        # a frame that names its call or channel gets that call's or channel's error
        reply = exchange(ws, {"type": "rpcCall", "callId": 7, "endpoint": 5})
        assert reply["type"] == "rpcError" and reply["callId"] == 7 and "invalid rpcCall" in reply["error"]["title"]
        reply = exchange(ws, {"type": "channelCreate", "channelId": 3})
        assert reply["type"] == "channelError" and reply["channelId"] == 3
        reply = exchange(ws, {"type": "rpcCall", "callId": 8, "endpoint": "noSuchEndpoint"})
        title = "No Rpc endpoint with name noSuchEndpoint"
        assert reply == {"type": "rpcError", "callId": 8, "error": {
            "title": title, "rootTitle": title, "cause": "namespace 'system' of this server has no such endpoint"}}
        reply = exchange(ws, {"type": "channelCreate", "channelId": 4, "endpoint": "predict"})
        assert reply["type"] == "channelError" and "No channel endpoint with name predict" in reply["error"]["title"]
        reply = exchange(ws, {"type": "signalSubscribe", "subscribeId": 0, "endpoint": "x", "creationParameter": None})
        assert reply["type"] == "signalError" and reply["subscribeId"] == 0
        reply = exchange(ws, {"type": "writableSignalSubscribe", "subscribeId": 1, "endpoint": "y"})
        assert reply["type"] == "writableSignalError" and reply["subscribeId"] == 1
        assert exchange(ws, {"type": "keepAlive"}) == {"type": "keepAliveAck"}
        # after all that, the socket still serves
        assert exchange(ws, {"type": "rpcCall", "callId": 9, "endpoint": "getExperimentFlags"}) == {
            "type": "rpcResult", "callId": 9, "result": []}
        reply = exchange(ws, {"type": "rpcCall", "callId": 10, "endpoint": "notify", "parameter": {"title": "hi"}})
        assert reply == {"type": "rpcResult", "callId": 10}  # a void call has no result


def test_wrong_parameters_are_the_calls_error(bare: RunningHost) -> None:
    with open_socket(bare, "llm") as ws:
        reply = exchange(ws, {"type": "rpcCall", "callId": 1, "endpoint": "getModelInfo", "parameter": {"x": 1}})
        assert reply["type"] == "rpcError" and "invalid parameter for getModelInfo" in reply["error"]["title"]
        reply = exchange(ws, {"type": "channelCreate", "channelId": 0, "endpoint": "predict",
                              "creationParameter": "nonsense"})
        assert reply["type"] == "channelError" and "invalid parameter for predict" in reply["error"]["title"]
        reply = exchange(ws, {"type": "rpcCall", "callId": 2, "endpoint": "getModelInfo",
                              "parameter": {"specifier": {"type": "query", "query": {"identifier": "nope"}},
                                            "throwIfNotFound": True}})
        assert reply["error"]["displayData"] == {"code": "generic.noModelMatchingQuery",
                                                 "query": {"domain": None, "identifier": "nope", "path": None,
                                                           "vision": None},
                                                 "loadedModelsSample": [], "totalLoadedModels": 0}
        reply = exchange(ws, {"type": "rpcCall", "callId": 3, "endpoint": "getModelInfo",
                              "parameter": {"specifier": {"type": "query", "query": {"identifier": "nope"}},
                                            "throwIfNotFound": False}})
        assert reply == {"type": "rpcResult", "callId": 3}
        assert exchange(ws, {"type": "rpcCall", "callId": 4, "endpoint": "listLoaded"}) == {
            "type": "rpcResult", "callId": 4, "result": []}


def test_namespaces_this_server_does_not_serve(bare: RunningHost) -> None:
    with open_socket(bare, "files") as ws:
        reply = exchange(ws, {"type": "rpcCall", "callId": 0, "endpoint": "uploadFileBase64", "parameter": {}})
        assert reply["type"] == "rpcError" and "No Rpc endpoint" in reply["error"]["title"]
    with pytest.raises(InvalidStatus), connect(f"ws://127.0.0.1:{bare.port('lmstudio_api')}/no-such-namespace",
                                               open_timeout=10):
        pass
    assert httpx.get(bare.url("lmstudio_api") + "/lmstudio-greeting").json() == {"lmstudio": True}


def test_browsers_on_foreign_sites_cannot_open_a_socket(bare: RunningHost) -> None:
    """The SDKs send no Origin; a page on a local origin may connect; a page on another site may not."""
    url = f"ws://127.0.0.1:{bare.port('lmstudio_api')}/system"
    with pytest.raises(InvalidStatus) as refused, connect(url, origin="http://evil.example", open_timeout=10):
        pass
    assert refused.value.response.status_code == 403
    with connect(url, origin="http://localhost:3000", open_timeout=10) as ws:
        ws.send(json.dumps(AUTH))
        assert json.loads(ws.recv(10)) == {"success": True}


def test_authentication_frame_is_required_first(bare: RunningHost) -> None:
    url = f"ws://127.0.0.1:{bare.port('lmstudio_api')}/system"
    for first in ('{"type": "keepAlive"}', "garbage", json.dumps({**AUTH, "authVersion": "one"})):
        with connect(url, open_timeout=10) as ws:
            ws.send(first)
            refusal = json.loads(ws.recv(10))
            assert refusal["success"] is False and "authentication packet" in refusal["error"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_too_many_open_channels(bare: RunningHost) -> None:
    with open_socket(bare, "system") as ws:
        for i in range(MAX_OPEN):
            ws.send(json.dumps({"type": "channelCreate", "channelId": i, "endpoint": "alive"}))
        reply = exchange(ws, {"type": "channelCreate", "channelId": MAX_OPEN, "endpoint": "alive"})
        assert reply["type"] == "channelError" and "too many" in reply["error"]["title"]
        # a cancel ends a channel with its close; then there is room again
        ws.send(json.dumps({"type": "channelSend", "channelId": 0, "message": {"type": "cancel"}, "ackId": 5}))
        replies = [json.loads(ws.recv(10)), json.loads(ws.recv(10))]
        assert {"type": "channelAck", "channelId": 0, "ackId": 5} in replies
        assert {"type": "channelClose", "channelId": 0} in replies
        reply = exchange(ws, {"type": "rpcCall", "callId": 99, "endpoint": "getExperimentFlags"})
        assert reply == {"type": "rpcResult", "callId": 99, "result": []}


def test_the_host_stopping_closes_the_sockets() -> None:
    with contextlib.ExitStack() as stack:
        with serve_host({"models": {}}, plugins=["lmstudio_api"]) as rh:
            ws = stack.enter_context(open_socket(rh, "system"))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_api_keys_by_passkey_token_or_header() -> None:
    with serve_host({"api_keys": ["sekrit"], "models": {}}, plugins=["lmstudio_api"]) as rh:
        assert httpx.get(rh.url("lmstudio_api") + "/lmstudio-greeting").json() == {"lmstudio": True}
        for auth, headers in ((dict(AUTH, clientPasskey="sekrit"), None),
                              (AUTH, {"Authorization": "Bearer sekrit"}),
                              (AUTH, {"x-api-key": "sekrit"})):
            with open_socket(rh, "system", auth, additional_headers=headers) as ws:
                assert exchange(ws, {"type": "keepAlive"}) == {"type": "keepAliveAck"}
        with connect(f"ws://127.0.0.1:{rh.port('lmstudio_api')}/system", open_timeout=10) as ws:
            ws.send(json.dumps(AUTH))
            refusal = json.loads(ws.recv(10))
            assert refusal["success"] is False and "API key" in refusal["error"]
        # LM Studio's API tokens: sk-lm-<identifier>:<passkey>
    token = "sk-lm-abcdefgh:0123456789abcdefghij"
    with serve_host({"api_keys": [token], "models": {}}, plugins=["lmstudio_api"]) as rh:
        token_auth = {"authVersion": 1, "clientIdentifier": "abcdefgh", "clientPasskey": "0123456789abcdefghij"}
        with open_socket(rh, "system", token_auth) as ws:
            assert exchange(ws, {"type": "keepAlive"}) == {"type": "keepAliveAck"}


# --- with the real runner -----------------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)


def predict_frame(channel_id: int, model: str, max_tokens: int | None = None) -> dict[str, Any]:
    fields = [] if max_tokens is None else [{"key": "llm.prediction.maxPredictedTokens",
                                             "value": {"checked": True, "value": max_tokens}}]
    return {"type": "channelCreate", "channelId": channel_id, "endpoint": "predict", "creationParameter": {
        "modelSpecifier": {"type": "query", "query": {"identifier": model}},
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": "go on"}]}]},
        "predictionConfigStack": {"layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]}}}


@pytest.mark.real
def test_a_client_vanishing_mid_prediction_stops_the_runner(tmp_path: Path, llama_server_bin: str) -> None:
    model = write_tiny_model(tmp_path / "long.gguf", context_length=32768)
    recorder = Recorder()
    config = {"plugins": {"llama_server": {"binary": llama_server_bin}},
              "models": {"tiny-long": {"path": str(model), "params": {"ctx_size": 32768, "parallel": 1}}}}
    with serve_host(config, plugins=["lmstudio_api", "openai_api", "llama_server"],
                    extra=[("recorder", recorder)]) as rh:
        with open_socket(rh, "llm") as ws:
            ws.send(json.dumps(predict_frame(0, "tiny-long")))  # no token limit: 32k tokens to go
            while json.loads(ws.recv(60))["message"]["type"] != "fragment":
                pass
            assert rh.host.scheduler.status("tiny-long").in_flight == 1
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a close frame
        wait_for(lambda: any(e.endpoint == "/llm predict" for e in recorder.finished), "the prediction recorded")
        assert [e.status for e in recorder.finished] == [499]
        wait_for(lambda: rh.host.scheduler.status("tiny-long").in_flight == 0, "the lease released")

        def released() -> list[str]:
            return [line for line in rh.host.scheduler.logs("tiny-long").tail(1000)
                    if "stop processing: n_tokens" in line]

        wait_for(released, "llama-server released the slot")
        # it held far fewer tokens than the 32k context it would have filled had it not stopped
        assert int(re.search(r"n_tokens = (\d+)", released()[-1]).group(1)) < 16000
        # the host and the runner serve the next client
        with open_socket(rh, "llm") as ws2:
            ws2.send(json.dumps(predict_frame(1, "tiny-long", max_tokens=3)))
            messages = []
            while not messages or messages[-1]["type"] == "channelSend":
                messages.append(json.loads(ws2.recv(60)))
            assert messages[-1] == {"type": "channelClose", "channelId": 1}
            success = messages[-2]["message"]
            assert success["type"] == "success" and success["stats"]["predictedTokensCount"] == 3
            assert sum(m["message"]["type"] == "fragment" for m in messages[:-1]) == 3
