"""``/v1/responses``: OpenAI's Responses API on the core's request primitive (the translation is
:mod:`.responses`). ``GET`` and ``DELETE /v1/responses/{id}`` read and drop stored responses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath

from llama_host import Host, HostDep
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError
from llama_host.progress import loading_text
from llama_host.request import Exchange, run

from . import responses as rs

if TYPE_CHECKING:
    from llama_host.proxy import Upstream
    from llama_host.scheduler import Lease

NAME = "openai_api"
_encode = msgspec.json.Encoder().encode
_COUNTS = {"max_output_tokens": 1, "top_logprobs": 0, "max_tool_calls": 0}


class ResponseNotFound(HostError):
    status, code, type = 404, "previous_response_not_found", "invalid_request_error"


class Responses(Exchange):
    """One Responses request: a chat completion on the runner; its chunks become Responses events."""

    surface = NAME
    endpoint = "responses"
    path = "/v1/chat/completions"
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(self, req: dict[str, Any], model: str, store: rs.ResponseStore, *, stream: bool) -> None:
        self.model, self.stream, self._req, self._store = model, stream, req, store
        self.media_type = "text/event-stream" if stream else "application/json"
        self._echo = str(req.get("model") or model)
        history: list[dict[str, Any]] = []
        prev = req.get("previous_response_id")
        if prev is not None:
            stored = store.get(prev) if isinstance(prev, str) else None
            if stored is None:
                raise ResponseNotFound(f"Previous response with id '{prev}' not found.",
                                       param="previous_response_id")
            history = stored.messages
        try:
            self._conversation = rs.conversation_of(req, history)
            self._body = rs.chat_request(req, model, self._conversation, stream=stream)
        except rs.RequestError as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        self._stream = rs.ResponseStream(req, self._echo)
        self.event = self._stream.feed  # type: ignore[method-assign]  # per token: no extra call layer

    def body(self) -> dict[str, Any]:
        return self._body

    def _keep(self, response: dict[str, Any]) -> None:
        if self._req.get("store", True) is not False and response.get("status") in ("completed", "incomplete"):
            self._store.put(response, [*self._conversation, *rs.assistant_messages(response["output"])])

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        """``response.created`` (status ``queued``) once, then ``response.queued`` while the model loads: OpenAI's
        own events for a response that waits; the text is in ``metadata.loading``."""
        return self._stream.queued({"loading": loading_text(self.model, seconds, last_load)})

    def begin(self, lease: Lease) -> bytes:
        return self._stream.start()

    def end(self) -> bytes:
        out = self._stream.finish()
        self._keep(self._stream.response or {})
        return out

    def reply(self, reply: Any, up: Upstream) -> bytes:
        response = rs.response_from_chat(self._req, reply if isinstance(reply, dict) else {},
                                         response_id=self._stream.id, model=self._echo)
        self._keep(response)
        return _encode(response)

    def error(self, exc: HostError) -> bytes:
        return self._stream.fail(exc.detail(), exc.code)


class ResponsesController(Controller):
    """Routes of the Responses API; the host's store is bound by ``register_surfaces`` (``store``)."""

    path = "/"
    tags = ["openai"]
    store: rs.ResponseStore

    @post("/v1/responses")
    async def create(self, request: Request, host: HostDep) -> Response:
        req = decode_json(await request.body(), minimums=_COUNTS)
        if not isinstance(req, dict):
            raise BadRequest("the request body must be a JSON object")
        requested = req.get("model") or host.site.default_model
        if not requested or not isinstance(requested, str):
            raise BadRequest("you must provide a model parameter", param="model")
        if req.get("background"):
            raise BadRequest("background responses are not supported", param="background")
        spec = host.scheduler.get(requested, NAME)
        return await run(host, Responses(req, spec.name, self.store, stream=req.get("stream") is True))

    @get("/v1/responses/{response_id:str}", sync_to_thread=False)
    def retrieve(self, response_id: FromPath[str]) -> Response:
        stored = self.store.get(response_id)
        if stored is None:
            raise ResponseNotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return Response(content=_encode(stored.response), media_type="application/json")

    @delete("/v1/responses/{response_id:str}", status_code=200, sync_to_thread=False)
    def remove(self, response_id: FromPath[str]) -> Response:
        if not self.store.delete(response_id):
            raise ResponseNotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return Response(content=_encode({"id": response_id, "object": "response.deleted", "deleted": True}),
                        media_type="application/json")


def controller(host: Host, max_body_bytes: int, entries: int, max_bytes: int) -> type[ResponsesController]:
    """A controller class bound to a fresh store (one per host)."""
    return type("ResponsesController", (ResponsesController,),
                {"request_max_body_size": max_body_bytes, "store": rs.ResponseStore(entries, max_bytes)})
