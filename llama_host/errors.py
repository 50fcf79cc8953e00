"""Errors the core raises; each surface renders them in its own dialect (status, code and message are given here)."""

from __future__ import annotations


class HostError(Exception):
    """An error with an HTTP status, a machine code and a message fit for the client."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str, *, retry_after: float | None = None, log_tail: list[str] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.log_tail = log_tail or []
        self.param = param

    def detail(self) -> str:
        """The message followed by the runner's last log lines, when there are any."""
        if not self.log_tail:
            return self.message
        return self.message + "\nlast log lines:\n" + "\n".join(self.log_tail)


class BadRequest(HostError):
    status, code, type = 400, "invalid_request", "invalid_request_error"


class Unauthorized(HostError):
    status, code, type = 401, "invalid_api_key", "authentication_error"


class ModelNotFound(HostError):
    status, code, type = 404, "model_not_found", "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found", param="model")
        self.model = model


class PayloadTooLarge(HostError):
    status, code, type = 413, "payload_too_large", "invalid_request_error"


class RunnerStartError(HostError):
    """A runner failed to start or to become healthy."""

    status, code, type = 503, "model_load_failed", "server_error"


class ModelTooLarge(HostError):
    """The model cannot fit the memory budget even with every other model unloaded."""

    status, code, type = 503, "model_too_large", "server_error"


class ModelUnavailable(HostError):
    """The model is known but nothing that serves it can be reached now (e.g. every peer serving it is down)."""

    status, code, type = 503, "model_unavailable", "server_error"


class QueueTimeout(HostError):
    status, code, type = 503, "queue_timeout", "server_error"


class QueueFull(HostError):
    status, code, type = 503, "queue_full", "server_error"


class RunnerCrashed(HostError):
    """The runner went away while serving the request."""

    status, code, type = 502, "runner_crashed", "server_error"


class ConfigError(Exception):
    """The site file is wrong; ``problems`` lists every problem as ``path: message``."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))


class PluginError(Exception):
    """A plugin failed to import, register or start; the message names the plugin."""


class UpstreamError(HostError):
    """The runner answered with an error (an ``error`` event mid-stream, or an error body)."""

    status, code, type = 500, "upstream_error", "server_error"

    def __init__(self, payload: object, status: int | None = None) -> None:
        err = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        super().__init__(message)
        self.payload = payload
        code = err.get("code") if isinstance(err, dict) else None
        self.status = status or (code if isinstance(code, int) and 400 <= code < 600 else 500)
        if 400 <= self.status < 500:  # the request was at fault (e.g. a prompt longer than the context)
            self.type, self.code = "invalid_request_error", "invalid_request"
