"""The ``plugins.lmstudio_api`` section of the site file."""

from __future__ import annotations

import msgspec


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: LM Studio's local server port; the OpenAI ``/v1`` routes are served here too (by the OpenAI surface).
    port: int = 1234
    #: ``publisher`` of a model whose GGUF metadata names none (LM Studio shows the Hugging Face user here).
    default_publisher: str = "local"
    #: ``/api/v1/chat`` replies kept in memory so that ``previous_response_id`` can continue them (0 = none kept).
    stored_responses: int = 256
