"""Browser protection for every listener: the ``Host`` check (DNS rebinding), the ``Origin`` check (requests sent by
web pages on other sites) and CORS for the origins that are allowed.

Why: a page the user visits can send requests to ``127.0.0.1`` (a ``text/plain`` POST needs no preflight) and, by
rebinding its own DNS name to ``127.0.0.1``, read the answers. Browsers always say who asks: ``Origin`` on every
cross-origin request and every POST, and ``Host`` is the name the page used. Clients that are not browsers (CLI tools,
SDKs) send no ``Origin`` and pass.

One pure ASGI middleware, installed on every app by ``Host.build_apps``; it runs before the handler and its guards, and
what it raises is rendered by the route's own exception handlers, so a refusal comes in the surface's dialect. The
decision for one ``Host`` / ``Origin`` value is memoised: a request pays for one pass over its header list and a
dict lookup (``bench/bench_security.py``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llama_host.errors import HostError

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Send

#: Origins of local applications (not web pages), allowed by default as Ollama does.
APP_SCHEMES = ("app", "tauri", "vscode-webview", "vscode-file")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MEMO_SIZE = 512
#: Request headers a preflight may ask for when it names none (the browser always names them; this is a fallback).
CORS_DEFAULT_HEADERS = b"authorization, content-type, x-api-key, anthropic-version, openai-organization, openai-project"
_TOKEN_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~, -]*$")
_CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


class OriginNotAllowed(HostError):
    """A browser request from a page whose origin is not allowed (``allowed_origins``)."""

    status, code, type = 403, "origin_not_allowed", "permission_error"


class HostNotAllowed(HostError):
    """A request naming a host this listener does not serve (DNS rebinding; ``allowed_hosts``)."""

    status, code, type = 421, "host_not_allowed", "invalid_request_error"


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``"[::1]:8000"`` → ``("::1", 8000)``, ``"Example.COM"`` → ``("example.com", None)``; malformed → None."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text = value.partition(":")
        if not colon:
            port_text = None
        elif ":" in port_text:
            return None  # a bare IPv6 address must be bracketed
    if not name or any(c in name for c in "/\\@ \t?#"):
        return None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        port = int(port_text)
    return name.lower().rstrip("."), port


def split_origin(origin: str) -> tuple[str, str, int | None] | None:
    """``"http://localhost:3000"`` → ``("http", "localhost", 3000)``; ``"null"`` or malformed → None."""
    scheme, sep, rest = origin.partition("://")
    if not sep or not scheme or "/" in rest:
        return None
    authority = split_authority(rest)
    if authority is None:
        return None
    name, port = authority
    scheme = scheme.lower()
    return scheme, name, port if port is not None else _DEFAULT_PORTS.get(scheme)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761), ``127.0.0.0/8`` and ``::1``."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


def is_local_name(name: str) -> bool:
    """A loopback name, or ``0.0.0.0`` / ``::`` (clients told ``OLLAMA_HOST=0.0.0.0`` connect to that)."""
    return name in ("0.0.0.0", "::") or is_loopback_name(name)


def _patterns(values: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex for patterns where ``*`` stands for any text; None when there are none."""
    parts = [".*".join(re.escape(p) for p in value.strip().lower().split("*")) for value in values if value.strip()]
    return re.compile("^(?:" + "|".join(f"(?:{p})" for p in parts) + ")$") if parts else None


class BrowserPolicy:
    """Which ``Host`` and ``Origin`` values a listener serves. Pure decisions, memoised per header value."""

    def __init__(self, bind: str, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()) -> None:
        bind_ip = _ip(bind.strip("[]"))
        self.loopback_only = is_loopback_name(bind.strip("[]").lower()) or (bind_ip is not None and bind_ip.is_loopback)
        self.allowed_hosts: re.Pattern[str] | None = None
        self.allowed_origins: re.Pattern[str] | None = None
        self.update(allowed_hosts, allowed_origins)
        self.own_names: set[str] = set()
        if not self.loopback_only:
            # Reached over the network: by an address (rebinding always needs a DNS name) or by the machine's name.
            name = socket.gethostname().lower()
            self.own_names = {name, name + ".local", name.split(".")[0]}

    def update(self, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        """New ``allowed_hosts`` / ``allowed_origins`` (a reload): the memoised decisions are dropped."""
        self.allowed_hosts = _patterns(h.strip().strip("[]").rstrip(".") for h in allowed_hosts)
        self.allowed_origins = _patterns(allowed_origins)
        self._hosts: dict[bytes, bool] = {}
        self._origins: dict[tuple[bytes | None, bytes], bool] = {}

    # --- Host ---

    def host_allowed(self, value: bytes) -> bool:
        known = self._hosts.get(value)
        if known is None:
            known = self._decide_host(value.decode("latin-1"))
            if len(self._hosts) >= _MEMO_SIZE:
                self._hosts.clear()
            self._hosts[value] = known
        return known

    def _decide_host(self, value: str) -> bool:
        authority = split_authority(value.strip())
        if authority is None:
            return False
        name = authority[0]
        if is_local_name(name) or (self.allowed_hosts is not None and self.allowed_hosts.match(name)):
            return True
        if self.loopback_only:
            return False
        return _ip(name) is not None or name in self.own_names

    # --- Origin ---

    def origin_allowed(self, origin: bytes, host: bytes | None) -> bool:
        key = (host, origin)
        known = self._origins.get(key)
        if known is None:
            known = self._decide_origin(origin.decode("latin-1").strip(), host.decode("latin-1") if host else None)
            if len(self._origins) >= _MEMO_SIZE:
                self._origins.clear()
            self._origins[key] = known
        return known

    def _decide_origin(self, origin: str, host: str | None) -> bool:
        if self.allowed_origins is not None and self.allowed_origins.match(origin.lower()):
            return True
        parts = split_origin(origin)
        if parts is None:
            return False  # "null" (sandboxed frames, file: pages) and anything malformed
        scheme, name, port = parts
        if scheme in APP_SCHEMES:
            return True
        if scheme in ("http", "https") and is_local_name(name):
            return True
        if host is None:
            return False
        own = split_authority(host.strip())
        # The listener's own origin: the page was loaded from the very name and port the request is sent to.
        return own is not None and own[0] == name and (
            own[1] if own[1] is not None else _DEFAULT_PORTS.get(scheme)) == port


def _header(scope: Mapping[str, Iterable[tuple[bytes, bytes]]], wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


def browser_guard(policy: BrowserPolicy) -> Callable[[ASGIApp], ASGIApp]:
    """The ASGI middleware factory (Litestar calls it as ``middleware(app=...)``) enforcing ``policy``."""

    def middleware(app: ASGIApp) -> ASGIApp:
        # A plain function that returns the awaitable to run (the app's own call): one coroutine less on every
        # request than awaiting it here. A refusal raises before anything is awaited, in the caller's ``await``.
        # scope is not typed as Litestar's Scope: servers send its "type" as a plain str, not Litestar's ScopeType enum
        def guarded(scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
            if scope["type"] != "http" and scope["type"] != "websocket":
                return app(scope, receive, send)
            host = origin = fetch_site = None
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value if host is None else b"\x00"  # two Host headers: refused as malformed
                elif name == b"origin":
                    origin = value if origin is None else b"\x00"
                elif name == b"sec-fetch-site":
                    fetch_site = value
            if host is not None and not policy.host_allowed(host):
                raise HostNotAllowed(f"host '{host.decode('latin-1')[:100]!s}' is not served here (it is not a "
                                     f"loopback name; add it to 'allowed_hosts' in the site file to serve it)")
            if origin is None:
                # A cross-site subresource (<img>, <script>) carries no Origin, but modern browsers say cross-site.
                if fetch_site == b"cross-site" and _header(scope, b"sec-fetch-mode") != b"navigate":
                    raise OriginNotAllowed("cross-site request refused (no Origin, Sec-Fetch-Site: cross-site)")
                return app(scope, receive, send)
            if not policy.origin_allowed(origin, host):
                raise OriginNotAllowed(f"origin '{origin.decode('latin-1')[:200]}' is not allowed (add it to "
                                       f"'allowed_origins' in the site file to allow it)")
            if scope["type"] == "websocket":
                return app(scope, receive, send)
            if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
                return _preflight(scope, send, origin)
            extra = [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", b"*"),
                     (b"vary", b"Origin")]

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            return app(scope, receive, send_with_cors)

        return guarded

    return middleware


async def _preflight(scope: Mapping[str, Any], send: Send, origin: bytes) -> None:
    requested = _header(scope, b"access-control-request-headers")
    # Echo what the browser asks for (SDKs send x-stainless-*, anthropic-version, ...): the origin is allowed anyway.
    allow_headers = requested if requested is not None and _TOKEN_LIST.match(requested) else CORS_DEFAULT_HEADERS
    headers = [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", _CORS_METHODS),
               (b"access-control-allow-headers", allow_headers), (b"access-control-max-age", b"600"),
               (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
               (b"content-length", b"0")]
    if _header(scope, b"access-control-request-private-network") == b"true":
        headers.append((b"access-control-allow-private-network", b"true"))  # Chrome's Private Network Access
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
