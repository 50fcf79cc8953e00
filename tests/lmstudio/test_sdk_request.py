"""The SDK prediction settings (a KV config stack) as the runner's request body: a pure mapping, no processes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from llama_host_lmstudio_api.sdk_llm import PredictParam, openai_messages, runner_request
from llama_host_lmstudio_api.sdk_ws import AuthPacket, ProtocolError, auth_keys, header_keys, key_accepted


def param(*layers: tuple[str, dict[str, Any]], messages: list[dict[str, Any]] | None = None,
          **extra: Any) -> PredictParam:
    return msgspec.convert({
        "modelSpecifier": {"type": "instanceReference", "instanceReference": "m"},
        "history": {"messages": messages or [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "predictionConfigStack": {"layers": [
            {"layerName": name, "config": {"fields": [{"key": f"llm.prediction.{k}", "value": v}
                                                      for k, v in fields.items()]}} for name, fields in layers]},
        **extra}, PredictParam)


def test_chat_body_with_the_sdks_settings() -> None:
    request = runner_request(param(("apiOverride", {
        "maxPredictedTokens": {"checked": True, "value": 7}, "temperature": 0.3, "stopStrings": ["\n\n"],
        "topKSampling": 20, "topPSampling": {"checked": True, "value": 0.9},
        "minPSampling": {"checked": False, "value": 0.05}, "repeatPenalty": {"checked": True, "value": 1.2}})), "m")
    assert request.path == "/v1/chat/completions" and request.max_tokens == 7
    body = request.body
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["stop"], body["top_k"], body["top_p"],
            body["repeat_penalty"]) == (7, 0.3, ["\n\n"], 20, 0.9, 1.2)
    assert "min_p" not in body  # an unchecked setting does not apply


def test_a_later_layer_wins_and_unlimited_tokens() -> None:
    request = runner_request(param(("instance", {"temperature": 1.0, "maxPredictedTokens": {"checked": True,
                                                                                          "value": 5}}),
                                   ("apiOverride", {"temperature": 0.1,
                                                    "maxPredictedTokens": {"checked": False, "value": 5}})), "m")
    assert request.body["temperature"] == 0.1 and "max_tokens" not in request.body and request.max_tokens is None


def test_complete_mode_joins_the_messages_unformatted() -> None:
    template = {"type": "jinja", "jinjaPromptTemplate": {"template": "{% for message in messages %}"
                                                                    "{{ message['content'] }}{% endfor %}"},
                "stopStrings": []}
    request = runner_request(param(("apiOverride", {"stopStrings": []}), ("completeModeFormatting",
                                                                          {"promptTemplate": template}),
                                   messages=[{"role": "user", "content": [{"type": "text", "text": "Once upon"}]}]),
                             "m")
    assert request.path == "/v1/completions" and request.body["prompt"] == "Once upon"
    assert "messages" not in request.body and "stop" not in request.body


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = runner_request(param(("apiOverride", {"structured": {"type": "json", "jsonSchema": schema}})), "m")
    assert chat.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "response",
                                                                                   "schema": schema}}
    grammar = runner_request(param(("apiOverride", {"structured": {"type": "gbnf", "gbnfGrammar": 'root ::= "x"'}})),
                             "m")
    assert grammar.body["grammar"] == 'root ::= "x"'
    none = runner_request(param(("apiOverride", {"structured": {"type": "none"}})), "m")
    assert "response_format" not in none.body and "grammar" not in none.body


@pytest.mark.parametrize(("fields", "extra", "message"), [
    ({"temperature": "hot"}, {}, "invalid temperature"),
    ({"stopStrings": [1]}, {}, "invalid stopStrings"),
    ({"structured": {"type": "json"}}, {}, "jsonSchema"),
    ({"tools": {"type": "toolArray", "tools": []}}, {}, "tool use"),
    ({}, {"fuzzyPresetIdentifier": "my-preset"}, "preset 'my-preset' not found"),
])
def test_refused_settings(fields: dict[str, Any], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        runner_request(param(("apiOverride", fields), **extra), "m")


def test_history_with_tool_calls_and_results() -> None:
    history = param(messages=[
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}, {"type": "toolCallRequest", "toolCallRequest": {
            "id": "c1", "type": "function", "name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": [{"type": "toolCallResult", "content": "2", "toolCallId": "c1"}]},
    ]).history
    assert openai_messages(history) == [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "content": "2", "tool_call_id": "c1"},
    ]
    with pytest.raises(ProtocolError, match="file attachments"):
        openai_messages(param(messages=[{"role": "user", "content": [
            {"type": "file", "name": "a.png", "identifier": "x", "sizeBytes": 1, "fileType": "image"}]}]).history)


def test_keys_from_headers_and_the_authentication_frame() -> None:
    assert header_keys({"authorization": "Bearer k1"}) == ["k1"]
    assert header_keys({"authorization": "Basic a2V5Og=="}) == ["key"]  # "key:" — the Python SDK's KEY@host
    assert header_keys({"authorization": "Basic !!!"}) == []
    assert header_keys({"x-api-key": "k2"}) == ["k2"]
    auth = AuthPacket(authVersion=1, clientIdentifier="abcdefgh", clientPasskey="p" * 20)
    assert key_accepted(auth_keys(auth), ["sk-lm-abcdefgh:" + "p" * 20])
    assert key_accepted(auth_keys(auth), ["p" * 20])
    assert not key_accepted(auth_keys(auth), ["other"])
