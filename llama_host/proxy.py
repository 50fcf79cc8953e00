"""The connection to the runners: keep-alive pools per runner (``Relay.open``), the runner's response (``Upstream``)
and the request meter. The request lifecycle on top of them is :mod:`llama_host.request`.

Requests with a whole body to a plain-http runner go through the lean client (:mod:`llama_host.http1`); streamed
bodies (uploads), TLS and runners that pick their own server (peers) go through one shared aiohttp session.
aiohttp rather than httpx there: reading with ``iter_any()`` forwards whatever SSE bytes are already buffered as one
downstream write, which measured ~1.0x direct throughput where httpx ``aiter_raw()`` gave 0.5-0.6x (bench/); the lean
client reads the same way.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from llama_host import http1
from llama_host.errors import RunnerCrashed, UpstreamError
from llama_host.filters import apply_filters
from llama_host.types import ModelSpec, RequestFinished, RequestStarted, Runner

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.scheduler import Lease

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class Upstream:
    """One response from a runner (through aiohttp). Closing it before the end drops the connection, which stops
    generation."""

    def __init__(self, response: aiohttp.ClientResponse | http1.Response, model: str) -> None:
        self._r = response
        self._model = model
        self.status = response.status
        self.headers = response.headers
        raw = response.headers.get("Content-Type")
        #: The media type, lower case, without parameters (aiohttp's own parses the parameters into a dict that
        #: each response keeps: ~0.9 KB per open stream).
        self.content_type = raw.partition(";")[0].strip().lower() if raw else "application/octet-stream"
        self.is_sse = self.content_type == "text/event-stream"

    def _crashed(self, exc: BaseException | None) -> RunnerCrashed:
        return RunnerCrashed(f"model '{self._model}': the runner went away mid-response ({type(exc).__name__})")

    async def read(self) -> bytes:
        try:
            return await self._r.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self._crashed(exc) from None

    async def json(self) -> Any:
        body = await self.read()
        try:
            return _decode(body)
        except msgspec.DecodeError:
            raise UpstreamError({"message": body.decode("utf-8", "replace")[:500]}, self.status) from None

    async def raise_for_status(self) -> None:
        """An error status from the runner becomes UpstreamError (with that status), the response closed."""
        if self.status < 400:
            return
        try:
            raw = await self.read()
        finally:
            self.close()
        try:
            payload: Any = _decode(raw)
        except msgspec.DecodeError:
            payload = {"message": raw.decode("utf-8", "replace")[:500] or f"runner answered {self.status}"}
        raise UpstreamError(payload, self.status)

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        r = self._r
        assert isinstance(r, aiohttp.ClientResponse)
        try:
            async for chunk in r.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self._crashed(exc) from None
        if r.content.exception() is not None:
            raise self._crashed(r.content.exception())

    def close(self) -> None:
        r = self._r
        assert isinstance(r, aiohttp.ClientResponse)
        if r.content.at_eof():
            r.release()
        else:
            r.close()

    def finished(self) -> None:
        """The runner's answer is over for the host (a stream's ``[DONE]``) though its body may not have ended: close
        it. The lean client keeps the connection for the next request (:meth:`llama_host.http1.Response.done`)."""
        self.close()

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class LeanUpstream(Upstream):
    """One response from a runner through the lean client (:mod:`llama_host.http1`)."""

    _r: http1.Response

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._r.chunks():
                yield chunk
        except ConnectionError as exc:
            raise self._crashed(exc) from None

    def close(self) -> None:
        self._r.close()

    def finished(self) -> None:
        self._r.done()


class RequestMeter:
    """Collects one request's facts for the ``request_finished`` event, without buffering the response."""

    __slots__ = ("host", "surface", "endpoint", "model", "stream", "t0", "ttft", "queue_wait", "usage", "timings",
                 "stop_reason", "_done")

    def __init__(self, host: Host, surface: str, endpoint: str, model: str, stream: bool = False) -> None:
        self.host, self.surface, self.endpoint, self.model, self.stream = host, surface, endpoint, model, stream
        self.t0 = time.monotonic()
        self.ttft: float | None = None
        self.queue_wait = 0.0
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self._done = False
        host.emit(RequestStarted(surface=surface, model=model, endpoint=endpoint))

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.t0

    def observe(self, obj: Any) -> None:
        """Take ``usage``, ``timings`` and the finish reason from a runner reply or a final stream chunk."""
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if isinstance(obj.get("timings"), dict):
            self.timings = obj["timings"]
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.stop_reason = choice["finish_reason"]

    def finish(self, status: int, error: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        u, t = self.usage, self.timings
        self.host.emit(RequestFinished(
            surface=self.surface, model=self.model, endpoint=self.endpoint, status=status,
            duration=time.monotonic() - self.t0, stream=self.stream, queue_wait=self.queue_wait, ttft=self.ttft,
            prompt_tokens=u.get("prompt_tokens", t.get("prompt_n")),
            completion_tokens=u.get("completion_tokens", t.get("predicted_n")),
            tokens_per_second=t.get("predicted_per_second"), prompt_ms=t.get("prompt_ms"),
            predicted_ms=t.get("predicted_ms"), stop_reason=self.stop_reason, error=error))


def _model_defaults(spec: ModelSpec, path: str, json: Any, body: bytes | None) -> tuple[Any, bytes | None]:
    from llama_host.catalogue import with_model_defaults

    if json is None and body:
        try:
            json, body = _decode(body), None
        except msgspec.DecodeError:
            return None, body
    return (with_model_defaults(spec, path, json) if json is not None else None), body


def with_model(body: bytes, model: str) -> bytes:
    """A JSON object body with its ``model`` set to ``model``; any other body unchanged."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        return body
    return _encode({**obj, "model": model}) if isinstance(obj, dict) else body


class Relay:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._session: aiohttp.ClientSession | None = None
        self._pool = http1.Pool()

    async def __aenter__(self) -> Relay:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False,
            skip_auto_headers=("User-Agent",))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay is not running (use it inside Host.running())")
        return self._session

    async def _send(self, method: str, url: str, path: str, payload: Any, headers: Mapping[str, str],
                    model: str) -> Upstream:
        """One attempt through aiohttp, whose errors are told apart as the lean client's are
        (:mod:`llama_host.http1`)."""
        try:
            return Upstream(await self.session.request(method, url + path, data=payload, headers=headers), model)
        except aiohttp.ClientConnectorError as exc:
            raise http1.ConnectFailed(exc.os_error) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise http1.Disconnected(str(exc)) from None
        except aiohttp.ClientOSError as exc:
            raise http1.Reset(str(exc)) from None
        except aiohttp.ClientError as exc:
            raise http1.ProtocolError(str(exc)) from None

    async def _died(self, runner: Runner, within: float, maybe_read: bool) -> bool:
        """Whether ``runner`` has exited (waiting up to ``within`` seconds) in a way that shows it could not have
        read the request: by itself before it could, or killed from outside (SIGKILL) when it may have."""
        code = await self.host.scheduler.runner_exit_status(runner, within)
        return code is not None and (not maybe_read or code == -signal.SIGKILL)

    async def open(self, lease: Lease, method: str, path: str, *, json: Any = None, body: bytes | None = None,
                   headers: Mapping[str, str] | None = None, data: Any = None) -> Upstream:
        """Send a request to the lease's runner. Nothing has reached the client yet, so a request that got no answer
        is tried again, at most once for each of two causes:

        - a local runner that died before it could have read the request (on a new runner, through
          ``scheduler.reacquire``): it refuses connections, or it reset ours (the request lay unread when its sockets
          closed) and has exited, or it was killed from outside (SIGKILL). A runner killed just before the request
          does one of these for a moment before it is reported gone.
        - a pooled keep-alive connection the runner had closed (again, on a fresh connection).

        A runner that closed the connection after the request went out and then ended by itself (an abort, a
        segfault) may have been crashed by this very request: it is not sent to a new runner, its error is the
        answer (the next request gets a new runner). A body that is a stream (``data``) is never sent twice."""
        hdrs: Mapping[str, str] = headers or {}
        if (lease.model.system or lease.model.defaults) and method == "POST":  # a variant (create/copy)
            json, body = _model_defaults(lease.model, path, json, body)
        if lease.model.filters is not None and method == "POST":  # models.<name>.filters
            json, body = apply_filters(lease.model.filters, json, body)
        upstream_model = lease.runner.upstream_model
        if json is not None:
            body = _encode({**json, "model": upstream_model} if upstream_model and isinstance(json, dict) else json)
            hdrs = {**hdrs, "Content-Type": "application/json"}
        elif upstream_model and body:
            body = with_model(body, upstream_model)
        payload = body if body is not None else data
        open_upstream = lease.runner.open_upstream
        if open_upstream is not None:  # the runner picks its server itself (see types.Runner)
            return await open_upstream(self.session, method, path, data=payload, headers=hdrs)
        retryable = body is not None or payload is None
        # through the lean client where it can (a whole body, plain http), else through aiohttp
        lean = (payload is None or isinstance(payload, bytes)) and method != "HEAD"
        scheduler = self.host.scheduler
        fresh_connection = new_runner = retryable
        maybe_read = False  # the runner may have read the request before it went away
        while True:
            runner = lease.runner
            url = runner.base_url
            sent = {**runner.headers, **hdrs} if runner.headers else hdrs
            try:
                if lean and http1.supports(url):
                    return LeanUpstream(await self._pool.request(
                        method, url, path, payload, sent, fresh=retryable and not fresh_connection,
                        limit=getattr(runner, "max_connections", None)), lease.model.name)
                return await self._send(method, url, path, payload, sent, lease.model.name)
            except http1.ConnectFailed as exc:  # nothing listens: the runner is gone
                if new_runner and runner.local and (not maybe_read or await self._died(runner, 1.0, maybe_read)):
                    new_runner = False
                    await scheduler.reacquire(lease, f"refused a connection ({exc.os_error})")
                    continue
                error: Exception = exc
            except http1.Disconnected as exc:  # closed once the request was out
                maybe_read = True
                if new_runner and runner.local and await self._died(runner, 0, maybe_read):
                    new_runner = False
                    await scheduler.reacquire(lease, "was killed (SIGKILL)")
                    continue
                if fresh_connection:
                    fresh_connection = False
                    continue
                error = exc
            except http1.Reset as exc:  # reset: the request lay unread
                if new_runner and runner.local and await self._died(runner, 0 if fresh_connection else 1.0, maybe_read):
                    new_runner = False
                    await scheduler.reacquire(lease, f"exited (connection reset: {exc})")
                    continue
                if fresh_connection:
                    fresh_connection = False
                    continue
                error = exc
            except http1.ProtocolError as exc:
                error = exc
            raise RunnerCrashed(f"model '{lease.model.name}': runner unreachable ({error})") from None
