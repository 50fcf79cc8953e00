"""The ``whisper-server`` runtime: whisper.cpp's HTTP server for one model, started on demand.

whisper-server has no API key option and allows every origin (CORS ``*``, fixed). So that only the host reaches it,
every route of a runner (``/health`` included) lives under a random secret prefix (``--request-path``) that only the
host knows, and it serves no static files (``--public`` names no folder; by default it serves
``examples/server/public`` below the host's working directory).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_host.binaries import find_binary
from llama_host.errors import RunnerStartError
from llama_host.process import ProcessRunner, flag_args

from llama_host_whisper_server.settings import Settings

if TYPE_CHECKING:
    from llama_host import Host, ModelSpec

RUNTIME = "whisper-server"
INFERENCE_PATH = "/v1/audio/transcriptions"  # translations use the same endpoint with translate=true


def build_argv(binary: str, model_path: str, port: int, params: Mapping[str, Any] | None = None,
               args: list[str] | None = None, secret_path: str | None = None) -> list[str]:
    """The command line: the model, loopback ``port``, OpenAI's path for inference, the secret prefix of every route
    and no static files, then ``params`` and ``args``."""
    lockdown = ["--request-path", secret_path, "--public", os.devnull] if secret_path else []
    return [binary, "-m", str(Path(model_path).expanduser()), "--host", "127.0.0.1", "--port", str(port),
            "--inference-path", INFERENCE_PATH, *lockdown, *flag_args(params or {}), *(args or [])]


class WhisperServerRunner(ProcessRunner):
    """Runtime factory ``(spec, host)``: ``path`` is a whisper model (ggml ``.bin``); ``binary`` overrides the
    plugin's ``binary``, which defaults to ``whisper-server`` on PATH, else the build of scripts/get-whisper-server."""

    def __init__(self, spec: ModelSpec, host: Host) -> None:
        settings: Settings = host.settings("whisper_server", Settings)
        self._binary = find_binary("whisper-server", spec.binary or settings.binary)
        secret_path = "/" + secrets.token_urlsafe(24)  # base_url ends with it: callers need not know
        super().__init__(spec, lambda port: build_argv(self._binary or "whisper-server", spec.path or "", port,
                                                       spec.params, spec.args, secret_path),
                         env=spec.env, health_path="/health", log_dir=host.site.log_dir, base_path=secret_path)

    async def start(self, timeout: float) -> None:
        if self._binary is None:
            raise RunnerStartError(f"model '{self.model.name}': whisper-server binary not found (set "
                                   f"plugins.whisper_server.binary or run scripts/get-whisper-server)")
        if not self.model.path:
            raise RunnerStartError(f"model '{self.model.name}': no 'path' to a whisper model is configured")
        if not Path(self.model.path).expanduser().is_file():
            raise RunnerStartError(f"model '{self.model.name}': model file not found: {self.model.path}")
        await super().start(timeout)
