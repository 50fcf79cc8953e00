"""One model request, from the lease to the end-of-request record: the core primitive every surface uses.

A surface writes an :class:`Exchange` — its translation only: the client's request as a runner request
(:meth:`Exchange.body`), the runner's events as dialect bytes (:meth:`Exchange.event`, :meth:`Exchange.end`), a reply
in one piece (:meth:`Exchange.reply`) and an error in its dialect (:meth:`Exchange.error`) — and hands it to
:func:`run`. The primitive owns everything else, the same way for every dialect:

- metering (``request_started`` now, ``request_finished`` once at the end, with queue wait, time to first byte,
  usage, timings and the stop reason read from the runner's events);
- the lease: the model is acquired (started on demand, load parameters applied where the runtime takes them) and
  released as soon as the runner is done — before the client sees the last bytes;
- opening the upstream (``Relay.open``) and the status check (an error status → ``UpstreamError`` with that status,
  raised before anything is sent, so the surface's exception handlers shape it);
- one SSE parser (:class:`SSEParser`): ``data:`` events until ``[DONE]``, comments skipped, ``error`` events in
  either form raised, a final event without its newline kept;
- error classification: a host error → its status; a malformed runner event → 502 and an error in the dialect;
  the client gone → 499 only when the reply was incomplete; anything else → 500, logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response
from litestar.response import Stream

from llama_host.errors import HostError, UpstreamError
from llama_host.fastpath import Reply
from llama_host.proxy import SSE_HEADERS, RequestMeter, Upstream

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.scheduler import Lease

log = logging.getLogger(__name__)

#: seconds between two loading-progress sends while a model loads
LOADING_EVERY = 1.0
_decode_any = msgspec.json.Decoder().decode
_validate = msgspec.json.Decoder(msgspec.Raw).decode
_encode = msgspec.json.Encoder().encode
#: what makes an event need a closer look: an error, and (when metering) usage, timings or a stop reason
_ERROR = (b'"error"',)
_METERED = (*_ERROR, b'"usage"', b'"timings"', b'"finish_reason":"', b'"finish_reason": "')


class _Choice(msgspec.Struct):
    finish_reason: Any = None


class _Metered(msgspec.Struct):
    """What metering reads of a whole reply: msgspec passes over every other field (the text, the embedding vectors)
    without building it."""

    usage: Any = None
    timings: Any = None
    choices: list[_Choice] | None = None


_decode_metered = msgspec.json.Decoder(_Metered).decode


def _observe_reply(meter: RequestMeter, data: bytes) -> None:
    """Give ``meter`` the usage, timings and stop reason of a JSON reply: msgspec reads those fields and passes over
    every other (the text, the embedding vectors) without building it. Measured (msgspec 0.23): an embeddings reply of
    8 × 768 floats (125 KB) 189 → 78 µs, a short chat reply 1.5 → 1.0 µs."""
    try:
        m = _decode_metered(data)
    except msgspec.ValidationError:  # JSON of another shape: read it whole
        meter.observe(_decode_any(data))
        return
    if isinstance(m.usage, dict):
        meter.usage = m.usage
    if isinstance(m.timings, dict):
        meter.timings = m.timings
    for choice in m.choices or ():
        if choice.finish_reason:
            meter.stop_reason = choice.finish_reason


class BadUpstreamEvent(HostError):
    """The runner sent an event that is not JSON: the reply cannot go on."""

    status, code, type = 502, "bad_upstream_event", "server_error"


class InternalError(HostError):
    """Anything unexpected while serving a request (logged once, with its traceback)."""

    status, code, type = 500, "internal_error", "server_error"


class SSEParser:
    """Server-sent events from a runner, fed one network read at a time.

    :meth:`events` returns the decoded ``data:`` payloads completed by a read (``decode`` chooses the type: a
    surface may decode into msgspec Structs); :meth:`passthrough` returns the completed lines unchanged, each
    ``data:`` payload checked to be JSON (a relay forwards them as they are). Both stop at ``[DONE]`` (``done``).
    An ``error`` event (``data: {"error": ...}`` or an old ``error: ...`` line) or a payload that is not JSON sets
    ``error`` (an ``UpstreamError`` / ``BadUpstreamEvent``) after the events before it: the caller sends those,
    then raises it. :meth:`close` parses a last event that came without its newline. ``observe`` sees the
    generic decoding of the few events that carry ``usage``, ``timings`` or a finish reason (metering).
    """

    __slots__ = ("_buf", "_decode", "_observe", "done", "error")

    def __init__(self, decode: Callable[[bytes], Any] | None = None,
                 observe: Callable[[Any], None] | None = None) -> None:
        self._buf = b""
        self._decode = decode or _decode_any
        self._observe = observe
        self.done = False
        self.error: HostError | None = None

    def _payload(self, line: bytes) -> bytes | None:
        """The JSON payload of a ``data:`` line (``None``: nothing to hand over); sets ``done`` / ``error``."""
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if not payload:
                return None
            if payload == b"[DONE]":
                self.done = True
                return None
            if b'"error"' in payload or (self._observe is not None and (
                    b'"usage"' in payload or b'"timings"' in payload or b'"finish_reason":"' in payload
                    or b'"finish_reason": "' in payload)):
                try:
                    obj = _decode_any(payload)
                except msgspec.DecodeError as exc:
                    self.error = BadUpstreamEvent(f"the runner sent an event that is not JSON ({exc})")
                    return None
                if isinstance(obj, dict) and "error" in obj:
                    self.error = UpstreamError(obj)
                    return None
                if self._observe is not None:
                    self._observe(obj)
            return payload
        if line.startswith(b"error:"):
            try:
                self.error = UpstreamError(_decode_any(line[6:].strip() or b'"upstream error"'))
            except msgspec.DecodeError:
                self.error = UpstreamError(line[6:].strip().decode("utf-8", "replace"))
        return None

    def _complete(self, chunk: bytes) -> bytes:
        """The completed lines of the buffer (up to its last newline); the rest waits for the next read."""
        buf = self._buf + chunk if self._buf else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf
            return b""
        self._buf = buf[cut + 1:]
        return buf[:cut + 1]

    def _plain(self, complete: bytes) -> int:
        """The length of the longest run of whole events at the start of ``complete`` that need no closer look: only
        ``data: {...}`` lines, one per event (llama-server's framing: the tokens), no error and nothing to meter
        before it. Most reads are plain throughout; a read that also holds the final event (usage, timings, the stop
        reason) is plain up to it. A raw newline never occurs inside JSON, so ``\\n\\ndata: `` only separates events."""
        limit = len(complete)
        for marker in _METERED if self._observe is not None else _ERROR:
            at = complete.find(marker, 0, limit)
            if at >= 0:
                limit = at
        end = complete.rfind(b"\n\n", 0, limit) + 2
        if end < 2 or not complete.startswith(b"data: {"):
            return 0
        n = complete.count(b"\n\n", 0, end)
        if complete.count(b"\n", 0, end) != 2 * n or complete.count(b"\n\ndata: {", 0, end) != n - 1:
            return 0  # another framing (several lines per event, comments, CRLF): event by event
        return end

    @staticmethod
    def _array(plain: bytes) -> bytes:
        """A plain run of events as one JSON array, so that one msgspec call checks (or decodes) them all."""
        return b"[" + plain[6:-2].replace(b"\n\ndata: ", b",") + b"]"

    def events(self, chunk: bytes) -> list[Any]:
        complete = self._complete(chunk) if not self.done else b""
        if not complete:
            return []
        end = self._plain(complete)
        decode = self._decode
        out: list[Any] = []
        if end:
            if decode is _decode_any:
                try:
                    out = _decode_any(self._array(complete[:end]))
                except msgspec.DecodeError:
                    end = 0  # one of them is not JSON: find which, one by one
            else:
                for block in complete[:end - 2].split(b"\n\n"):
                    try:
                        out.append(decode(block[6:]))
                    except msgspec.DecodeError as exc:
                        self.error = BadUpstreamEvent(f"the runner sent an event that is not JSON ({exc})")
                        return out
            if end == len(complete):
                return out
        for block in complete[end:].split(b"\n\n"):
            if not block:
                continue
            for line in block.split(b"\n"):
                payload = self._payload(line)
                if payload is not None:
                    try:
                        out.append(decode(payload))
                    except msgspec.DecodeError as exc:
                        self.error = BadUpstreamEvent(f"the runner sent an event that is not JSON ({exc})")
                if self.done or self.error is not None:
                    return out
        return out

    def passthrough(self, chunk: bytes) -> bytes:
        complete = self._complete(chunk) if not self.done else b""
        if not complete:
            return b""
        end = self._plain(complete)
        if end:
            try:
                _validate(self._array(complete[:end]))
            except msgspec.DecodeError:
                end = 0  # one of them is not JSON: find which, one by one
            if end == len(complete):
                return complete
        offset = end
        for block in complete[end:].split(b"\n\n"):
            if block:
                for line in block.split(b"\n"):
                    if line and line[0] in b"de":  # data: and error: lines; comments pass as they are
                        payload = self._payload(line)
                        if payload is not None:
                            try:
                                _validate(payload)
                            except msgspec.DecodeError as exc:
                                self.error = BadUpstreamEvent(f"the runner sent an event that is not JSON ({exc})")
                        if self.error is not None:
                            return complete[:offset]
                        if self.done:
                            return complete[:offset + len(block)].rstrip(b"\n") + b"\n\n"
            offset += len(block) + 2
        return complete

    def close(self) -> list[Any]:
        """The last event of a body that ended without a newline (kept, as the runner sent it)."""
        rest, self._buf = self._buf, b""
        if self.done or self.error is not None or not rest.strip():
            return []
        return self.events(rest + b"\n")

    def close_passthrough(self) -> bytes:
        """The last event of a body that ended without a newline, ended as an event (a blank line): SSE clients
        drop an event cut off at the end of the stream."""
        rest, self._buf = self._buf, b""
        if self.done or self.error is not None or not rest.strip():
            return b""
        out = self.passthrough(rest + b"\n")
        return out + b"\n" if out and not rest.endswith(b"\n") else out


class Exchange:
    """A surface's side of one model request: its translation. Subclass it and override what differs.

    Set in ``__init__`` (or as class attributes): ``surface``, ``endpoint``, ``model`` (the resolved model's
    name), ``stream`` (the client gets a stream), ``ttl`` and ``load_params`` (for the scheduler), ``path`` and
    ``method`` of the runner request, ``media_type`` of the reply. ``raw = True`` relays the runner's bytes
    unchanged (each event still checked and metered; :meth:`event` is not called); ``check_status = False`` passes
    the runner's error statuses through as they are (a raw passthrough). ``decode`` decodes runner events (e.g. a
    msgspec ``Decoder(MyChunk).decode``; default: Python objects).
    """

    surface: str = ""
    endpoint: str = ""
    model: str = ""
    stream: bool = False
    ttl: float | None = None
    load_params: Mapping[str, Any] | None = None
    method: str = "POST"
    path: str = "/v1/chat/completions"
    media_type: str = "application/json"
    headers: Mapping[str, str] = SSE_HEADERS
    raw: bool = False
    check_status: bool = True
    decode: Callable[[bytes], Any] | None = None

    # --- request → runner request -------------------------------------------------------------------------------

    def body(self) -> Any:
        """The runner request's body: ``bytes`` are sent as they are, anything else as JSON; ``None``: no body."""
        return None

    async def send(self, host: Host, lease: Lease) -> Upstream:
        """Open the runner request (override for a body that is not JSON, e.g. a streamed upload)."""
        body = self.body()
        if body is None or isinstance(body, bytes):
            return await host.relay.open(lease, self.method, self.path, body=body,
                                         headers={"Content-Type": "application/json"})
        return await host.relay.open(lease, self.method, self.path, json=body)

    def upstream_error(self, status: int, payload: Any) -> HostError:
        """The error for a runner's error status (override to say more, e.g. a model not served for embeddings)."""
        return UpstreamError(payload, status)

    # --- runner → dialect ---------------------------------------------------------------------------------------

    def opening(self) -> bytes:
        """Bytes a stream starts with before the model is acquired (``b""``: acquire first, so that start
        failures are HTTP errors; else they come in the stream, through :meth:`error`)."""
        return b""

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        """While the model loads for a stream (``loading_progress`` on; see :func:`run`): bytes sent about once a
        second, in a form the dialect's clients accept and ignore where they do not show it. ``seconds``: time
        waited so far; ``last_load``: how long the model's last load took (``None``: never loaded)."""
        return b""

    def begin(self, lease: Lease) -> bytes:
        """Called once the runner answered; returns the first bytes of a stream (``lease.queue_wait`` is the time
        the request waited for the model)."""
        return b""

    def event(self, event: Any) -> bytes:
        """One runner event → the bytes to send now (``b""``: nothing yet)."""
        return b""

    def events(self, events: list[Any]) -> bytes:
        """The runner events that one network read completed → the bytes to send now (one write downstream).
        Default: :meth:`event` for each; override to share work between them (e.g. one timestamp per read)."""
        event = self.event
        return b"".join([event(e) for e in events])

    def end(self) -> bytes:
        """After the runner's last event: the closing bytes (a final chunk, ``[DONE]``, a folded result)."""
        return b""

    def reply(self, reply: Any, up: Upstream) -> bytes | Response[Any]:
        """The runner's reply in one piece (decoded JSON; raw: its bytes) → the client's reply."""
        return reply if isinstance(reply, bytes) else _encode(reply)

    def error(self, exc: HostError) -> bytes:
        """An error after the reply began, in the dialect (the stream ends after it)."""
        return b""


class ModelCall:
    """One request's run through the lifecycle (see the module docstring); made by :func:`run`."""

    __slots__ = ("host", "ex", "meter", "lease", "up", "status", "head")

    def __init__(self, host: Host, ex: Exchange) -> None:
        self.host, self.ex = host, ex
        self.meter = RequestMeter(host, ex.surface, ex.endpoint, ex.model, ex.stream)
        self.lease: Lease | None = None
        self.up: Upstream | None = None
        self.status = 200
        self.head = b""  # what Exchange.begin returned: a stream's first bytes

    async def open(self) -> Upstream:
        """Acquire the model, open the runner request and check its status; a failure ends the call (recorded)
        and raises."""
        ex, meter = self.ex, self.meter
        try:
            self.lease = lease = await self.host.scheduler.acquire(ex.model, ttl=ex.ttl, load_params=ex.load_params)
            meter.queue_wait = lease.queue_wait
            self.up = up = await ex.send(self.host, lease)
            self.status = up.status
            if up.status >= 400 and ex.check_status:
                raw = await up.read()
                try:
                    payload: Any = _decode_any(raw)
                except msgspec.DecodeError:
                    payload = {"message": raw.decode("utf-8", "replace")[:500] or f"runner answered {up.status}"}
                raise ex.upstream_error(up.status, payload)
            self.head = ex.begin(lease)
            return up
        except BaseException as exc:
            err = self.fail(exc)
            if err is None or err is exc:
                raise
            raise err from None

    def end(self, status: int, error: str | None = None) -> None:
        """Close the runner's response (an early close stops generation), release the model, record the request.
        Idempotent: error paths and ``finally`` blocks may both call it."""
        if self.up is not None:
            self.up.close()
        if self.lease is not None:
            self.lease.release()
        self.meter.finish(status, error)

    def classify(self, exc: BaseException) -> HostError:
        if isinstance(exc, HostError):
            return exc
        if isinstance(exc, msgspec.DecodeError):
            return BadUpstreamEvent(f"the runner sent a reply that is not JSON ({exc})")
        return InternalError(f"internal error: {type(exc).__name__}: {exc}")

    def fail(self, exc: BaseException, complete: bool = False) -> HostError | None:
        """Record the end of a failed call: a host error → its status; the client gone → 499 unless the reply was
        complete; anything else → 500, logged here (once). Returns the error to show the client (``None``: the
        client is gone)."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)):
            if complete:
                self.end(self.status)
            else:
                self.end(499, "client disconnected")
            return None
        err = self.classify(exc)
        if not isinstance(exc, HostError) and not isinstance(exc, msgspec.DecodeError):
            log.error("model %s, %s %s: %s", self.ex.model, self.ex.surface, self.ex.endpoint, err.message,
                      exc_info=exc)
        self.end(err.status, err.message)
        return err

    async def whole(self) -> Response[Any]:
        """A reply in one piece (the runner's, or a runner stream folded by the exchange)."""
        ex, up = self.ex, self.up
        assert up is not None
        try:
            if up.is_sse and not ex.raw:
                parser = SSEParser(ex.decode, self.meter.observe)
                parts = []
                async for chunk in up.iter_chunks():
                    parts.append(ex.events(parser.events(chunk)))
                    if parser.error is not None:
                        raise parser.error
                    if parser.done:
                        break
                parts.append(ex.events(parser.close()))
                if parser.error is not None:
                    raise parser.error
                self.meter.first_token()
                self.end(200)
                body: bytes | Response[Any] = b"".join(parts) + ex.end()
            else:
                data = await up.read()
                self.meter.first_token()
                if ex.raw:
                    if up.content_type == "application/json" and up.status < 400:
                        try:
                            _observe_reply(self.meter, data)
                        except msgspec.DecodeError:
                            pass
                    self.end(up.status, None if up.status < 400 else data[:300].decode("utf-8", "replace"))
                    body = ex.reply(data, up)
                    if isinstance(body, bytes):
                        return Reply(body, up.status, up.headers.get("Content-Type") or ex.media_type)
                    return body
                reply = _decode_any(data)
                self.meter.observe(reply)
                body = ex.reply(reply, up)
                self.end(200)
        except BaseException as exc:
            err = self.fail(exc)
            if err is None or err is exc:
                raise
            raise err from None
        if isinstance(body, Response):
            return body
        return Reply(body, 200, ex.media_type)

    async def events(self, opening: bytes = b"", progress: bool = False) -> AsyncIterator[bytes]:
        """The reply as a stream: the exchange's bytes as the runner's events arrive (raw: the runner's bytes;
        ``progress``: with the exchange's loading bytes while the model loads)."""
        ex, meter = self.ex, self.meter
        complete = False
        opened: asyncio.Future[Upstream] | None = None
        try:
            if opening or progress:
                if opening:
                    yield opening
                try:
                    if progress:  # open (acquire, start the model) while sending the loading bytes
                        entry = self.host.scheduler.entries.get(ex.model)
                        last = entry.load_seconds if entry is not None else None
                        opened = asyncio.ensure_future(self.open())
                        started = time.monotonic()
                        while not opened.done():
                            out = ex.loading(time.monotonic() - started, last)
                            if out:
                                yield out
                            await asyncio.wait({opened}, timeout=LOADING_EVERY)
                        opened.result()
                    else:
                        await self.open()
                except HostError as exc:
                    yield ex.error(exc)
                    return
            up = self.up
            assert up is not None
            if self.head:
                yield self.head
            chunks = up.iter_chunks()
            if ex.raw and not up.is_sse:  # not events: the bytes as they come
                async for chunk in chunks:
                    if meter.ttft is None:
                        meter.first_token()
                    yield chunk
                self.end(self.status)
                complete = True
                return
            parser = SSEParser(ex.decode, meter.observe)
            translate = None if ex.raw else ex.events
            out = b""
            async for chunk in chunks:
                if translate is None:
                    out = parser.passthrough(chunk)
                else:
                    out = translate(parser.events(chunk))
                if out and meter.ttft is None:
                    meter.first_token()
                if parser.error is not None:
                    if out:
                        yield out
                    raise parser.error
                if parser.done:
                    await chunks.aclose()  # stop reading here: no finalizer task for the rest of the body
                    up.finished()  # its connection reads the body's end by itself and goes back to the pool
                    break
                if out:
                    yield out
                    out = b""
            else:  # the body ended without [DONE]: its last event may lack its newline
                if translate is None:
                    out = parser.close_passthrough()
                else:
                    out = translate(parser.close())
                if out and meter.ttft is None:
                    meter.first_token()
                if parser.error is not None:
                    if out:
                        yield out
                    raise parser.error
            self.end(self.status)  # the runner is done: free the model and record the request before the client
            complete = True        # sees the end; from here a client that goes away had the whole reply
            yield out if translate is None else out + ex.end()
        except BaseException as exc:
            err = self.fail(exc, complete)
            if err is None:
                raise
            yield ex.error(err)
        finally:
            if opened is not None and not opened.done():  # the client went away while the model loaded: the
                opened.cancel()  # cancelled open() ends the call itself (a lease it got is released)
            elif not complete:
                self.fail(asyncio.CancelledError())  # a generator closed before it began (never iterated)


def _progress_wanted(host: Host, ex: Exchange) -> bool:
    """Loading progress for this stream: the exchange has a loading form, the model is not loaded yet and its
    ``loading_progress`` (else the site's) is on. Then start failures come in the stream (as errors of the dialect)."""
    if type(ex).loading is Exchange.loading:
        return False
    entry = host.scheduler.entries.get(ex.model)
    if entry is None or entry.state == "loaded":
        return False
    wanted = entry.spec.loading_progress
    return host.site.loading_progress if wanted is None else wanted


async def run(host: Host, ex: Exchange) -> Response[Any]:
    """Serve one model request through the lifecycle (see the module docstring) with ``ex``'s translation.

    Errors before the reply begins are raised as ``HostError`` (the surface's exception handlers give them its
    shape); after it began, they end the stream with :meth:`Exchange.error`.
    """
    call = ModelCall(host, ex)
    if ex.stream:
        opening = ex.opening()
        progress = _progress_wanted(host, ex)
        if opening or progress:
            return Stream(call.events(opening, progress), status_code=200, headers=ex.headers,
                          media_type=ex.media_type)
    up = await call.open()
    if ex.stream and (up.is_sse or ex.raw):
        media = ex.media_type if not ex.raw else (up.headers.get("Content-Type") or ex.media_type)
        return Stream(call.events(), status_code=up.status if ex.raw else 200, headers=ex.headers,
                      media_type=media)
    return await call.whole()
