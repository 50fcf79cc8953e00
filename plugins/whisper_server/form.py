"""Multipart uploads read and re-written as they stream: the audio never sits whole in memory.

``IncomingForm`` parses a ``multipart/form-data`` body chunk by chunk as the client sends it: small fields are
collected, the ``file`` part is handed over in the chunks it arrived in. ``OutgoingForm`` writes a fresh multipart
body for the runner (our own boundary, the fields we choose, the file streamed through).
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO

import multipart

from llama_host.errors import BadRequest

FILE_FIELD = "file"
MAX_FIELD_SIZE = 64 * 1024  # every field except the file is a short string
MAX_PARTS = 256


@dataclass(frozen=True)
class FilePart:
    filename: str
    content_type: str


def boundary_of(content_type: str | None) -> str:
    """The boundary of a ``multipart/form-data`` Content-Type; BadRequest for anything else."""
    mime, options = multipart.parse_options_header(content_type or "")
    if mime != "multipart/form-data" or not options.get("boundary"):
        raise BadRequest("the request must be multipart/form-data with the audio in a 'file' field "
                         f"(got Content-Type '{content_type or ''}')")
    return options["boundary"]


class IncomingForm:
    """Reads a multipart body from ``chunks`` (e.g. ``request.stream()``) as it arrives.

    Call ``next_file()`` to read the fields up to the file part, ``file_chunks()`` to stream its content, then
    ``rest()`` for the fields after it. ``fields`` holds every field read so far (a name may repeat).
    """

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str, *, max_field_size: int = MAX_FIELD_SIZE) -> None:
        self.fields: dict[str, list[str]] = {}
        self.file: FilePart | None = None
        self._parser = multipart.PushMultipartParser(boundary, max_segment_count=MAX_PARTS)
        self._events = self._parse(chunks)
        self._max_field = max_field_size
        self._in_file = False
        self._done = False

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    async def _parse(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[multipart.MultipartSegment | bytes | None]:
        try:
            async for chunk in chunks:
                if chunk:
                    for event in self._parser.parse(chunk):
                        yield event
            for event in self._parser.parse(b""):
                yield event
        except multipart.ParserLimitReached as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        except multipart.MultipartError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None

    async def next_file(self) -> FilePart | None:
        """Collect fields until the ``file`` part begins and return it; None when the body has no file."""
        if self.file is not None:
            raise RuntimeError("next_file() was already called")
        self.file = await self._read_fields(stop_at_file=True)
        return self.file

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file's content as it arrives (call after ``next_file()`` returned a part)."""
        if not self._in_file:
            raise RuntimeError("not inside the file part")
        async for event in self._events:
            if event is None:
                self._in_file = False
                return
            if isinstance(event, multipart.MultipartSegment):  # the parser never nests segments
                raise BadRequest("malformed multipart body")
            yield bytes(event)
        raise BadRequest("the upload ended inside the file")

    async def rest(self) -> None:
        """Read the fields after the file to the end of the body (a second file is an error)."""
        if self._in_file:
            async for _ in self.file_chunks():
                pass
        if await self._read_fields(stop_at_file=False) is not None:
            raise BadRequest("only one 'file' may be sent", param=FILE_FIELD)

    async def _read_fields(self, *, stop_at_file: bool) -> FilePart | None:
        if self._done:
            return None
        name: str | None = None
        value = bytearray()
        async for event in self._events:
            if isinstance(event, multipart.MultipartSegment):
                if event.name == FILE_FIELD:
                    if not stop_at_file:
                        return FilePart(event.filename or "", event.content_type or "")
                    self._in_file = True
                    return FilePart(event.filename or "audio", event.content_type or "application/octet-stream")
                name = event.name or ""
                value.clear()
            elif event is None:
                if name is not None:
                    self.fields.setdefault(name, []).append(value.decode("utf-8", "replace"))
                name = None
            else:
                if len(value) + len(event) > self._max_field:
                    raise BadRequest(f"form field '{name}' is longer than {self._max_field} bytes", param=name)
                value += event
        self._done = True
        return None


class OutgoingForm:
    """A multipart body for the runner, written piece by piece."""

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = boundary or "llama-host-" + secrets.token_hex(16)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def field(self, name: str, value: str) -> bytes:
        return (f"--{self.boundary}\r\nContent-Disposition: form-data; name={multipart.content_disposition_quote(name)}"
                f"\r\n\r\n").encode() + value.encode() + b"\r\n"

    def fields(self, items: Iterable[tuple[str, str]]) -> bytes:
        return b"".join(self.field(name, value) for name, value in items)

    def file_head(self, part: FilePart, name: str = FILE_FIELD) -> bytes:
        return (f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f"name={multipart.content_disposition_quote(name)}; "
                f"filename={multipart.content_disposition_quote(part.filename)}\r\n"
                f"Content-Type: {part.content_type}\r\n\r\n").encode()

    @staticmethod
    def file_tail() -> bytes:
        return b"\r\n"

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()


class Spool:
    """A file part kept on disk (the upload named its model only after the file); writes and reads off the loop."""

    CHUNK = 256 * 1024

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.size = 0

    @classmethod
    async def fill(cls, chunks: AsyncIterator[bytes]) -> Spool:
        spool = cls(await asyncio.to_thread(tempfile.TemporaryFile))
        try:
            async for chunk in chunks:
                await asyncio.to_thread(spool._file.write, chunk)
                spool.size += len(chunk)
        except BaseException:
            await spool.close()
            raise
        return spool

    async def chunks(self) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._file.seek, 0)
        while chunk := await asyncio.to_thread(self._file.read, self.CHUNK):
            yield chunk

    async def close(self) -> None:
        await asyncio.to_thread(self._file.close)
