"""Route handlers serving the dashboard's page and assets from memory."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.status_codes import HTTP_302_FOUND

PREFIX = "/ui"

# The page may talk to its own origin only: no CDN, no font service, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@dataclass(frozen=True)
class StaticAssets:
    """The files of ``static/``, read once when the surface is built (a few tens of kilobytes)."""

    files: dict[str, Asset]

    @classmethod
    def load(cls) -> StaticAssets:
        files = {}
        for entry in (resources.files("llama_host_dashboard") / "static").iterdir():
            if not entry.is_file() or entry.name.startswith("."):
                continue
            body = entry.read_bytes()
            suffix = "." + entry.name.rpartition(".")[2]
            media_type = MEDIA_TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            files[entry.name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
        return cls(files)

    def response(self, name: str, request: Request) -> Response[bytes]:
        asset = self.files.get(name)
        if asset is None:
            raise NotFoundException(f"no dashboard asset {name!r}")
        # Revalidate every time: a restarted host may serve a newer page, and the 304 keeps it cheap.
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(b"", status_code=304, headers=headers)
        charset = "utf-8" if asset.media_type.startswith(("text/", "image/svg")) else None
        media_type = f"{asset.media_type}; charset={charset}" if charset else asset.media_type
        return Response(asset.body, media_type=media_type, headers=headers)


def dashboard_handlers(assets: StaticAssets) -> list[HTTPRouteHandler]:
    @get("/", include_in_schema=False, status_code=HTTP_302_FOUND)
    async def root() -> Redirect:
        return Redirect(PREFIX + "/", status_code=HTTP_302_FOUND)

    # Litestar matches "/ui" and "/ui/" alike; the page needs the slash so that its relative asset URLs resolve.
    @get(PREFIX, include_in_schema=False)
    async def page(request: Request) -> Response[bytes] | Redirect:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        if not raw_path.endswith(b"/"):
            return Redirect(PREFIX + "/", status_code=HTTP_302_FOUND)
        return assets.response("index.html", request)

    @get(PREFIX + "/{name:str}", include_in_schema=False)
    async def asset(name: FromPath[str], request: Request) -> Response[bytes]:
        return assets.response(name, request)

    return [root, page, asset]
