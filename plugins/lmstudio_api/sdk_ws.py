"""LM Studio's SDK protocol (the ``lmstudio`` Python and ``@lmstudio/sdk`` JavaScript clients): framing and dispatch.

A client probes ``GET /lmstudio-greeting`` and opens one WebSocket per namespace (``ws://host:port/llm``,
``/embedding``, ``/system``, ...). Its first text frame authenticates::

    → {"authVersion": 1, "clientIdentifier": "...", "clientPasskey": "..."}
    ← {"success": true}                      or {"success": false, "error": "..."} and a close (1008)

(the Python SDK 1.5 wants that refusal's ``error`` as a serialized error object, see ``Session._refuse_auth``).

Then every frame is a JSON object whose ``type`` says what it is; one socket multiplexes:

- RPC: ``rpcCall {endpoint, callId, parameter}`` → ``rpcResult {callId, result}`` (no ``result`` for a void call)
  or ``rpcError {callId, error}``;
- channels: ``channelCreate {endpoint, channelId, creationParameter}``, then ``channelSend {channelId, message}``
  both ways (the client sends ``{"type": "cancel"}``), ended by ``channelClose {channelId}`` or
  ``channelError {channelId, error}``; a client ``channelSend`` with ``ackId`` gets ``channelAck {channelId, ackId}``;
- signals: no endpoint of this server is a signal, so ``signalSubscribe`` / ``writableSignalSubscribe`` get
  ``signalError`` / ``writableSignalError``;
- ``keepAlive`` → ``keepAliveAck``; a frame the server cannot read → ``communicationWarning {warning}`` (or the
  call's or channel's own error when the frame names one).

``error`` is LM Studio's serialized error: ``{title, cause?, suggestion?, errorData?, displayData?, rootTitle?}``;
the SDKs raise it (Python: ``LMStudioServerError``, ``LMStudioModelNotFoundError`` for ``displayData.code =
generic.noModelMatchingQuery``). Each call and channel runs in its own task; a client that goes away cancels them, and
a cancelled prediction closes its runner connection (which stops generation there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from llama_host import Host
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError

from .state import SurfaceState

log = logging.getLogger(__name__)
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode

#: seconds a new socket may take to send its authentication frame
AUTH_TIMEOUT = 30.0
#: calls and channels one socket may have open at once; more are refused with the call's or channel's error
MAX_OPEN = 64
#: close codes: policy violation (authentication), going away (the host stops)
CLOSE_POLICY, CLOSE_GOING_AWAY = 1008, 1001


class ProtocolError(Exception):
    """An error for the client, in LM Studio's serialized shape."""

    def __init__(self, title: str, *, cause: str | None = None, suggestion: str | None = None,
                 display: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
        super().__init__(title)
        self.title, self.cause, self.suggestion, self.display, self.data = title, cause, suggestion, display, data

    def serialized(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "rootTitle": self.title}
        for key, value in (("cause", self.cause), ("suggestion", self.suggestion), ("displayData", self.display),
                           ("errorData", self.data)):
            if value is not None:
                out[key] = value
        return out


def serialize_error(exc: BaseException, where: str) -> dict[str, Any]:
    """The serialized error for ``exc`` (``where`` names the endpoint, for the log of unexpected failures)."""
    if isinstance(exc, ProtocolError):
        return exc.serialized()
    if isinstance(exc, HostError):  # a runner's last log lines are the error's cause
        return ProtocolError(exc.message, cause="last log lines:\n" + "\n".join(exc.log_tail) if exc.log_tail else None,
                             data={"code": exc.code, "status": exc.status}).serialized()
    log.error("lmstudio sdk: %s failed", where, exc_info=exc)
    return ProtocolError(f"internal error in {where}: {type(exc).__name__}").serialized()


def convert(value: Any, kind: type[T], what: str) -> T:
    """A client's parameter as its typed view; a wrong shape is the call's error."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid parameter for {what}: {exc}") from None


@dataclass
class Context:
    """What an endpoint handler works with: the host, this surface's state, the socket's namespace."""

    host: Host
    lms: SurfaceState
    namespace: str


class Channel:
    """One open channel as its handler sees it: ``send`` a message, watch ``cancelled`` (the client's cancel)."""

    def __init__(self, session: Session, channel_id: int) -> None:
        self._session = session
        self.id = channel_id
        self.cancelled = asyncio.Event()

    async def send(self, message: Any) -> None:
        await self._session.send({"type": "channelSend", "channelId": self.id, "message": message})

    def received(self, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in ("cancel", "stop"):
            self.cancelled.set()

    async def unless_cancelled(self, work: Coroutine[Any, Any, T], cancelled_title: str) -> T:
        """Await ``work``; the client's cancel stops it and raises ProtocolError(``cancelled_title``)."""
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise ProtocolError(cancelled_title)
        return task.result()


RpcHandler = Callable[[Context, Any], Awaitable[Any]]
ChannelHandler = Callable[[Context, Channel, Any], Awaitable[None]]


@dataclass(frozen=True)
class Namespace:
    """The endpoints one namespace serves: RPCs return their result (``None`` = void); channels send and return."""

    rpc: Mapping[str, RpcHandler] = field(default_factory=dict)
    channels: Mapping[str, ChannelHandler] = field(default_factory=dict)


# --- frames from the client -------------------------------------------------------------------------------------

class _Frame(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class RpcCall(_Frame, tag="rpcCall"):
    endpoint: str
    callId: int
    parameter: Any = None


class ChannelCreate(_Frame, tag="channelCreate"):
    endpoint: str
    channelId: int
    creationParameter: Any = None


class ChannelSend(_Frame, tag="channelSend"):
    channelId: int
    message: Any = None
    ackId: int | None = None


class ChannelAck(_Frame, tag="channelAck"):
    channelId: int
    ackId: int


class SignalSubscribe(_Frame, tag="signalSubscribe"):
    endpoint: str
    subscribeId: int
    creationParameter: Any = None


class SignalUnsubscribe(_Frame, tag="signalUnsubscribe"):
    subscribeId: int


class WritableSignalSubscribe(_Frame, tag="writableSignalSubscribe"):
    endpoint: str
    subscribeId: int
    creationParameter: Any = None


class WritableSignalUnsubscribe(_Frame, tag="writableSignalUnsubscribe"):
    subscribeId: int


class WritableSignalUpdate(_Frame, tag="writableSignalUpdate"):
    subscribeId: int
    patches: list[Any] = []
    tags: list[str] = []


class KeepAlive(_Frame, tag="keepAlive"):
    pass


class CommunicationWarning(_Frame, tag="communicationWarning"):
    warning: str = ""


ClientFrame = (RpcCall | ChannelCreate | ChannelSend | ChannelAck | SignalSubscribe | SignalUnsubscribe
               | WritableSignalSubscribe | WritableSignalUnsubscribe | WritableSignalUpdate | KeepAlive
               | CommunicationWarning)


class AuthPacket(msgspec.Struct, kw_only=True):
    authVersion: int
    clientIdentifier: str
    clientPasskey: str


# --- API keys ---------------------------------------------------------------------------------------------------

def header_keys(headers: Mapping[str, str]) -> list[str]:
    """Keys the upgrade request carries: ``Authorization: Bearer``, ``x-api-key``, or HTTP Basic (either half) —
    the Python SDK sends Basic when its host is given as ``KEY@host:port``."""
    found = []
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            found += [part for part in (user, password) if part]
    if headers.get("x-api-key"):
        found.append(headers["x-api-key"])
    return found


def auth_keys(auth: AuthPacket) -> list[str]:
    """Keys an authentication frame carries: the passkey, or the pair as LM Studio's API tokens write it
    (``sk-lm-<identifier>:<passkey>``, or ``<identifier>:<passkey>``)."""
    pair = f"{auth.clientIdentifier}:{auth.clientPasskey}"
    return [auth.clientPasskey, pair, f"sk-lm-{pair}"]


def key_accepted(offered: Iterable[str], keys: Iterable[str]) -> bool:
    encoded = [k.encode() for k in keys]
    return any(hmac.compare_digest(o.encode(), k) for o in offered for k in encoded)


# --- one socket -------------------------------------------------------------------------------------------------

class Session:
    """One client socket on one namespace: authentication, then frames until the client or the host goes away."""

    def __init__(self, socket: WebSocket[Any, Any, Any], ctx: Context, namespace: Namespace,
                 api_keys: list[str]) -> None:
        self.socket, self.ctx, self.namespace, self.api_keys = socket, ctx, namespace, api_keys
        self.channels: dict[int, Channel] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._send_lock = asyncio.Lock()
        self._last_channel_id = -1

    async def send(self, message: Any) -> None:
        if self.closed:
            return
        data = _encode(message).decode()
        async with self._send_lock:
            try:
                await self.socket.send_text(data)
            except (WebSocketDisconnect, OSError, RuntimeError):
                self.closed = True

    async def close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await self.socket.close(code, reason)

    async def serve(self) -> None:
        stopper = asyncio.create_task(self._close_when_host_stops())
        try:
            if not await self._authenticate():
                return
            while not self.closed:
                event = await self.socket.receive()
                if event["type"] != "websocket.receive":
                    break
                text = event.get("text")
                if text is None:
                    await self.warn("binary frames are not part of the protocol; send JSON text frames")
                    continue
                await self.dispatch(text)
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            stopper.cancel()
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()  # a prediction's task closes its runner connection as it ends
            await asyncio.gather(stopper, *tasks, return_exceptions=True)

    async def _close_when_host_stops(self) -> None:
        await self.ctx.host.stopping.wait()
        await self.close(CLOSE_GOING_AWAY, "the server is stopping")

    async def _authenticate(self) -> bool:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                event = await self.socket.receive()
        except TimeoutError:
            await self._refuse_auth("no authentication frame was sent")
            return False
        if event["type"] != "websocket.receive":
            return False
        try:
            auth = decode_json((event.get("text") or "").encode(), AuthPacket)
        except BadRequest as exc:
            await self._refuse_auth(f"the first frame must be the authentication packet: {exc.message}")
            return False
        offered = [*header_keys(self.socket.headers), *auth_keys(auth)]
        if self.api_keys and not key_accepted(offered, self.api_keys):
            await self._refuse_auth("invalid or missing API key (pass it as the client passkey, e.g. "
                                    "LMStudioClient({clientPasskey: KEY}), or as HTTP credentials)")
            return False
        await self.send({"success": True})
        return True

    async def _refuse_auth(self, why: str) -> None:
        # The JavaScript SDK reads the refusal's error as a string (the protocol's schema); the Python SDK (1.5)
        # reads it as a serialized error object and fails on a string. Its requests say which client it is.
        python_sdk = self.socket.headers.get("user-agent", "").startswith("python-httpx/")
        await self.send({"success": False, "error": ProtocolError(why).serialized() if python_sdk else why})
        await self.close(CLOSE_POLICY, "authentication failed")

    async def warn(self, warning: str) -> None:
        await self.send({"type": "communicationWarning", "warning": warning})

    # --- frames ---------------------------------------------------------------------------------------------

    async def dispatch(self, text: str) -> None:
        try:
            raw = decode_json(text.encode())
        except BadRequest as exc:
            await self.warn(f"unreadable frame: {exc.message}")
            return
        try:
            frame = msgspec.convert(raw, ClientFrame)
        except msgspec.ValidationError as exc:
            await self._bad_frame(raw, str(exc))
            return
        match frame:
            case RpcCall():
                await self._start_rpc(frame)
            case ChannelCreate():
                await self._start_channel(frame)
            case ChannelSend():
                await self._channel_send(frame)
            case SignalSubscribe():
                await self.send({"type": "signalError", "subscribeId": frame.subscribeId,
                                 "error": ProtocolError(f"No signal endpoint with name {frame.endpoint}").serialized()})
            case WritableSignalSubscribe():
                await self.send({"type": "writableSignalError", "subscribeId": frame.subscribeId,
                                 "error": ProtocolError(
                                     f"No writable signal endpoint with name {frame.endpoint}").serialized()})
            case KeepAlive():
                await self.send({"type": "keepAliveAck"})
            case CommunicationWarning():
                log.info("lmstudio sdk client (/%s) warns: %s", self.ctx.namespace, frame.warning[:500])
            case _:  # acks and unsubscribes: nothing is subscribed and nothing waits for acks
                pass

    async def _bad_frame(self, raw: Any, why: str) -> None:
        """A frame of the wrong shape: the call's or channel's error when it names one, else a warning."""
        kind = raw.get("type") if isinstance(raw, dict) else None
        call_id = raw.get("callId") if kind == "rpcCall" else None
        channel_id = raw.get("channelId") if kind == "channelCreate" else None
        if isinstance(call_id, int) and not isinstance(call_id, bool):
            await self.send({"type": "rpcError", "callId": call_id,
                             "error": ProtocolError(f"invalid rpcCall: {why}").serialized()})
        elif isinstance(channel_id, int) and not isinstance(channel_id, bool):
            await self.send({"type": "channelError", "channelId": channel_id,
                             "error": ProtocolError(f"invalid channelCreate: {why}").serialized()})
        else:
            await self.warn(f"invalid {kind or 'frame'}: {why}")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start_rpc(self, frame: RpcCall) -> None:
        handler = self.namespace.rpc.get(frame.endpoint)
        error = None
        if handler is None:
            error = ProtocolError(f"No Rpc endpoint with name {frame.endpoint}",
                                  cause=f"namespace '{self.ctx.namespace}' of this server has no such endpoint")
        elif len(self.tasks) >= MAX_OPEN:
            error = ProtocolError(f"too many calls and channels open on this socket (at most {MAX_OPEN})")
        if error is not None:
            await self.send({"type": "rpcError", "callId": frame.callId, "error": error.serialized()})
            return
        self._spawn(self._run_rpc(handler, frame))

    async def _run_rpc(self, handler: RpcHandler, frame: RpcCall) -> None:
        try:
            result = await handler(self.ctx, frame.parameter)
        except Exception as exc:  # noqa: BLE001 - every failure is the caller's rpcError
            await self.send({"type": "rpcError", "callId": frame.callId,
                             "error": serialize_error(exc, f"/{self.ctx.namespace} {frame.endpoint}")})
            return
        reply: dict[str, Any] = {"type": "rpcResult", "callId": frame.callId}
        if result is not None:
            reply["result"] = result
        await self.send(reply)

    async def _start_channel(self, frame: ChannelCreate) -> None:
        handler = self.namespace.channels.get(frame.endpoint)
        error = None
        if handler is None:
            error = ProtocolError(f"No channel endpoint with name {frame.endpoint}",
                                  cause=f"namespace '{self.ctx.namespace}' of this server has no such endpoint")
        elif frame.channelId in self.channels:
            error = ProtocolError(f"channel {frame.channelId} is already open")
        elif len(self.tasks) >= MAX_OPEN:
            error = ProtocolError(f"too many calls and channels open on this socket (at most {MAX_OPEN})")
        if error is not None:
            await self.send({"type": "channelError", "channelId": frame.channelId, "error": error.serialized()})
            return
        channel = Channel(self, frame.channelId)
        self.channels[frame.channelId] = channel
        self._last_channel_id = max(self._last_channel_id, frame.channelId)
        self._spawn(self._run_channel(handler, channel, frame))

    async def _run_channel(self, handler: ChannelHandler, channel: Channel, frame: ChannelCreate) -> None:
        try:
            await handler(self.ctx, channel, frame.creationParameter)
        except Exception as exc:  # noqa: BLE001 - every failure is the channel's channelError
            await self.send({"type": "channelError", "channelId": channel.id,
                             "error": serialize_error(exc, f"/{self.ctx.namespace} {frame.endpoint}")})
        else:
            await self.send({"type": "channelClose", "channelId": channel.id})
        finally:
            self.channels.pop(channel.id, None)

    async def _channel_send(self, frame: ChannelSend) -> None:
        channel = self.channels.get(frame.channelId)
        if channel is None:
            if frame.channelId > self._last_channel_id:  # a late cancel of a finished channel is normal
                await self.warn(f"channelSend for unknown channel {frame.channelId}")
            return
        if frame.ackId is not None:
            await self.send({"type": "channelAck", "channelId": frame.channelId, "ackId": frame.ackId})
        channel.received(frame.message)
