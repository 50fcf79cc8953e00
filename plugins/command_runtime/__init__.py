"""The ``command`` runtime: any OpenAI-compatible server started from ``cmd: [...]`` (vLLM, koboldcpp, ...).

``${PORT}``, ``${MODEL_PATH}`` and ``${MODEL_NAME}`` in ``cmd`` are replaced; readiness is ``health_path`` answering
200.
"""

from __future__ import annotations

from llama_host import Host, ModelSpec, hookimpl
from llama_host.errors import RunnerStartError
from llama_host.process import ProcessRunner


def build_argv(spec: ModelSpec, port: int) -> list[str]:
    values = {"${PORT}": str(port), "${MODEL_PATH}": spec.path or "", "${MODEL_NAME}": spec.name}
    out = []
    for arg in spec.cmd:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out + list(spec.args)


class CommandRunner(ProcessRunner):
    def __init__(self, spec: ModelSpec, host: Host) -> None:
        super().__init__(spec, lambda port: build_argv(spec, port), env=spec.env, health_path=spec.health_path,
                         log_dir=host.site.log_dir)

    async def start(self, timeout: float) -> None:
        if not self.model.cmd:
            raise RunnerStartError(f"model '{self.model.name}': runtime 'command' needs 'cmd: [program, args...]'")
        await super().start(timeout)


def check(spec: ModelSpec) -> list[str]:
    return [] if spec.cmd else ["cmd: runtime 'command' needs 'cmd: [program, args...]'"]


@hookimpl
def register_runtimes(register) -> None:
    register("command", CommandRunner, description="any OpenAI-compatible server started from cmd", check=check)
