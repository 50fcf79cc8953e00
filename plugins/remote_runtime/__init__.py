"""The ``remote`` runtime: a model served by an existing OpenAI-compatible server at ``url`` (another llama-host,
llama-server, Ollama, vLLM on another machine). No process; health checked; counts against no local budget."""

from __future__ import annotations


import aiohttp

from llama_host import Host, ModelSpec, hookimpl
from llama_host.errors import RunnerStartError
from llama_host.process import LogBuffer
from llama_host.types import RunnerBase

DEFAULT_HEALTH = "/health"
#: Tried when the default ``/health`` is not answered with 200: another llama-host serves its health here.
LLAMA_HOST_HEALTH = "/api/v1/health"


class RemoteRunner(RunnerBase):
    local = False
    pid = None

    def __init__(self, spec: ModelSpec, host: Host) -> None:
        self.model = spec
        url = (spec.url or "").rstrip("/")
        self.base_url = url.removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        #: read by the relay: the name the remote server knows this model by
        self.upstream_model = spec.upstream_model
        self.logs = LogBuffer(200)

    def health_paths(self) -> list[str]:
        """The configured path; the default one falls back to llama-host's own health path."""
        path = self.model.health_path
        return [path, LLAMA_HOST_HEALTH] if path == DEFAULT_HEALTH else [path]

    async def start(self, timeout: float) -> None:
        if not self.base_url:
            raise RunnerStartError(f"model '{self.model.name}': runtime 'remote' needs 'url'")
        ok = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            for path in self.health_paths():
                url = self.base_url + path
                try:
                    async with s.get(url, headers=self.headers) as r:
                        await r.read()
                        ok = r.status == 200
                        self.logs.append(f"health check {url}: HTTP {r.status}")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self.logs.append(f"health check {url}: {exc!r}")
                    break  # unreachable: another path of the same server will not answer either
                if ok:
                    break
        if not ok:
            raise RunnerStartError(f"model '{self.model.name}': remote server {self.base_url} is not healthy",
                                   log_tail=self.logs.tail())
        self.stopped.clear()



def check(spec: ModelSpec) -> list[str]:
    url = (spec.url or "").strip()
    if not url:
        return ["url: runtime 'remote' needs the base URL of an OpenAI-compatible server"]
    if not url.startswith(("http://", "https://")):
        return [f"url: {url!r} is not an http:// or https:// URL"]
    return []


@hookimpl
def register_runtimes(register) -> None:
    register("remote", RemoteRunner, description="an OpenAI-compatible server elsewhere, at url", check=check,
             local=False)
