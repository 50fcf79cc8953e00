"""The SDK protocol's model management: model views, specifiers, list / info / load / unload, and ``/system``.

Every model is one instance here: its ``modelKey``, ``identifier`` and ``instanceReference`` are the model's name.
Loaded state is the scheduler's (what every dialect shows); a handle's calls load the model again on demand, as
every other surface of this host does. Model facts are the core's (``host.scheduler.facts``), described by
:mod:`.describe` as ``/api/v1/models`` shows them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import msgspec

from llama_host import __version__
from llama_host.types import ModelSpec, ModelStatus

from . import describe, sdk_calls
from .exchange import SURFACE
from .routes_v1 import model_size
from .sdk_ws import Channel, Context, ProtocolError, convert
from .wire import V1Capabilities

log = logging.getLogger(__name__)
Domain = Literal["llm", "embedding"]
#: how many names an error's ``loadedModelsSample`` / ``availablePathsSample`` lists
SAMPLE = 10


# --- wire shapes ------------------------------------------------------------------------------------------------

class Quantization(msgspec.Struct):
    name: str
    bits: int


class ModelInfo(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """LM Studio's ``llmInfo`` / ``embeddingModelInfo``; with the instance fields, ``...InstanceInfo``."""

    type: Domain
    model_key: str
    format: Literal["gguf"]
    display_name: str
    path: str
    size_bytes: int
    max_context_length: int
    params_string: str | None = None
    architecture: str | None = None
    quantization: Quantization | None = None
    vision: bool | None = None
    trained_for_tool_use: bool | None = None
    identifier: str | None = None
    instance_reference: str | None = None
    context_length: int | None = None


class ModelQuery(msgspec.Struct, kw_only=True):
    domain: str | None = None
    identifier: str | None = None
    path: str | None = None
    vision: bool | None = None


class Specifier(msgspec.Struct, kw_only=True, rename="camel"):
    type: Literal["query", "instanceReference"]
    query: ModelQuery | None = None
    instance_reference: str | None = None


class KvField(msgspec.Struct, kw_only=True):
    key: str
    value: Any = None


class KvConfig(msgspec.Struct, kw_only=True):
    fields: list[KvField] = []


class KvLayer(msgspec.Struct, kw_only=True, rename="camel"):
    layer_name: str = ""
    config: KvConfig = msgspec.field(default_factory=KvConfig)


class KvStack(msgspec.Struct, kw_only=True):
    layers: list[KvLayer] = []

    def flat(self) -> dict[str, Any]:
        """The effective settings: a later layer's field wins over an earlier one's."""
        return {f.key: f.value for layer in self.layers for f in layer.config.fields}

    def has_layer(self, name: str) -> bool:
        return any(layer.layer_name == name for layer in self.layers)


class GetOrLoadParam(msgspec.Struct, kw_only=True, rename="camel"):
    identifier: str
    load_ttl_ms: int | None = None
    load_config_stack: KvStack = msgspec.field(default_factory=KvStack)


class LoadModelParam(msgspec.Struct, kw_only=True, rename="camel"):
    model_key: str
    identifier: str | None = None
    ttl_ms: int | None = None
    load_config_stack: KvStack = msgspec.field(default_factory=KvStack)


class InfoParam(msgspec.Struct, kw_only=True, rename="camel"):
    specifier: Specifier
    throw_if_not_found: bool = False


class SpecifierParam(msgspec.Struct, kw_only=True):
    specifier: Specifier


class UnloadParam(msgspec.Struct, kw_only=True):
    identifier: str


# --- model views ------------------------------------------------------------------------------------------------

def domain_of(ctx: Context, spec: ModelSpec) -> Domain:
    return describe.v1_type(ctx.host.scheduler.facts(spec.name))


def _listed(ctx: Context) -> list[tuple[ModelSpec, ModelStatus]]:
    models = ctx.host.scheduler.models
    return [(models[s.name], s) for s in ctx.host.scheduler.statuses()
            if not s.unlisted and not s.missing and s.name in models]


def _loaded(ctx: Context, domain: str | None) -> list[tuple[ModelSpec, ModelStatus]]:
    return [(spec, s) for spec, s in _listed(ctx)
            if describe.is_loaded(s) and (domain is None or domain_of(ctx, spec) == domain)]


def context_length(ctx: Context, spec: ModelSpec) -> int:
    """The context the model runs (or will run) with, load parameters included."""
    return describe.loaded_context(ctx.host.scheduler.facts(spec.name))


def model_info(ctx: Context, spec: ModelSpec, status: ModelStatus | None = None, *, size: int | None = None,
               instance: bool = True) -> ModelInfo:
    """The SDK's view of a model (``instance``: with ``identifier``, ``instanceReference`` and ``contextLength``)."""
    status = status or ctx.host.scheduler.status(spec.name)
    v1 = describe.v1_model(spec, status, ctx.host.scheduler.facts(spec.name),
                           default_publisher=ctx.lms.settings.default_publisher, size_bytes=size)
    meta = describe.facts(spec, status)
    quant = v1.quantization
    bits = quant.bits_per_weight if quant is not None else None
    info = ModelInfo(
        type=v1.type, model_key=spec.name, format="gguf", display_name=v1.display_name, path=spec.path or spec.name,
        size_bytes=v1.size_bytes, max_context_length=v1.max_context_length, params_string=v1.params_string,
        architecture=describe.architecture(meta),
        quantization=Quantization(quant.name, int(bits)) if quant is not None and quant.name and bits else None)
    if isinstance(v1.capabilities, V1Capabilities):  # LLMs only
        info.vision, info.trained_for_tool_use = v1.capabilities.vision, v1.capabilities.trained_for_tool_use
    if instance:
        info.identifier = info.instance_reference = spec.name
        info.context_length = context_length(ctx, spec)
    return info


async def model_infos(ctx: Context, pairs: list[tuple[ModelSpec, ModelStatus]], *, instance: bool) -> list[ModelInfo]:
    sizes = await asyncio.to_thread(lambda: [model_size(spec) for spec, _ in pairs])
    return [model_info(ctx, spec, status, size=size, instance=instance)
            for (spec, status), size in zip(pairs, sizes, strict=True)]


async def one_info(ctx: Context, spec: ModelSpec, *, instance: bool = True) -> ModelInfo:
    return (await model_infos(ctx, [(spec, ctx.host.scheduler.status(spec.name))], instance=instance))[0]


def load_config(ctx: Context, spec: ModelSpec) -> dict[str, Any]:
    """The model's load config as a KV config: its context length (the one fact this host controls per load)."""
    return {"fields": [{"key": f"{domain_of(ctx, spec)}.load.contextLength", "value": context_length(ctx, spec)}]}


# --- finding models ---------------------------------------------------------------------------------------------

def _loaded_sample(ctx: Context, domain: str) -> tuple[list[str], int]:
    names = [spec.name for spec, _ in _loaded(ctx, domain)]
    return names[:SAMPLE], len(names)


def _by_key(ctx: Context, key: str) -> ModelSpec | None:
    """A model by name or alias (through ``resolve_model``), else by its file path (or the path's tail)."""
    spec = ctx.host.scheduler.resolve(key, SURFACE)
    if spec is not None:
        return spec
    tail = "/" + key.lstrip("/")
    for candidate in ctx.host.scheduler.models.values():
        if candidate.path and (candidate.path == key or candidate.path.endswith(tail)):
            return candidate
    return None


def _check_domain(ctx: Context, spec: ModelSpec, domain: str, asked: str) -> ModelSpec:
    actual = domain_of(ctx, spec)
    if actual != domain:
        raise ProtocolError(f"'{asked}' is an {actual} model, not an {domain} model",
                            display={"code": "generic.domainMismatch", "path": spec.path or spec.name,
                                     "actualDomain": actual, "expectedDomain": domain},
                            suggestion=f"use client.{'embedding' if actual == 'embedding' else 'llm'} for it")
    return spec


def find_by_key(ctx: Context, key: str) -> ModelSpec:
    """The model a ``getOrLoad`` / ``loadModel`` key names, in the socket's domain."""
    spec = _by_key(ctx, key)
    if spec is None:
        paths = [spec.name for spec, _ in _listed(ctx)]
        raise ProtocolError(f"Cannot find a model with key or path '{key}'",
                            display={"code": "generic.pathNotFound", "path": key,
                                     "availablePathsSample": paths[:SAMPLE], "totalModels": len(paths)})
    return _check_domain(ctx, spec, ctx.namespace, key)


def find(ctx: Context, specifier: Specifier) -> ModelSpec:
    """The model a specifier names. A query without identifier or path takes a loaded model of the socket's domain
    (the most recently used); a named one is found whether it is loaded or not (its calls load it on demand)."""
    domain = ctx.namespace
    if specifier.type == "instanceReference":
        key = specifier.instance_reference or ""
        query = ModelQuery(identifier=key)
    else:
        query = specifier.query or ModelQuery()
        key = query.identifier or query.path or ""
    if key:
        spec = _by_key(ctx, key)
        if spec is not None:
            return _check_domain(ctx, spec, domain, key)
    else:
        loaded = sorted(_loaded(ctx, domain), key=lambda pair: pair[1].last_used or 0.0, reverse=True)
        if loaded:
            return loaded[0][0]
    sample, total = _loaded_sample(ctx, domain)
    what = f"'{key}'" if key else f"any loaded {domain} model"
    raise ProtocolError(f"No model found that matches {what}",
                        display={"code": "generic.noModelMatchingQuery",
                                 "query": msgspec.to_builtins(query), "loadedModelsSample": sample,
                                 "totalLoadedModels": total},
                        suggestion="load the model first (client.llm.model(NAME) loads it on demand)" if not key
                        else None)


def ttl_seconds(ms: int | None) -> float | None:
    return ms / 1000.0 if ms is not None and ms > 0 else None


def load_params(ctx: Context, stack: KvStack) -> dict[str, Any] | None:
    """Runner parameters from a load config stack: ``<domain>.load.contextLength`` → ``ctx_size``."""
    value = stack.flat().get(f"{ctx.namespace}.load.contextLength")
    if isinstance(value, dict):  # a checkbox-style value {checked, value}
        value = value.get("value") if value.get("checked", True) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(f"invalid context length {value!r}: expected a positive integer")
    return {"ctx_size": value}


# --- /llm and /embedding: the endpoints every model namespace has ------------------------------------------------

async def list_loaded(ctx: Context, _param: Any) -> list[ModelInfo]:
    return await model_infos(ctx, _loaded(ctx, ctx.namespace), instance=True)


async def get_model_info(ctx: Context, param: Any) -> ModelInfo | None:
    p = convert(param, InfoParam, "getModelInfo")
    try:
        spec = find(ctx, p.specifier)
    except ProtocolError:
        if p.throw_if_not_found:
            raise
        return None
    return await one_info(ctx, spec)


async def get_load_config(ctx: Context, param: Any) -> dict[str, Any]:
    p = convert(param, SpecifierParam, "getLoadConfig")
    return load_config(ctx, find(ctx, p.specifier))


async def unload_model(ctx: Context, param: Any) -> None:
    p = convert(param, UnloadParam, "unloadModel")
    spec = _by_key(ctx, p.identifier)
    if spec is None or domain_of(ctx, spec) != ctx.namespace or not await ctx.host.scheduler.unload(spec.name):
        sample, total = _loaded_sample(ctx, ctx.namespace)
        raise ProtocolError(f"No loaded model with identifier '{p.identifier}'",
                            display={"code": "generic.identifierNotFound", "identifier": p.identifier,
                                     "loadedModelsSample": sample, "totalLoadedModels": total})


async def _load(ctx: Context, channel: Channel, spec: ModelSpec, ttl: float | None,
                params: dict[str, Any] | None) -> ModelInfo:
    await channel.unless_cancelled(sdk_calls.load(ctx.host, spec, ttl=ttl, load_params=params),
                                   f"loading '{spec.name}' was cancelled")
    return await one_info(ctx, spec)


async def get_or_load(ctx: Context, channel: Channel, param: Any) -> None:
    """``client.llm.model(key)``: the loaded model, or load it (``loadTtlMs`` applies only to a load made here)."""
    p = convert(param, GetOrLoadParam, "getOrLoad")
    spec = find_by_key(ctx, p.identifier)
    if describe.is_loaded(ctx.host.scheduler.status(spec.name)):
        await channel.send({"type": "alreadyLoaded", "info": await one_info(ctx, spec)})
        return
    await channel.send({"type": "startLoading", "identifier": spec.name,
                        "info": await one_info(ctx, spec, instance=False)})
    info = await _load(ctx, channel, spec, ttl_seconds(p.load_ttl_ms), load_params(ctx, p.load_config_stack))
    await channel.send({"type": "loadProgress", "progress": 1.0})
    await channel.send({"type": "loadSuccess", "info": info})


async def load_model(ctx: Context, channel: Channel, param: Any) -> None:
    """``client.llm.load(key)``: start the model with this load config (a running one with another is restarted).
    This host runs one instance per model: the instance is named after the model whatever ``identifier`` asks."""
    p = convert(param, LoadModelParam, "loadModel")
    spec = find_by_key(ctx, p.model_key)
    await channel.send({"type": "resolved", "info": await one_info(ctx, spec, instance=False)})
    await channel.send({"type": "progress", "progress": 0.0})
    info = await _load(ctx, channel, spec, ttl_seconds(p.ttl_ms), load_params(ctx, p.load_config_stack))
    await channel.send({"type": "progress", "progress": 1.0})
    await channel.send({"type": "success", "info": info})


# --- /system ------------------------------------------------------------------------------------------------------

async def list_downloaded_models(ctx: Context, _param: Any) -> list[ModelInfo]:
    return await model_infos(ctx, _listed(ctx), instance=False)


async def version(ctx: Context, _param: Any) -> dict[str, Any]:
    return {"version": __version__, "build": 0}


async def notify(ctx: Context, param: Any) -> None:
    title = param.get("title") if isinstance(param, dict) else None
    log.info("lmstudio sdk notification: %s", str(title)[:200])


async def experiment_flags(ctx: Context, _param: Any) -> list[str]:
    return []


async def alive(ctx: Context, channel: Channel, _param: Any) -> None:
    """Open until the client closes it or goes away."""
    await channel.cancelled.wait()
