"""The SDK protocol's routes on the LM Studio port: the greeting and one WebSocket per namespace.

Both are exempt from the host's API-key guard: the greeting tells only that this is an LM Studio server (the Python
SDK probes it before anything else), and a socket checks the key itself (:class:`.sdk_ws.Session`), where the SDKs
can send one. The namespaces the SDKs know but this server does not serve (files, repository, plugins, ...) accept
the socket and answer each call with the protocol's error.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, WebSocket, get, websocket

from llama_host.host import HostDep

from . import sdk_llm, sdk_models
from .sdk_ws import Context, Namespace, Session
from .state import LMSDep

_MODEL_RPC = {
    "listLoaded": sdk_models.list_loaded,
    "getModelInfo": sdk_models.get_model_info,
    "getLoadConfig": sdk_models.get_load_config,
    "unloadModel": sdk_models.unload_model,
    "tokenize": sdk_llm.tokenize,
    "countTokens": sdk_llm.count_tokens,
}
_MODEL_CHANNELS = {"getOrLoad": sdk_models.get_or_load, "loadModel": sdk_models.load_model}

NAMESPACES: dict[str, Namespace] = {
    "llm": Namespace(rpc={**_MODEL_RPC, "applyPromptTemplate": sdk_llm.apply_prompt_template},
                     channels={**_MODEL_CHANNELS, "predict": sdk_llm.predict}),
    "embedding": Namespace(rpc={**_MODEL_RPC, "embedString": sdk_llm.embed_string}, channels=_MODEL_CHANNELS),
    "system": Namespace(rpc={"listDownloadedModels": sdk_models.list_downloaded_models,
                             "version": sdk_models.version, "notify": sdk_models.notify,
                             "getExperimentFlags": sdk_models.experiment_flags},
                        channels={"alive": sdk_models.alive}),
    **{name: Namespace() for name in ("diagnostics", "files", "repository", "plugins", "retrieval", "runtime")},
}


class LMStudioSDKController(Controller):
    path = "/"
    tags = ["lmstudio"]

    @get("/lmstudio-greeting", opt={"public": True}, sync_to_thread=False, include_in_schema=False)
    def greeting(self) -> dict[str, Any]:
        return {"lmstudio": True}

    @websocket([f"/{name}" for name in NAMESPACES], opt={"public": True})
    async def sdk_socket(self, socket: WebSocket[Any, Any, Any], host: HostDep, lms: LMSDep) -> None:
        name = socket.scope["path"].rstrip("/").rsplit("/", 1)[-1]
        await socket.accept()
        session = Session(socket, Context(host, lms, name), NAMESPACES[name], host.site.api_keys)
        await session.serve()
