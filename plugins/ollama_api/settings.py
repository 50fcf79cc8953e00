"""Settings of the Ollama surface (``plugins.ollama_api`` in the site file)."""

from __future__ import annotations

import msgspec

SURFACE = "ollama_api"


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Port of the Ollama listener (Ollama's own default).
    port: int = 11434
    #: Version reported by ``/api/version``; some editor integrations refuse versions older than 0.6.4.
    version: str = "0.12.6"
