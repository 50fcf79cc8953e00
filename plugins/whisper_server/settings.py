"""The ``plugins.whisper_server`` section of the site file."""

from __future__ import annotations

from typing import Annotated

import msgspec

Size = int | Annotated[str, msgspec.Meta(pattern=r"^\s*[0-9]+(\.[0-9]+)?\s*[a-zA-Z]*\s*$",
                                         description="bytes, or a size such as 25MiB or 100MB")]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: whisper-server to run when a model names no ``binary`` of its own; a bare name is looked up on PATH.
    #: Unset: ``whisper-server`` on PATH, else the one ``scripts/get-whisper-server`` built into the cache.
    binary: str | None = None
    #: Largest accepted upload (the whole multipart body); larger ones get 413. OpenAI's own limit is 25 MB.
    max_upload_size: Size = "25MiB"
