"""Stand-ins for the Hugging Face Hub: a loopback HTTP server, and a cache laid out by hand.

``FakeHub`` answers the two requests ``huggingface_hub.hf_hub_download`` makes for a file, at
``{endpoint}/{repo_id}/resolve/{revision}/{filename}``: a HEAD (commit hash, ETag, size) and a GET
(the bytes), with the ``X-Error-Code`` headers the real Hub sends for a missing repository,
revision or file. Point a child process at it with ``HF_ENDPOINT``.

``BlackHole`` (takes connections, never answers) and ``closed_port_endpoint`` (refuses them)
stand for a Hub that cannot be reached.

``write_cache_repo`` lays files out as huggingface_hub stores them in ``HF_HUB_CACHE``:
``models--owner--name/blobs/<etag>``, ``snapshots/<commit>/<filename>`` (a relative symlink to the
blob) and ``refs/<revision>`` holding the commit hash.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


def commit_for(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def etag_for(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """``repos`` = {repo_id: {revision: {filename: bytes}}}. Requests are logged in ``self.log`` as
    (method, repo_id, revision, filename, status)."""

    def __init__(self, repos: dict):
        self.repos = repos
        self.log: list[tuple] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                status, headers, data = hub._lookup(unquote(self.path.split("?")[0]))
                hub.log.append((self.command, *hub._parse(unquote(self.path.split("?")[0])), status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _parse(self, path: str):
        # /owner/name/resolve/<revision>/<filename>; the revision may itself hold slashes (refs/pr/1)
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return (None, None, None)
        repo_id = "/".join(parts[:2])
        rest = parts[3:]
        revisions = self.repos.get(repo_id, {})
        for n in range(len(rest) - 1, 0, -1):
            if "/".join(rest[:n]) in revisions:
                return (repo_id, "/".join(rest[:n]), "/".join(rest[n:]))
        return (repo_id, rest[0], "/".join(rest[1:]))

    def _lookup(self, path: str):
        repo_id, revision, filename = self._parse(path)
        if repo_id not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"not found"
        if revision not in self.repos[repo_id]:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b"not found"
        files = self.repos[repo_id][revision]
        if filename not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, b"not found"
        data = files[filename]
        return 200, {"X-Repo-Commit": commit_for(repo_id, revision), "ETag": f'"{etag_for(data)}"',
                     "Content-Type": "application/octet-stream"}, data

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def write_cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> Path:
    """Lay out ``files`` under ``cache`` as huggingface_hub does; returns the snapshot folder."""
    root = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = commit_for(repo_id, revision)
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / etag_for(data)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    ref = root / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snapshot


class BlackHole:
    """An endpoint on loopback that takes connections and never answers: each one is accepted,
    counted (``connections``) and held open, and nothing is ever read or replied. Counting them
    says how often a client tried, whatever the machine's speed."""

    def __enter__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed by __exit__
                return
            self.held.append(connection)

    @property
    def connections(self) -> int:
        return len(self.held)

    def __exit__(self, *exc):
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.socket.close()
        self.thread.join(timeout=30)
        for connection in self.held:
            connection.close()


def closed_port_endpoint() -> str:
    """An endpoint on loopback where nothing listens (connection refused): a port the kernel just
    handed out, closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
