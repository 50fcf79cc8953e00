"""llama.cpp's own endpoints (``/completion``, ``/infill``, ``/tokenize``, ``/detokenize``, ``/apply-template``,
``/embedding``, ``/embeddings``, ``/rerank``, ``/reranking``), routed by the body's ``model`` (else the site's
``default_model``) and relayed unchanged to the same path on that model's runner — streams included
(``/completion`` with ``"stream": true``). The runner's own errors come back as it sent them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, Response, post

from llama_host import Host, HostDep
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest
from llama_host.request import Exchange
from llama_host.variants import for_embeddings

#: path → endpoint name in metrics
NATIVE_PATHS = {"/completion": "native_completion", "/completions": "native_completion", "/infill": "infill",
                "/tokenize": "tokenize", "/detokenize": "detokenize", "/apply-template": "apply_template",
                "/embedding": "native_embedding", "/embeddings": "native_embedding", "/rerank": "rerank",
                "/reranking": "rerank"}
_COUNTS = {"n_predict": -1, "n_probs": 0, "top_k": 0}


async def native(request: Request, host: Host, path: str,
                 exchange: Callable[..., Exchange], run: Callable[..., Any]) -> Response:
    body = await request.body()
    obj = decode_json(body, minimums=_COUNTS)
    if not isinstance(obj, dict):
        raise BadRequest("the request body must be a JSON object")
    requested = obj.get("model") or host.site.default_model
    if not requested or not isinstance(requested, str):
        raise BadRequest("name a model: 'model' in the body (or set default_model in the site file)", param="model")
    spec = host.scheduler.get(requested, "openai_api")
    if path in ("/embedding", "/embeddings"):  # a chat model embeds through its embedding runner
        spec = for_embeddings(host.scheduler, spec)
    return await run(host, exchange(spec.name, NATIVE_PATHS[path], path, body, stream=obj.get("stream") is True,
                                    check_status=False))


def native_controller(exchange: Callable[..., Exchange], run: Callable[..., Any]) -> type[Controller]:
    """The routes, relaying through ``exchange`` (the surface's raw passthrough) and ``run`` (the primitive)."""

    class NativeController(Controller):
        path = "/"
        tags = ["llama.cpp"]

        @post(list(NATIVE_PATHS))
        async def relay(self, request: Request, host: HostDep) -> Response:
            return await native(request, host, request.url.path, exchange, run)

    return NativeController
