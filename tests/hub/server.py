"""A small Hugging Face Hub on loopback for the tests: the HTTP API ``huggingface_hub`` uses, serving files from memory.

Endpoints (as huggingface_hub 1.x/2.x calls them, read from its ``hf_api.py`` and ``file_download.py``):

- ``GET /api/models/{user}/{repo}[/revision/{rev}]?blobs=true`` → ``{id, sha, siblings: [{rfilename, size, blobId,
  lfs: {sha256, size, pointerSize}}]}``; an unknown repo → 404 with ``X-Error-Code: RepoNotFound``.
- ``HEAD``/``GET /{user}/{repo}/resolve/{rev}/{path}`` → the file with ``ETag`` (the sha256 of an LFS file, quoted),
  ``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, ``Accept-Ranges``; ``Range: bytes=N-`` → 206 with
  ``Content-Range``; an unknown file → 404 with ``X-Error-Code: EntryNotFound``.

Fault injection, on top of the real thing: ``cut_once`` (file names whose first GET sends half the bytes and closes the
connection), ``corrupt`` (file names served with other bytes of the same size), ``delay`` (seconds between 64 KiB
chunks, to keep a transfer running while a test acts). ``requests`` records ``(method, path, headers)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 1024  # files at least this big are "LFS files" (sha256 listed); smaller ones get a git blob id


@dataclass
class Hub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    delay: float = 0.0
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = dict(files)

    def gets(self, name: str) -> list[dict[str, str]]:
        """Headers of every GET of a file whose path ends with ``name``."""
        return [h for m, p, h in self.requests if m == "GET" and "/resolve/" in p and p.endswith("/" + name)]


def sibling(path: str, data: bytes) -> dict:
    entry = {"rfilename": path, "size": len(data),
             "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if len(data) >= LFS_THRESHOLD:
        entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _record(self) -> None:
            with lock:
                hub.requests.append((self.command, urlsplit(self.path).path, {k.lower(): v for k, v in
                                                                              self.headers.items()}))

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(401, "RepoNotFound", "Invalid credentials")
                return False
            return True

        def do_GET(self) -> None:
            self._record()
            path = unquote(urlsplit(self.path).path)
            if not self._authorized():
                return
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?", path)
            if m:
                return self._info(m.group(1))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._file(m.group(1), m.group(3), body=self.command == "GET")
            self._error(404, "NotFound", "not found")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _info(self, repo: str) -> None:
            files = hub.repos.get(repo)
            if files is None:
                return self._error(404, "RepoNotFound", f"Repository not found: {repo}")
            body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                               "siblings": [sibling(p, d) for p, d in files.items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, repo: str, name: str, *, body: bool) -> None:
            files = hub.repos.get(repo)
            if files is None:
                return self._error(404, "RepoNotFound", f"Repository not found: {repo}")
            if name not in files:
                return self._error(404, "EntryNotFound", f"{name} not found in {repo}")
            data = files[name]
            entry = sibling(name, data)
            etag = entry["lfs"]["sha256"] if "lfs" in entry else entry["blobId"]
            served = bytes(b ^ 0xFF for b in data) if name in hub.corrupt else data
            start = 0
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                start = int(m.group(1)) if m else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", COMMIT)
            if "lfs" in entry:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            payload = served[start:]
            cut = False
            with lock:
                if name in hub.cut_once:
                    hub.cut_once.discard(name)
                    cut = True
            if cut:
                payload = payload[: len(payload) // 2]
            for i in range(0, len(payload), 65536):
                if hub.delay:
                    time.sleep(hub.delay)
                try:
                    self.wfile.write(payload[i:i + 65536])
                    self.wfile.flush()
                except OSError:
                    return
            if cut:
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler


class HubServer:
    """``with HubServer(hub) as url: ...`` serves ``hub`` on a free loopback port in a thread."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-hub", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.hub.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
