"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's audio API over whisper-server.

The upload streams through: the client's multipart body is parsed as it arrives and re-written for the runner on
the fly (fields checked, ``language``/``translate`` set), so only a chunk at a time is held. When the client names
its ``model`` only after the file, the file waits on disk until the model is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from litestar import Controller, Request, Response, post
from litestar.exceptions import HTTPException, InternalServerException

from llama_host import HostDep
from llama_host.errors import BadRequest, HostError, PayloadTooLarge, RunnerCrashed
from llama_host.proxy import Upstream
from llama_host.request import Exchange, run

from llama_host_whisper_server.form import FilePart, IncomingForm, OutgoingForm, Spool, boundary_of
from llama_host_whisper_server.options import (CONTENT_TYPES, AudioOptions, decode_failure_reason, openai_reply,
                                               parse_options)
from llama_host_whisper_server.runtime import INFERENCE_PATH, RUNTIME

if TYPE_CHECKING:
    from llama_host import Host
    from llama_host.scheduler import Lease

log = logging.getLogger(__name__)

NAME = "whisper_server"
LOG_GRACE = 1.0  # seconds to wait for the runner's log line explaining a 400 (it is written just before the reply)


class InvalidAudio(BadRequest):
    code = "invalid_audio"


class ClientGone(HostError):
    status, code, type = 499, "client_disconnected", "invalid_request_error"


class AudioService:
    """Per host: the upload limit and one HTTP session to the runners.

    Uploads use fresh connections (no keep-alive pool): whisper-server drops idle connections after 5 s, and a
    streamed body cannot be replayed on a new connection the way the shared relay retries a stale one.
    """

    def __init__(self, max_upload: int) -> None:
        self.max_upload = max_upload
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False,
                skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: Request, host: Host, *, translate: bool, endpoint: str) -> Response:
        form = IncomingForm(self._client_chunks(request), boundary_of(request.headers.get("content-type")))
        file = await form.next_file()
        if file is None:
            raise BadRequest("no 'file' field in the request: send the audio as the multipart field 'file'",
                             param="file")
        parse_options(form.fields)  # fail early on what came before the file
        spool: Spool | None = None
        try:
            if form.first("model") is None:  # the model comes after the file (curl -F order): keep the file on disk
                spool = await Spool.fill(form.file_chunks())
                await form.rest()
            requested = form.first("model") or host.site.default_model
            if not requested:
                raise BadRequest("you must provide a model parameter", param="model")
            spec = host.scheduler.get(requested, NAME)
            if spec.runtime != RUNTIME:
                raise BadRequest(f"model '{spec.name}' does not transcribe audio (runtime '{spec.runtime}'); "
                                 f"use a model with runtime: {RUNTIME}", param="model")
            return await run(host, Transcription(self, spec.name, endpoint, form, file, spool, translate))
        finally:
            if spool is not None:
                await spool.close()

    async def _client_chunks(self, request: Request) -> AsyncIterator[bytes]:
        try:
            async for chunk in request.stream():
                yield chunk
        except InternalServerException:
            raise ClientGone("the client went away during the upload") from None
        except HTTPException as exc:
            if exc.status_code != 413:
                raise
            raise PayloadTooLarge(f"the upload is larger than the limit of {_size(self.max_upload)} "
                                  f"(plugins.whisper_server.max_upload_size)") from None



class Transcription(Exchange):
    """The upload goes to whisper-server as it arrives (re-written on the fly); its reply becomes OpenAI's."""

    surface = NAME
    raw = True  # whisper-server's reply is text, srt, vtt or JSON: openai_reply reads its bytes

    def __init__(self, service: AudioService, model: str, endpoint: str, form: IncomingForm, file: FilePart,
                 spool: Spool | None, translate: bool) -> None:
        self.model, self.endpoint = model, endpoint
        self._service, self._form, self._file, self._spool, self._translate = service, form, file, spool, translate
        self._options: AudioOptions | None = None

    async def send(self, host: Host, lease: Lease) -> Upstream:
        form, file, spool, translate = self._form, self._file, self._spool, self._translate
        out = OutgoingForm()
        failure: list[Exception] = []
        final: list[AudioOptions] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                yield out.file_head(file)
                async for chunk in (spool.chunks() if spool is not None else form.file_chunks()):
                    yield chunk
                yield out.file_tail()
                if spool is None:
                    await form.rest()
                options = parse_options(form.fields)
                final.append(options)
                yield out.fields(options.runner_fields(translate=translate)) + out.end()
            except Exception as exc:  # the client's side failed (413, malformed body, a bad field after the file)
                failure.append(exc)
                raise

        runner = lease.runner
        with runner.logs.subscribe() as log_lines:
            try:
                r = await self._service.session.post(runner.base_url + INFERENCE_PATH, data=body(),
                                                     headers={**runner.headers, "Content-Type": out.content_type})
                up = Upstream(r, lease.model.name)
                data = await up.read()  # the whole reply, so that a failed upload is known before it is used
            except (aiohttp.ClientError, OSError) as exc:
                if failure:
                    raise failure[0] from None
                raise RunnerCrashed(f"model '{lease.model.name}': runner unreachable ({exc})") from None
            if failure:
                up.close()
                raise failure[0]
            if up.status == 400:
                up.close()
                reason = await _runner_reason(log_lines) or data.decode("utf-8", "replace").strip()
                raise InvalidAudio(f"could not read the audio file: {reason}", param="file")
        if up.status < 400 and not final:
            up.close()
            raise RunnerCrashed(f"model '{lease.model.name}': the runner answered before the upload ended")
        self._options = final[0] if final else None
        return up

    def reply(self, reply: Any, up: Upstream) -> Response:
        assert self._options is not None
        return Response(content=openai_reply(self._options, reply), status_code=200,
                        media_type=CONTENT_TYPES[self._options.response_format])


async def _runner_reason(lines: asyncio.Queue[str]) -> str | None:
    """whisper-server answers every 400 with 'Invalid request'; its reason is on stderr, just before the reply."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOG_GRACE
    while True:
        while not lines.empty():
            seen.append(lines.get_nowait())
        reason = decode_failure_reason(seen)
        if reason is not None and "failed to read audio data" in reason:
            return reason
        remaining = deadline - loop.time()
        if remaining <= 0:
            return reason
        with contextlib.suppress(asyncio.TimeoutError):
            seen.append(await asyncio.wait_for(lines.get(), remaining))


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n} bytes"


class AudioController(Controller):
    """Built per host by ``controller_for`` (the upload limit comes from the settings)."""

    path = "/v1/audio"
    tags = ["openai", "audio"]
    service: AudioService

    @post("/transcriptions")
    async def transcriptions(self, request: Request, host: HostDep) -> Response:
        return await self.service.handle(request, host, translate=False, endpoint="transcriptions")

    @post("/translations")
    async def translations(self, request: Request, host: HostDep) -> Response:
        return await self.service.handle(request, host, translate=True, endpoint="translations")


def controller_for(service: AudioService) -> type[AudioController]:
    return type("AudioController", (AudioController,),
                {"service": service, "request_max_body_size": service.max_upload})
