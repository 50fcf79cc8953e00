"""The plugin's section of the site file, ``plugins.hello``."""

from __future__ import annotations

import msgspec

NAME = "hello"  # the entry point's name: settings live under plugins.hello


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Unknown keys and wrong types are reported with their path (``plugins.hello.greeting: ...``), exit code 2."""

    greeting: str = "Hello from llama-host-hello"
    """What ``GET /hello`` says."""
    path: str = "/hello"
    """Where the greeting is served on the main port."""
    echo_prefix: str = "echo: "
    """Put before the prompt in the answers of ``runtime: echo`` models."""
