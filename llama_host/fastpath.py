"""A lean path for a surface's hottest routes: ``POST`` to an exact path, served straight from ASGI.

Litestar's routing, signature parsing, dependency injection and response machinery cost about a fifth of the host's
CPU per relayed request (bench/README.md, "Hot path"). A surface names such routes in ``Surface.fast_routes``
(path → :class:`FastRoute`); :class:`FastPath` sits in front of the app's own handler and serves them with the same
guarantees, in the same order, as the Litestar route they shadow:

- the browser check (:func:`llama_host.security.browser_guard`: allowed hosts and origins, CORS headers);
- the API key, unless the surface is public (``Surface.requires_auth``);
- the body limit (413 on ``Content-Length`` or on the bytes received);
- errors raised before the reply begins shaped by the surface's ``exception_handlers``, as Litestar would.

The handler gets the host and the body bytes and returns what a Litestar handler returns (the request primitive's
``Response``/``Stream``): validation, the model request and metering are the handler's and the primitive's, unchanged.
Every other method and path, and the OpenAPI document (the Litestar route stays registered), go to Litestar.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Request, Response
from litestar.response import Stream
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ASGIApp, ExceptionHandlersMap, HTTPResponseStartEvent, Receive, Send

if TYPE_CHECKING:
    from llama_host.host import ApiKeys, Host

FastHandler = Callable[["Host", bytes], Awaitable[Response[Any]]]
Route = tuple[ASGIApp, ExceptionHandlersMap]  # a route's guarded handler and its surface's exception handlers
_STARTED = "llama_host.started"  # scope key: the reply began (an error can no longer be sent as a reply)


class Reply(Response[bytes]):
    """Litestar's ``Response`` for a reply already in bytes, made without the generic work of its constructor (two
    ``typing.Mapping`` instance checks and three new containers: ~3 µs of a relayed request). It is a ``Response``
    in every way Litestar and :class:`FastPath` use one; ``tests/test_fastpath.py`` checks that it sets every slot
    Litestar's constructor sets."""

    __slots__ = ()

    def __init__(self, content: bytes, status_code: int, media_type: str) -> None:  # no super().__init__: its work
        self.content = content
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.cookies = []
        self.encoding = "utf-8"
        self.headers = {}
        self.response_type_encoders = {}


@dataclass(frozen=True)
class FastRoute:
    """``POST path`` served by ``handler(host, body)``; bodies over ``max_body_bytes`` get 413."""

    handler: FastHandler
    max_body_bytes: int


def api_key_accepted(headers: Any, encoded: list[bytes]) -> bool:
    """``Authorization: Bearer <key>`` or ``x-api-key: <key>`` among ``encoded`` (ASGI header pairs; constant time)."""
    auth = key = b""
    for name, value in headers:
        if name == b"authorization":
            auth = value
        elif name == b"x-api-key":
            key = value
    token = auth[7:].strip() if auth[:7].lower() == b"bearer " else key
    return any(hmac.compare_digest(token, k) for k in encoded)


def whole_body(receive: Receive, limit: int) -> bytes | None:
    """The request body if the server has all of it already (``FastCycle.whole_body``), without a coroutine;
    RequestEntityTooLarge past ``limit``; ``None``: read it with :func:`read_body`."""
    whole = getattr(getattr(receive, "__self__", None), "whole_body", None)
    body: bytes | None = whole() if whole is not None else None
    if body is not None and len(body) > limit:
        raise RequestEntityTooLarge
    return body


async def read_body(scope: Any, receive: Receive, limit: int) -> bytes:
    """The request body through ``receive`` (when :func:`whole_body` had none), or RequestEntityTooLarge past
    ``limit`` (announced or received)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    raise RequestEntityTooLarge
            except ValueError:
                pass
            break
    parts = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestEntityTooLarge
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise HTTPException(status_code=500, detail="client disconnected prematurely")
    return parts[0] if len(parts) == 1 else b"".join(parts)


@functools.lru_cache(maxsize=64)  # once per reply, of a few media types
def _with_charset(media_type: str) -> bytes:
    if media_type.startswith("text/") and "charset" not in media_type:
        media_type += "; charset=utf-8"
    return media_type.encode("latin-1")


def _head(response: Response[Any], status: int, length: int | None) -> HTTPResponseStartEvent:
    headers = [(b"content-type", _with_charset(str(response.media_type)))]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items())
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _stream(response: Stream, iterator: AsyncIterator[str | bytes], scope: Any, receive: Receive,
                  send: Send) -> None:
    """A stream's chunks as they come; the client going away cancels it (the request primitive then records 499 and
    closes the runner's response). Litestar's streaming response does the same with an anyio task group (two tasks,
    cancel scopes, events per stream); here one small watcher task cancels this one: less memory per open stream."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    await send(_head(response, response.status_code or 200, None))
    watcher = asyncio.ensure_future(watch())
    try:
        async for chunk in iterator:
            await send({"type": "http.response.body", "body": chunk if isinstance(chunk, bytes) else chunk.encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        watcher.cancel()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class FastPath:
    """The ASGI handler of one app with its fast routes in front (see the module docstring)."""

    __slots__ = ("_app", "_host", "_keys", "_routes", "routes")

    def __init__(self, app: ASGIApp, host: Host, routes: Mapping[str, tuple[FastRoute, ExceptionHandlersMap, bool]],
                 guard: Callable[[ASGIApp], ASGIApp], keys: ApiKeys | None) -> None:
        self._app, self._host, self._keys = app, host, keys
        self._routes: dict[str, Route] = {path: (guard(self._inner(route, public)), handlers)
                                          for path, (route, handlers, public) in routes.items()}
        #: The fast routes by raw path, for a server that serves them itself (``llama_host.serve``): pass an entry to
        #: :meth:`serve` with a scope as Litestar would hold it.
        self.routes: dict[bytes, Route] = {path.encode("ascii"): entry for path, entry in self._routes.items()}

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            entry = self._routes.get(scope["path"])
            if entry is not None:
                await self.serve(entry, scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def serve(self, entry: Route, scope: Any, receive: Receive, send: Send) -> None:
        """``POST`` to the route of ``entry``: every check, the handler, errors shaped by the surface."""
        guarded, handlers = entry
        try:
            await guarded(scope, receive, send)
        except Exception as exc:
            if scope.get(_STARTED):
                raise
            await self._error(scope, receive, send, handlers, exc)

    def _inner(self, route: FastRoute, public: bool) -> ASGIApp:
        host, keys, handler, limit = self._host, self._keys, route.handler, route.max_body_bytes

        async def serve(scope: Any, receive: Receive, send: Send) -> None:
            if keys is not None and not public and keys.encoded and not api_key_accepted(scope["headers"],
                                                                                          keys.encoded):
                raise NotAuthorizedException("invalid or missing API key (send 'Authorization: Bearer <key>')")
            body = whole_body(receive, limit)
            response = await handler(host, body if body is not None else await read_body(scope, receive, limit))
            scope[_STARTED] = True
            content, status = response.content, response.status_code
            kind = type(response)
            if ((kind is Reply or kind is Response) and isinstance(content, bytes) and status is not None
                    and status >= 200 and status not in (204, 304) and not response.cookies
                    and response.background is None):
                # the server's own send, which nothing wraps (a browser's Origin adds CORS headers): one call
                whole = getattr(getattr(send, "__self__", None), "send_whole", None)
                if whole is not None and not response.headers:
                    await whole(status, _with_charset(str(response.media_type)), content)
                    return
                await send(_head(response, status, len(content)))
                await send({"type": "http.response.body", "body": content, "more_body": False})
                return
            if (type(response) is Stream and isinstance(response.iterator, AsyncIterator) and not response.cookies
                    and response.background is None):
                await _stream(response, response.iterator, scope, receive, send)
                return
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            await response.to_asgi_response(app=None, request=request)(scope, receive, send)

        return serve

    async def _error(self, scope: Any, receive: Receive, send: Send, handlers: ExceptionHandlersMap,
                     exc: Exception) -> None:
        """``exc`` as the surface's exception handlers shape it (Litestar's lookup: status code, then class)."""
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        for cls in type(exc).__mro__:
            if handler is not None:
                break
            handler = handlers.get(cls)
        if handler is None:
            raise exc
        response = handler(request, exc)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)
