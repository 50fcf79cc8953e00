"""The models the host itself adds: names of pulled models, and variants made by ``create``/``copy``.

Kept in ``managed.yaml`` next to the site file (machine-written, atomically; never the user's site file)::

    pulled:                      # a pulled model answers to these names (aliases of the model discovery found)
      /models/u/r/r-Q4_K_M.gguf: {names: [hf.co/u/r:Q4_K_M], repo: u/r, quant: Q4_K_M, files: [...], pulled_at: ...}
    variants:                    # models of their own, listed by every surface
      my-assistant: {from: qwen2.5-7b-instruct, system: "You are terse.", parameters: {temperature: 0.2}}
      uploaded: {path: /models/.blobs/sha256-..., parameters: {num_ctx: 4096}}

A variant ``from`` another model is that model's spec with another name plus its own system prompt, parameters and
template; one with a ``path`` is a model file of its own (``ollama create`` from an uploaded blob). Configured models
win over variants with the same name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from llama_host.atomic import write_atomic
from llama_host.types import ModelSpec

log = logging.getLogger("llama_host.catalogue")

FILE_NAME = "managed.yaml"
SOURCE = "catalogue"

#: Ollama parameters that are llama-server flags (a runner restart) rather than per-request fields.
LOAD_PARAMETERS = {"num_ctx": "ctx_size", "num_batch": "batch_size", "num_gpu": "n_gpu_layers", "main_gpu": "main_gpu",
                   "num_thread": "threads"}
#: Ollama parameters sent with each request under the OpenAI/llama-server name.
REQUEST_PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                      "typical_p": "typical_p", "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
                      "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "seed": "seed",
                      "stop": "stop", "num_predict": "max_tokens", "mirostat": "mirostat",
                      "mirostat_tau": "mirostat_tau",
                      "mirostat_eta": "mirostat_eta", "num_keep": "n_keep"}


class CatalogueError(Exception):
    pass


class Catalogue:
    """``managed.yaml``: read on every refresh, written atomically after each change (blocking: use a thread)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pulled: dict[str, dict[str, Any]] = {}
        self.variants: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.path is None:
            return
        with self._lock:
            try:
                data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
            except FileNotFoundError:
                data = {}
            except (OSError, yaml.YAMLError) as exc:
                self.error = f"{self.path}: {exc}"
                log.error("catalogue: cannot read %s (not overwritten until it is fixed)", self.error)
                return
            if not isinstance(data, dict):
                self.error = f"{self.path}: not a mapping"
                return
            self.error = None
            self.pulled = {str(k): dict(v) for k, v in (data.get("pulled") or {}).items() if isinstance(v, dict)}
            self.variants = {str(k): dict(v) for k, v in (data.get("variants") or {}).items() if isinstance(v, dict)}

    def save(self) -> None:
        if self.path is None:
            return
        if self.error:
            raise CatalogueError(f"not writing over a file that cannot be read: {self.error}")
        with self._lock:
            text = ("# Written by llama-host: pulled models' names and the variants made by create/copy.\n"
                    + yaml.safe_dump({"pulled": self.pulled, "variants": self.variants}, sort_keys=True))
            write_atomic(self.path, text, backups=3)

    # --- changes (each followed by save() in a thread, then host.refresh_models()) ---------------------------------

    def record_pull(self, path: str, *, names: list[str], repo: str, quant: str | None, files: list[str]) -> None:
        self.pulled[path] = {"names": sorted(set(names)), "repo": repo, "quant": quant, "files": files,
                             "pulled_at": round(time.time(), 3)}

    def forget_path(self, path: str) -> None:
        self.pulled.pop(path, None)

    def set_variant(self, name: str, entry: dict[str, Any]) -> None:
        self.variants[name] = {k: v for k, v in entry.items() if v not in (None, "", {}, [])}

    def remove_variant(self, name: str) -> dict[str, Any] | None:
        return self.variants.pop(name, None)

    # --- the merge (pure) -----------------------------------------------------------------------------------------

    def apply(self, configured: Mapping[str, ModelSpec], discovered: list[ModelSpec]
              ) -> tuple[dict[str, ModelSpec], list[ModelSpec]]:
        """Configured and discovered specs with the pulled names as aliases, plus one spec per variant."""
        names = {path: entry.get("names") or [] for path, entry in self.pulled.items()}

        def named(spec: ModelSpec) -> ModelSpec:
            extra = [n for n in names.get(spec.path or "", []) if n not in spec.aliases and n != spec.name]
            return msgspec.structs.replace(spec, aliases=[*spec.aliases, *extra]) if extra else spec

        configured = {name: named(spec) for name, spec in configured.items()}
        discovered = [named(spec) for spec in discovered]
        known: dict[str, ModelSpec] = {s.name.lower(): s for s in discovered}
        known.update({n.lower(): s for n, s in configured.items()})
        for spec in [*discovered, *configured.values()]:
            for alias in spec.aliases:
                known.setdefault(alias.lower(), spec)
        variants = []
        for name, entry in sorted(self.variants.items()):
            if name in configured:
                continue
            variant = variant_spec(name, entry, known)
            if variant is not None:
                variants.append(variant)
        return configured, [*discovered, *variants]


def variant_spec(name: str, entry: Mapping[str, Any], known: Mapping[str, ModelSpec]) -> ModelSpec | None:
    """The spec of one variant; ``None`` when the model it is made from is gone (it is listed again when it returns)."""
    parameters = dict(entry.get("parameters") or {})
    load = {LOAD_PARAMETERS[k]: v for k, v in parameters.items() if k in LOAD_PARAMETERS}
    request = {REQUEST_PARAMETERS[k]: v for k, v in parameters.items() if k in REQUEST_PARAMETERS}
    facts = {k: entry[k] for k in ("system", "template", "parameters", "from", "parent", "created_at") if entry.get(k)}
    if entry.get("path"):
        base = ModelSpec(name=name, path=str(entry["path"]))
    else:
        origin = str(entry.get("from") or "")
        found = known.get(origin.lower()) or known.get(origin.lower().removesuffix(":latest"))
        if found is None:
            return None
        base = found
        facts["from"] = found.name
    return msgspec.structs.replace(
        base, name=name, aliases=[], source=SOURCE, pinned=False, unlisted=False,
        params={**base.params, **load}, system=entry.get("system") or base.system,
        defaults={**base.defaults, **request}, metadata={**base.metadata, "variant": facts})


_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_COMPLETION_PATHS = ("/v1/completions", "/completions", "/completion")


def with_model_defaults(spec: ModelSpec, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request body with the model's ``system`` prompt (chat requests that bring none) and its ``defaults``
    (fields the request leaves unset). Pure; other paths and bodies come back unchanged."""
    chat = path in _CHAT_PATHS
    if not (chat or path in _COMPLETION_PATHS) or not isinstance(body, dict):
        return body
    out = dict(body)
    messages = out.get("messages")
    if chat and spec.system and isinstance(messages, list) and not any(
            isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
        out["messages"] = [{"role": "system", "content": spec.system}, *messages]
    for key, value in spec.defaults.items():
        out.setdefault(key, value)
    return out
