"""The streaming relay every surface uses: one shared aiohttp session with keep-alive pools per runner.

aiohttp rather than httpx on this path: reading with ``iter_any()`` forwards whatever SSE bytes are already buffered as
one downstream write, which measured ~1.0x direct throughput where httpx ``aiter_raw()`` gave 0.5-0.6x (bench/).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from litestar import Response
from litestar.response import Stream

from llama_host.errors import HostError, RunnerCrashed, UpstreamError
from llama_host.types import RequestFinished, RequestStarted

if TYPE_CHECKING:
    from litestar import Request

    from llama_host.host import Host
    from llama_host.scheduler import Lease

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_LEGACY_ERROR = re.compile(rb"(^|\n)error:\s*([^\n]*)")
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
TAIL = 16384


class Upstream:
    """One response from a runner. Closing it before the end drops the connection, which stops generation."""

    def __init__(self, response: aiohttp.ClientResponse, model: str) -> None:
        self._r = response
        self._model = model
        self.status = response.status
        self.headers = response.headers

    @property
    def content_type(self) -> str:
        return self._r.content_type

    @property
    def is_sse(self) -> bool:
        return self._r.content_type == "text/event-stream"

    def _crashed(self, exc: Exception) -> RunnerCrashed:
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

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._r.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self._crashed(exc) from None
        if self._r.content.exception() is not None:
            raise self._crashed(self._r.content.exception())

    async def iter_sse(self) -> AsyncIterator[dict[str, Any]]:
        """Parsed JSON of each ``data:`` event until ``[DONE]``; upstream error events raise UpstreamError."""
        buf = b""
        async for chunk in self.iter_chunks():
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    if not payload:
                        continue
                    obj = _decode(payload)
                    if isinstance(obj, dict) and "error" in obj:
                        raise UpstreamError(obj)
                    yield obj
                elif line.startswith(b"error:"):
                    raise UpstreamError(_decode(line[6:].strip() or b'"upstream error"'))

    def close(self) -> None:
        if self._r.content.at_eof():
            self._r.release()
        else:
            self._r.close()

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


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


def end_request(up: Upstream, lease: Lease, meter: RequestMeter, status: int, error: str | None = None) -> None:
    """The end of a relayed request: close the runner's response (an early close stops generation), release the
    model and record the request. Each step is idempotent, so error paths and ``finally`` blocks may both call it."""
    up.close()
    lease.release()
    meter.finish(status, error)


def observe_tail(meter: RequestMeter, tail: bytes) -> None:
    """Read the last ``data:`` events of a stream (llama-server puts ``timings``/``usage`` on the last chunks)."""
    for line in tail.split(b"\n"):
        if line.startswith(b"data: {") and (b'"timings"' in line or b'"usage"' in line or b'"finish_reason"' in line):
            try:
                meter.observe(_decode(line[6:]))
            except msgspec.DecodeError:
                continue  # the tail may begin mid-event


def _rewrite_legacy_errors(chunk: bytes) -> bytes:
    """Older llama-server sends ``error: {...}`` lines, which SDKs ignore: make them ``data: {"error": ...}``."""

    def fix(m: re.Match[bytes]) -> bytes:
        payload = m.group(2).strip()
        if not payload.startswith(b'{"error"'):
            payload = b'{"error": ' + (payload or b'"upstream error"') + b"}"
        return m.group(1) + b"data: " + payload

    return _LEGACY_ERROR.sub(fix, chunk)


def with_model(body: bytes, model: str) -> bytes:
    """A JSON object body with its ``model`` set to ``model``; any other body unchanged."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        return body
    return _encode({**obj, "model": model}) if isinstance(obj, dict) else body


def error_event(exc: HostError) -> bytes:
    body = {"error": {"message": exc.detail(), "type": exc.type, "param": None, "code": exc.code}}
    return b"data: " + _encode(body) + b"\n\n"


class Relay:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Relay:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False,
            skip_auto_headers=("User-Agent",))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay is not running (use it inside Host.running())")
        return self._session

    async def open(self, lease: Lease, method: str, path: str, *, json: Any = None, body: bytes | None = None,
                   headers: Mapping[str, str] | None = None, data: Any = None) -> Upstream:
        """Send a request to the lease's runner. Nothing has reached the client yet, so two failures are retried
        once: a pooled keep-alive connection that the runner closed (on a fresh connection), and a local runner that
        refuses connections because it just died (on a new runner, through ``scheduler.reacquire``)."""
        hdrs = dict(headers or {})
        upstream_model = getattr(lease.runner, "upstream_model", None)
        if json is not None:
            body = _encode({**json, "model": upstream_model} if upstream_model and isinstance(json, dict) else json)
            hdrs["Content-Type"] = "application/json"
        elif upstream_model and body:
            body = with_model(body, upstream_model)
        payload = body if body is not None else data
        open_upstream = getattr(lease.runner, "open_upstream", None)
        if open_upstream is not None:  # the runner picks its server itself (see types.Runner)
            return await open_upstream(self.session, method, path, data=payload, headers=hdrs)
        retryable = body is not None or payload is None
        for attempt in (0, 1):
            runner = lease.runner
            try:
                response = await self.session.request(method, runner.base_url + path, data=payload,
                                                       headers={**runner.headers, **hdrs})
                return Upstream(response, lease.model.name)
            except aiohttp.ClientConnectorError as exc:
                if attempt == 0 and retryable and runner.local:
                    await self.host.scheduler.reacquire(lease, f"refused a connection ({exc.os_error})")
                    continue
                raise RunnerCrashed(f"model '{lease.model.name}': runner unreachable ({exc})") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 0 and retryable:
                    continue
                raise RunnerCrashed(f"model '{lease.model.name}': runner unreachable ({exc})") from None
            except aiohttp.ClientError as exc:
                raise RunnerCrashed(f"model '{lease.model.name}': runner unreachable ({exc})") from None
        raise AssertionError("unreachable")

    async def passthrough(self, request: Request, *, surface: str, endpoint: str, path: str, body: bytes,
                          model_name: str, stream: bool = False, ttl: float | None = None) -> Response:
        """Relay an OpenAI-style request to the model's runner unchanged, streaming the reply as it comes."""
        meter = RequestMeter(self.host, surface, endpoint, model_name, stream)
        try:
            lease = await self.host.scheduler.acquire(model_name, ttl=ttl)
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        meter.queue_wait = lease.queue_wait
        try:
            up = await self.open(lease, "POST", path, body=body, headers={"Content-Type": "application/json"})
        except HostError as exc:
            lease.release()
            meter.finish(exc.status, exc.message)
            raise
        if not up.is_sse:
            try:
                data = await up.read()
            except HostError as exc:
                meter.finish(exc.status, exc.message)
                raise
            finally:
                up.close()
                lease.release()
            meter.first_token()
            if up.status == 200 and up.content_type == "application/json":
                try:
                    meter.observe(_decode(data))
                except msgspec.DecodeError:
                    pass
            meter.finish(up.status, None if up.status < 400 else data[:300].decode("utf-8", "replace"))
            return Response(content=data, status_code=up.status, media_type=up.headers.get("Content-Type"))
        return Stream(self._relay_stream(up, lease, meter), status_code=up.status, headers=SSE_HEADERS,
                      media_type="text/event-stream")

    async def _relay_stream(self, up: Upstream, lease: Lease, meter: RequestMeter) -> AsyncIterator[bytes]:
        tail = b""
        error: str | None = None
        status = up.status
        try:
            async for chunk in up.iter_chunks():
                if meter.ttft is None:
                    meter.first_token()
                if b"error:" in chunk:
                    chunk = _rewrite_legacy_errors(chunk)
                tail = (tail + chunk)[-TAIL:]
                yield chunk
        except HostError as exc:
            error, status = exc.message, exc.status
            yield error_event(exc)
        except BaseException:  # the client went away: closing the upstream below stops generation
            if not tail.rstrip().endswith(b"data: [DONE]"):  # SDKs close right after [DONE]: that reply was whole
                error, status = "client disconnected", 499
            raise
        finally:
            observe_tail(meter, tail)
            end_request(up, lease, meter, status, error)
