"""Wire shapes of LM Studio's REST API (v0 and the native v1), as msgspec Structs.

Request Structs accept unknown fields (clients send extras; the v0 inference bodies are forwarded whole to the
runner, these Structs only give typed access to the keys the surface acts on). Response Structs leave a field
out (``UNSET``) exactly where LM Studio's documentation says it is absent.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

# --- requests -----------------------------------------------------------------------------------------------------


class V0InferenceRequest(msgspec.Struct, kw_only=True):
    """The keys of an OpenAI-style v0 body (chat, completion or embedding) this surface reads."""

    model: str | None = None
    stream: bool | None = None
    #: LM Studio's just-in-time loading: idle seconds before the model is unloaded again.
    ttl: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None


class V0ChatRequest(V0InferenceRequest, kw_only=True):
    messages: list[Any]


class V0CompletionRequest(V0InferenceRequest, kw_only=True):
    prompt: Any


class V0EmbeddingRequest(V0InferenceRequest, kw_only=True):
    input: Any


class V1LoadConfig(msgspec.Struct, kw_only=True):
    context_length: int | None = None
    eval_batch_size: int | None = None
    flash_attention: bool | None = None
    num_experts: int | None = None
    offload_kv_cache_to_gpu: bool | None = None


class V1LoadRequest(V1LoadConfig, kw_only=True):
    model: str
    echo_load_config: bool = False
    ttl: float | None = None
    #: The first v1 release nested the load settings under ``config``; both spellings are accepted.
    config: V1LoadConfig | None = None


class V1UnloadRequest(msgspec.Struct, kw_only=True):
    instance_id: str


class V1InputItem(msgspec.Struct, kw_only=True):
    """One item of a ``/api/v1/chat`` ``input`` array: ``{"type": "message"|"text", "content"}`` or an image."""

    type: str
    content: str | None = None
    text: str | None = None
    data_url: str | None = None


class V1ChatRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[V1InputItem]
    system_prompt: str | None = None
    integrations: list[Any] | None = None
    mcp_servers: list[Any] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_output_tokens: int | None = None
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    context_length: int | None = None
    store: bool = True
    previous_response_id: str | None = None
    ttl: float | None = None


# --- v0 responses -------------------------------------------------------------------------------------------------


class V0Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    type: Literal["llm", "vlm", "embeddings"]
    publisher: str
    arch: str | None
    compatibility_type: str = "gguf"
    quantization: str | None
    state: Literal["loaded", "not-loaded"]
    max_context_length: int
    capabilities: list[str] = []
    #: llama-host's own: pinned, priority, group, max_concurrent
    scheduling: dict[str, Any] = {}


class V0ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[V0Model]


class V0Stats(msgspec.Struct, kw_only=True):
    tokens_per_second: float
    time_to_first_token: float
    generation_time: float
    stop_reason: str


class V0ModelInfo(msgspec.Struct, kw_only=True):
    arch: str | None
    quant: str | None
    format: str = "gguf"
    context_length: int


class V0Runtime(msgspec.Struct, kw_only=True):
    name: str
    version: str
    supported_formats: list[str] = msgspec.field(default_factory=lambda: ["gguf"])


# --- v1 responses -------------------------------------------------------------------------------------------------


class V1Quantization(msgspec.Struct, kw_only=True):
    name: str | None
    bits_per_weight: float | None


class V1InstanceConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    context_length: int
    eval_batch_size: int | UnsetType = UNSET
    flash_attention: bool | UnsetType = UNSET
    num_experts: int | UnsetType = UNSET
    offload_kv_cache_to_gpu: bool | UnsetType = UNSET


class V1LoadedInstance(msgspec.Struct, kw_only=True):
    id: str
    config: V1InstanceConfig


class V1Capabilities(msgspec.Struct, kw_only=True):
    vision: bool
    trained_for_tool_use: bool


class V1Model(msgspec.Struct, kw_only=True):
    type: Literal["llm", "embedding"]
    publisher: str
    key: str
    display_name: str
    architecture: str | UnsetType | None = UNSET
    quantization: V1Quantization | None
    size_bytes: int
    params_string: str | None
    loaded_instances: list[V1LoadedInstance]
    max_context_length: int
    format: Literal["gguf", "mlx"] | None = "gguf"
    capabilities: V1Capabilities | UnsetType = UNSET
    description: str | UnsetType | None = UNSET


class V1ModelList(msgspec.Struct, kw_only=True):
    models: list[V1Model]


class V1LoadResponse(msgspec.Struct, kw_only=True):
    type: Literal["llm", "embedding"]
    instance_id: str
    load_time_seconds: float
    status: Literal["loaded"] = "loaded"
    load_config: V1InstanceConfig | UnsetType = UNSET


class V1UnloadResponse(msgspec.Struct, kw_only=True):
    instance_id: str


class V1ChatStats(msgspec.Struct, kw_only=True):
    input_tokens: int
    total_output_tokens: int
    reasoning_output_tokens: int
    tokens_per_second: float
    time_to_first_token_seconds: float
    model_load_time_seconds: float | UnsetType = UNSET


class V1OutputItem(msgspec.Struct, kw_only=True):
    """A ``message`` or ``reasoning`` item (tool calls need integrations, which this host does not run)."""

    type: Literal["message", "reasoning"]
    content: str


class V1ChatResult(msgspec.Struct, kw_only=True):
    model_instance_id: str
    output: list[V1OutputItem]
    stats: V1ChatStats
    response_id: str | UnsetType = UNSET
