"""Derived models: a chat model's embedding runner (``<name>@embed``).

Ollama embeds with any model; llama-server serves embeddings only when started for them (``--embeddings`` and a
pooling type) and then serves no chat. So, for every model whose runtime can make an embedding runner of it (the
runtime registers ``embedding=`` in ``register_runtimes``: the flags that do it) and that is not an embedding model
already, the catalogue holds an unlisted ``<name>@embed`` model for the same file. Surfaces send embedding requests
for a chat model there (:func:`for_embeddings`); it is started on demand, scheduled, ttl'd and counted in memory like
any model. A model configured under that name wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from llama_host.facts import model_facts

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.scheduler import Scheduler
    from llama_host.types import ModelSpec, RuntimeInfo

EMBED_SUFFIX = "@embed"


def embedding_variant(spec: ModelSpec, runtime: RuntimeInfo | None, host: Host | None = None) -> ModelSpec | None:
    """``spec``'s embedding runner, or ``None`` (an embedding model already, a runtime that cannot make one, a
    missing file, or itself a variant)."""
    make = getattr(runtime, "embedding", None)
    if make is None or spec.missing or spec.name.endswith(EMBED_SUFFIX):
        return None
    if model_facts(spec, runtime, host).embedding:
        return None
    params: dict[str, Any] | None = make(spec)
    if params is None:
        return None
    return msgspec.structs.replace(spec, name=spec.name + EMBED_SUFFIX, aliases=[], unlisted=True, pinned=False,
                                   params=params, metadata={**spec.metadata, "variant_of": spec.name})


def embedding_variants(models: Mapping[str, ModelSpec], runtimes: Mapping[str, RuntimeInfo],
                       host: Host | None = None) -> dict[str, ModelSpec]:
    """The ``@embed`` variants of ``models`` that are not named in ``models`` already."""
    out: dict[str, ModelSpec] = {}
    for spec in models.values():
        variant = embedding_variant(spec, runtimes.get(spec.runtime), host)
        if variant is not None and variant.name not in models:
            out[variant.name] = variant
    return out


def for_embeddings(scheduler: Scheduler, spec: ModelSpec) -> ModelSpec:
    """The model that serves embeddings for ``spec``: itself when it embeds, else its ``@embed`` variant (when its
    runtime makes one; otherwise ``spec``, and the runner's own answer tells the client)."""
    if scheduler.facts(spec.name).embedding:
        return spec
    variant = scheduler.entries.get(spec.name + EMBED_SUFFIX)
    return variant.spec if variant is not None else spec
