"""A fast fake ``llama-server`` for fault-injection tests (stdlib only: it starts in a few tens of milliseconds).

It takes llama-server's command line (``-m``, ``--host``, ``--port``, ``--alias``, ``--api-key``, ``--api-key-file``;
every other flag is ignored) and, like llama-server given a key, answers 401 without it on every route but
``/health``. It serves ``/health`` (503 while "loading", like llama-server), ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions`` (streamed or not; ``timings`` on the last chunk like llama-server, ``usage`` on request).
Its replies are deterministic: ``max_tokens`` (default 8) tokens ``" t0"``, ``" t1"``, ... — see :func:`reply_text`.

Faults come from the environment (a model's ``env:`` in the site file):

=======================  =============================================================================================
FAKE_SLOW_START=s        ``/health`` answers 503 for ``s`` seconds after start
FAKE_NEVER_HEALTHY=1     ``/health`` answers 503 forever
FAKE_READY_FILE=p        ``/health`` answers 503 until file ``p`` exists (a slow start whose end the test decides)
FAKE_EXIT_AT_START=n     print FAKE_EXIT_MESSAGE (or a default) to stderr and exit with code ``n`` at once
FAKE_CRASH_AFTER=n       die (``os._exit(1)``) after ``n`` content chunks of a stream (a non-streamed request: at once)
FAKE_CRASH_MARKER=p      with FAKE_CRASH_AFTER: crash only while file ``p`` does not exist, then create it (crash once)
FAKE_CRASH_LINGER=s      with FAKE_CRASH_AFTER: leave a child holding the log pipe open ``s`` seconds after the crash
FAKE_CRASH_EXIT_DELAY=s  with FAKE_CRASH_AFTER: close every socket at the crash, but exit only ``s`` seconds later
FAKE_IGNORE_SIGTERM=1    ignore SIGTERM (only SIGKILL ends it)
FAKE_CHUNK_DELAY=s       sleep ``s`` seconds before each streamed token (and between ``[DONE]`` and the end of the body)
FAKE_PAUSE_FILE=p        while file ``p`` exists, a stream stalls after its first token (the test decides when it ends)
FAKE_LEGACY_ERROR=1      mid-stream, send an old-style ``error: {...}`` SSE line instead of the rest of the reply
FAKE_STARTS_FILE=p       append ``<pid>`` to file ``p`` at every start (tests count processes with it)
FAKE_PORT_TAKEN_ONCE=p   the first start (while file ``p`` does not exist) fails as if its port were taken
FAKE_LOG_LINE_BYTES=n    write one log line of ``n`` bytes to stderr at start
FAKE_LOG_FLOOD=n         once file FAKE_LOG_FLOOD_FILE exists (at once without it), write ``n`` bytes of log lines of
                         FAKE_LOG_FLOOD_LINE bytes (default 120) to stderr as fast as it can, then "flood done"
FAKE_OLD_FLAGS=1         exit like a llama-server too old for ``--api-key-file``, ``--cors-origins``, ``--no-ui``
FAKE_KEY_REPORT=p        write the key file's and its folder's permission bits (octal) to file ``p`` at start
FAKE_ECHO_FILE=p         append each completion request's body to file ``p``, one JSON line each, with the ``--alias``
                         it runs under as ``"_alias"`` (tests check what reached the runner: filters, model names)
=======================  =============================================================================================

Request-lifecycle faults (the fault matrix of tests/test_fault_matrix.py):

=======================  =============================================================================================
FAKE_MALFORMED_AFTER=n   after ``n`` content chunks of a stream, send an event that is not JSON (then the rest)
(also: ``POST /v1/audio/transcriptions`` answers like whisper-server, so the fake can run as a ``whisper-server``)
FAKE_NO_FINAL_NEWLINE=1  end a stream with a usage chunk (``completion_tokens`` n + 1000, so that a test can tell it
                         was read) without its trailing newlines, and no [DONE]
=======================  =============================================================================================

Run it directly (``python fake_llama_server.py -m model.gguf --port 8080``) or through :func:`write_wrapper`, which
writes an executable script usable as a model's ``binary:``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

REASONS = {200: "OK", 401: "Unauthorized", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
DEFAULT_TOKENS = 8


def reply_text(n: int) -> str:
    """The content of a reply of ``n`` tokens (what a test compares a stream against)."""
    return "".join(token(i) for i in range(n))


def token(i: int) -> str:
    return f" t{i}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fake-llama-server", add_help=False, allow_abbrev=False)
    p.add_argument("-m", "--model", default="")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-a", "--alias", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--api-key-file", default=None)
    args, _unknown = p.parse_known_args(argv)
    return args


NEWER_FLAGS = ("--api-key-file", "--cors-origins", "--no-cors-credentials", "--no-ui")
PUBLIC = ("/health", "/v1/health")
UNAUTHORIZED = {"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}


def api_keys(args: argparse.Namespace) -> set[str]:
    """The keys llama-server would accept: ``--api-key`` (comma-separated) and the lines of ``--api-key-file``."""
    keys = {k for k in (args.api_key or "").split(",") if k}
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as f:
            keys |= {line.strip() for line in f if line.strip() and not line.startswith("#")}
    return keys


def flood(size: int, line_bytes: int, start_file: str | None) -> None:
    """Write ``size`` bytes of log lines to stderr as fast as the pipe takes them (a thread: the server keeps serving)."""
    while start_file and not os.path.exists(start_file):
        time.sleep(0.01)
    line = b"flood " + b"x" * max(0, line_bytes - 7) + b"\n"
    block = line * max(1, (1 << 20) // len(line))
    written = 0
    while written < size:
        os.write(2, block)
        written += len(block)
    os.write(2, b"fake-llama-server: flood done\n")


class FakeServer:
    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.model_id = args.alias or os.path.basename(args.model) or "fake"
        self.started = time.monotonic()
        self.slow_start = float(env.get("FAKE_SLOW_START") or 0)
        self.never_healthy = env.get("FAKE_NEVER_HEALTHY") == "1"
        self.ready_file = env.get("FAKE_READY_FILE")
        self.pause_file = env.get("FAKE_PAUSE_FILE")
        self.crash_after = int(env["FAKE_CRASH_AFTER"]) if env.get("FAKE_CRASH_AFTER") else None
        self.crash_marker = env.get("FAKE_CRASH_MARKER")
        self.chunk_delay = float(env.get("FAKE_CHUNK_DELAY") or 0)
        self.legacy_error = env.get("FAKE_LEGACY_ERROR") == "1"
        self.requests = 0
        self.keys = api_keys(args)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    # --- state --------------------------------------------------------------------------------------------------

    def healthy(self) -> bool:
        if self.never_healthy or time.monotonic() - self.started < self.slow_start:
            return False
        return not self.ready_file or os.path.exists(self.ready_file)

    def should_crash(self) -> bool:
        if self.crash_after is None:
            return False
        if self.crash_marker:
            if os.path.exists(self.crash_marker):
                return False
            Path(self.crash_marker).touch()
        return True

    async def crash(self, why: str) -> None:
        log(f"fake-llama-server: crashing ({why})")
        delay = float(os.environ.get("FAKE_CRASH_EXIT_DELAY") or 0)
        if delay:  # every socket closes now, the process ends later
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await asyncio.sleep(delay)
        linger = os.environ.get("FAKE_CRASH_LINGER")
        if linger:  # the host sees the exit while the end of the log stream is still to come
            subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({float(linger)})"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        os._exit(1)

    # --- HTTP ---------------------------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    break
                method, target, _version = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = h.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = await self.read_body(reader, headers)
                path = target.split("?", 1)[0]
                if self.keys and path not in PUBLIC and not self.authorized(headers):
                    await self.send_json(writer, 401, UNAUTHORIZED)
                else:
                    await self.route(method, path, body, writer)
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def authorized(self, headers: dict[str, str]) -> bool:
        key = headers.get("authorization") or headers.get("x-api-key") or ""
        return key.removeprefix("Bearer ") in self.keys

    @staticmethod
    async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    return out
                out += data[:-2]
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""

    @staticmethod
    async def send_json(writer: asyncio.StreamWriter, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nKeep-Alive: timeout=5, max=1000\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()

    async def route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        path = without_request_path(path)
        if path == "/health":
            await self.send_json(writer, 200 if self.healthy() else 503, {"status": "ok"} if self.healthy() else LOADING)
            return
        if not self.healthy():
            await self.send_json(writer, 503, LOADING)
            return
        if path in ("/v1/models", "/models") and method == "GET":
            await self.send_json(writer, 200, {"object": "list", "data": [
                {"id": self.model_id, "object": "model", "created": int(time.time()), "owned_by": "llamacpp",
                 "meta": {"fake": True}}]})
            return
        if path in ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions") and method == "POST":
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                await self.send_json(writer, 400, {"error": {"code": 400, "message": "invalid JSON",
                                                             "type": "invalid_request_error"}})
                return
            chat = "chat" in path
            if os.environ.get("FAKE_ECHO_FILE"):
                echo(os.environ["FAKE_ECHO_FILE"], {**request, "_alias": self.args.alias})
            if request.get("stream"):
                await self.stream(request, chat, writer)
            else:
                await self.complete(request, chat, writer)
            return
        if await lifecycle_route(self, method, path, writer):
            return
        await self.send_json(writer, 404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    # --- completions --------------------------------------------------------------------------------------------

    def _base(self, chat: bool, chunk: bool) -> dict:
        self.requests += 1
        kind = "chat.completion" if chat else "text_completion"
        return {"id": f"chatcmpl-fake-{os.getpid()}-{self.requests}", "object": kind + (".chunk" if chunk and chat else ""),
                "created": int(time.time()), "model": self.model_id, "system_fingerprint": "fake"}

    @staticmethod
    def _timings(n: int, prompt_n: int) -> dict:
        return {"cache_n": 0, "prompt_n": prompt_n, "prompt_ms": 1.0, "prompt_per_second": 1000.0 * prompt_n,
                "predicted_n": n, "predicted_ms": 2.0 * n, "predicted_per_second": 500.0}

    @staticmethod
    def _prompt_tokens(request: dict) -> int:
        text = json.dumps(request.get("messages") or request.get("prompt") or "")
        return max(1, len(text.split()))

    async def complete(self, request: dict, chat: bool, writer: asyncio.StreamWriter) -> None:
        if self.should_crash():
            await self.crash("non-streamed request")
        n = int(request.get("max_tokens") or DEFAULT_TOKENS)
        prompt_n = self._prompt_tokens(request)
        reply = self._base(chat, chunk=False)
        choice = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": reply_text(n)}
        else:
            choice["text"] = reply_text(n)
        reply["choices"] = [choice]
        reply["usage"] = {"prompt_tokens": prompt_n, "completion_tokens": n, "total_tokens": prompt_n + n}
        reply["timings"] = self._timings(n, prompt_n)
        await self.send_json(writer, 200, reply)

    async def stream(self, request: dict, chat: bool, writer: asyncio.StreamWriter) -> None:
        n = int(request.get("max_tokens") or DEFAULT_TOKENS)
        crash = self.should_crash()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=1000\r\n\r\n")
        base = self._base(chat, chunk=True)

        async def send(data: bytes) -> None:
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        async def event(choice: dict, **extra: object) -> None:
            await send(b"data: " + json.dumps({**base, "choices": [choice] if choice else [], **extra}).encode() + b"\n\n")

        if chat:
            await event({"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None})
        for i in range(n):
            if crash and i == self.crash_after:
                await self.crash(f"after {i} chunks")
            if self.legacy_error and i == min(2, n - 1):
                await send(b'error: {"code":500,"message":"fake legacy error mid-stream","type":"server_error"}\n\n')
                await send(b"")  # end of the chunked body, no [DONE] (as older llama-server did)
                return
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            while i == 1 and self.pause_file and os.path.exists(self.pause_file):
                await asyncio.sleep(0.01)
            if await lifecycle_fault(i, send):
                continue
            await event({"index": 0, "delta": {"content": token(i)}, "finish_reason": None} if chat else
                        {"index": 0, "text": token(i), "finish_reason": None})
        prompt_n = self._prompt_tokens(request)
        last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else {"index": 0, "text": "",
                                                                                  "finish_reason": "length"}
        await event(last, timings=self._timings(n, prompt_n))
        if os.environ.get("FAKE_NO_FINAL_NEWLINE") == "1":
            usage = {"prompt_tokens": prompt_n, "completion_tokens": n + 1000, "total_tokens": prompt_n + n + 1000}
            await send(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode())
            await send(b"")
            return
        if (request.get("stream_options") or {}).get("include_usage"):
            await event({}, usage={"prompt_tokens": prompt_n, "completion_tokens": n, "total_tokens": prompt_n + n})
        await send(b"data: [DONE]\n\n")
        if self.chunk_delay:  # the end of the body comes later than [DONE], as over a slow link
            await asyncio.sleep(self.chunk_delay)
        await send(b"")


# --- request-lifecycle faults (issue 14) -------------------------------------------------------------------------


async def lifecycle_fault(i: int, send) -> bool:
    """Send the fault due before content chunk ``i``, if any; True: the chunk was replaced by it."""
    after = os.environ.get("FAKE_MALFORMED_AFTER")
    if after and i == int(after):
        await send(b'data: {"choices": [{"index": 0, "delta": {"content": tru\n\n')
        return True
    return False


def echo(path: str, request: dict) -> None:
    """FAKE_ECHO_FILE: one JSON line per request received."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(request) + "\n")


def without_request_path(path: str) -> str:
    """whisper-server's ``--request-path`` (a runner's secret prefix): every route lives under it."""
    argv = sys.argv
    prefix = argv[argv.index("--request-path") + 1].rstrip("/") if "--request-path" in argv[:-1] else ""
    return path[len(prefix):] or "/" if prefix and path.startswith(prefix) else path


async def lifecycle_route(server: FakeServer, method: str, path: str, writer: asyncio.StreamWriter) -> bool:
    """whisper-server's inference route, so that the fake can stand in for it too (its start, crash and queue
    faults): ``{"text": " t0 t1"}`` for any upload."""
    if path == "/v1/audio/transcriptions" and method == "POST":
        if server.should_crash():
            await server.crash("transcription")
        await server.send_json(writer, 200, {"text": reply_text(2)})
        return True
    return False


async def serve(args: argparse.Namespace, env: dict[str, str]) -> int:
    fake = FakeServer(args, env)
    try:
        server = fake.server = await asyncio.start_server(fake.handle, args.host, args.port)
    except OSError as exc:
        log(f"couldn't bind HTTP server socket, hostname: {args.host}, port: {args.port}: {exc.strerror}")
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if env.get("FAKE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("fake-llama-server: ignoring SIGTERM")
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if fake.never_healthy:
        log("llama_model_load: fake never-healthy mode: loading forever")
    elif fake.ready_file:
        log(f"llama_model_load: fake slow start: loading until {fake.ready_file} exists")
    elif fake.slow_start:
        log(f"llama_model_load: fake slow start: {fake.slow_start:g}s")
    log(f"main: server is listening on http://{args.host}:{args.port} - model {fake.model_id} (pid {os.getpid()})")
    if env.get("FAKE_LOG_FLOOD"):
        threading.Thread(target=flood, args=(int(env["FAKE_LOG_FLOOD"]), int(env.get("FAKE_LOG_FLOOD_LINE") or 120),
                                             env.get("FAKE_LOG_FLOOD_FILE")), daemon=True).start()
    async with server:
        await stop.wait()
        log("fake-llama-server: SIGTERM received, exiting")
        os._exit(0)  # at once, like llama-server when idle; open keep-alive connections are simply dropped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if env.get("FAKE_STARTS_FILE"):
        with open(env["FAKE_STARTS_FILE"], "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    log(f"fake-llama-server: starting (pid {os.getpid()}, model {args.model!r})")
    if env.get("FAKE_LOG_LINE_BYTES"):
        log("x" * int(env["FAKE_LOG_LINE_BYTES"]))
    raw = sys.argv[1:] if argv is None else argv
    if env.get("FAKE_OLD_FLAGS") == "1":
        for flag in raw:
            if flag in NEWER_FLAGS:
                log(f"error: invalid argument: {flag}")
                return 1
    if env.get("FAKE_KEY_REPORT") and args.api_key_file:
        Path(env["FAKE_KEY_REPORT"]).write_text(
            f"{os.stat(args.api_key_file).st_mode & 0o777:o} {os.stat(os.path.dirname(args.api_key_file)).st_mode & 0o777:o}",
            encoding="utf-8")
    marker = env.get("FAKE_PORT_TAKEN_ONCE")
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        log(f"couldn't bind HTTP server socket, hostname: {args.host}, port: {args.port}")
        return 1
    if env.get("FAKE_EXIT_AT_START"):
        log(env.get("FAKE_EXIT_MESSAGE") or f"error: failed to load model '{args.model}' (fake exit at start)")
        return int(env["FAKE_EXIT_AT_START"])
    return asyncio.run(serve(args, env))


def write_wrapper(directory: Path, name: str = "fake-llama-server") -> Path:
    """Write an executable script running this fake with the current interpreter; use it as a model's ``binary:``."""
    path = Path(directory) / name
    here = str(Path(__file__).resolve().parent)
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {here!r})\n"
                    f"from fake_llama_server import main\nsys.exit(main())\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_starts(path: Path) -> list[int]:
    """The pids recorded in a FAKE_STARTS_FILE (one per start)."""
    try:
        return [int(line) for line in Path(path).read_text(encoding="utf-8").split()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    sys.exit(main())
