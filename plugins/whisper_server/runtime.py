"""The ``whisper-server`` runtime: whisper.cpp's HTTP server for one model, started on demand."""

from __future__ import annotations

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
               args: list[str] | None = None) -> list[str]:
    """The command line: the model, loopback ``port``, OpenAI's path for inference, then ``params`` and ``args``."""
    return [binary, "-m", str(Path(model_path).expanduser()), "--host", "127.0.0.1", "--port", str(port),
            "--inference-path", INFERENCE_PATH, *flag_args(params or {}), *(args or [])]


class WhisperServerRunner(ProcessRunner):
    """Runtime factory ``(spec, host)``: ``path`` is a whisper model (ggml ``.bin``); ``binary`` overrides the
    plugin's ``binary``, which defaults to ``whisper-server`` on PATH, else the build of scripts/get-whisper-server."""

    def __init__(self, spec: ModelSpec, host: Host) -> None:
        settings: Settings = host.settings("whisper_server", Settings)
        self._binary = find_binary("whisper-server", spec.binary or settings.binary)
        super().__init__(spec, lambda port: build_argv(self._binary or "whisper-server", spec.path or "", port,
                                                       spec.params, spec.args),
                         env=spec.env, health_path="/health", log_dir=host.site.log_dir)

    async def start(self, timeout: float) -> None:
        if self._binary is None:
            raise RunnerStartError(f"model '{self.model.name}': whisper-server binary not found (set "
                                   f"plugins.whisper_server.binary or run scripts/get-whisper-server)")
        if not self.model.path:
            raise RunnerStartError(f"model '{self.model.name}': no 'path' to a whisper model is configured")
        if not Path(self.model.path).expanduser().is_file():
            raise RunnerStartError(f"model '{self.model.name}': model file not found: {self.model.path}")
        await super().start(timeout)
