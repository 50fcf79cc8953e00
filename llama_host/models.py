"""The models the host knows, by name: configured ones over discovered ones, and the index of names and aliases.

Pure bookkeeping (no runners, no I/O): the scheduler keeps one runner lifecycle per name the catalogue holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from llama_host.types import ModelSpec


def merge(configured: Mapping[str, ModelSpec], discovered: Iterable[ModelSpec]) -> dict[str, ModelSpec]:
    """Configured and discovered models by name, a configured name winning; a configured model whose file discovery
    found gets the facts discovery read (its metadata, and its projector unless it names one)."""
    merged: dict[str, ModelSpec] = {}
    by_path: dict[str, ModelSpec] = {}
    for spec in discovered:
        merged.setdefault(spec.name, spec)
        if spec.path:
            by_path.setdefault(spec.path, spec)
    for name, spec in configured.items():
        found = by_path.get(spec.path or "")
        if found is not None and not spec.metadata:
            spec = msgspec.structs.replace(spec, metadata=found.metadata, mmproj=spec.mmproj or found.mmproj)
        merged[name] = spec
    return merged


class NameIndex:
    """Requested names → model names: exact, then case-insensitive name or alias, then without an Ollama
    ``:latest`` tag. The first model to claim a name or alias keeps it."""

    def __init__(self, specs: Iterable[ModelSpec] = ()) -> None:
        self._exact: set[str] = set()
        self._folded: dict[str, str] = {}
        for spec in specs:
            self._exact.add(spec.name)
            for key in (spec.name, *spec.aliases):
                self._folded.setdefault(key.lower(), spec.name)

    def lookup(self, requested: str) -> str | None:
        if requested in self._exact:
            return requested
        key = requested.lower()
        for candidate in (key, key.removesuffix(":latest")):
            if candidate in self._folded:
                return self._folded[candidate]
        return None
