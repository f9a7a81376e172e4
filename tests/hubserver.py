"""A tiny in-process Hugging Face Hub on 127.0.0.1 for upload tests.

It implements the part of the Hub API that `huggingface_hub` (2.x) uses to publish a dataset:
`POST /api/repos/create`, `POST /api/validate-yaml`, `GET /api/datasets/{repo}/tree/{rev}`,
`POST /api/datasets/{repo}/preupload/{rev}` (large or binary files are "lfs", small text "regular"),
the LFS batch API (`POST /datasets/{repo}.git/info/lfs/objects/batch`, basic transfer: a PUT of the
bytes, then a verify POST), `POST /api/datasets/{repo}/commit/{rev}` (NDJSON: a header line, then
`file` lines with base64 content, `lfsFile` lines naming an uploaded sha256, `deletedFile` lines) and
`HEAD`/`GET /datasets/{repo}/resolve/{rev}/{path}` for downloads. Every API call must carry
`Authorization: Bearer <token>`; every request is recorded, and unknown routes land in `unexpected`.
The xet protocol is not implemented: tests set `HF_HUB_DISABLE_XET` so the client uses LFS.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".png", ".jpg", ".arrow", ".bin")


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)
    head: str = "0" * 40


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict[str, str]  # lower-case names
    body: bytes


class HubServer:
    """`with HubServer(token) as hub:` serves on `hub.url` until the block ends."""

    def __init__(self, token: str, lfs_threshold: int = 10_000, leak_token_on_commit: bool = False):
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.leak_token_on_commit = leak_token_on_commit  # answer commits with an error quoting the credentials
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[f"{repo_type}s/{repo_id}"]


def _git_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- plumbing --------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if payload is not None else "application/octet-stream")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server_hub.token}":
            return True
        self._error(401, "Invalid username or password.")
        return False

    def _dispatch(self) -> None:
        hub = self.server_hub
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self._body() if self.command in ("POST", "PUT") else b""
        with hub._lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Request(self.command, path, query, headers, body))
        for method, pattern, fn in ROUTES:
            if method == self.command or (method == "GET" and self.command == "HEAD"):
                m = re.fullmatch(pattern, path)
                if m:
                    if not path.startswith("/lfs-") and not self._authorized():
                        return
                    with hub._lock:
                        fn(self, hub, body, query, *m.groups())
                    return
        with hub._lock:
            hub.unexpected.append(f"{self.command} {path}")
        self._error(404, f"no route {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _repo(self, hub: HubServer, kind: str, repo_id: str) -> Repo | None:
        repo = hub.repos.get(f"{kind}/{repo_id}")
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    # -- routes ----------------------------------------------------------------------------------------------------
    def create_repo(self, hub, body, query):
        req = json.loads(body)
        repo_type = req.get("type") or "model"
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        key = f"{repo_type}s/{repo_id}"
        url = f"{hub.url}/{repo_type}s/{repo_id}"
        if key in hub.repos:
            return self._send(409, {"error": "You already created this dataset repo", "url": url})
        hub.repos[key] = Repo(repo_type, repo_id, req.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, hub, body, query):
        content = json.loads(body)["content"]
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        errors = []
        if m:
            try:
                meta = yaml.safe_load(m.group(1)) or {}
                for c in meta.get("configs", []):
                    if not c.get("config_name") or not all({"split", "path"} <= set(f) for f in c["data_files"]):
                        errors.append({"message": f"malformed config {c}"})
            except yaml.YAMLError as e:
                errors.append({"message": str(e)})
        self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def tree(self, hub, body, query, kind, repo_id, rev):
        repo = self._repo(hub, kind, repo_id)
        if repo is not None:
            self._send(200, [{"type": "file", "path": p, "size": len(c), "oid": _git_sha(c)}
                             for p, c in sorted(repo.files.items())])

    def preupload(self, hub, body, query, kind, repo_id, rev):
        if self._repo(hub, kind, repo_id) is None:
            return
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] >= hub.lfs_threshold or b"\0" in sample or f["path"].endswith(LFS_SUFFIXES)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._send(200, {"files": files, "commitOid": "0" * 40})

    def lfs_batch(self, hub, body, query, kind, repo_id):
        if self._repo(hub, kind, repo_id) is None:
            return
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in hub.lfs:
                entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"},
                                    "verify": {"href": f"{hub.url}/lfs-verify"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def lfs_batch_model(self, hub, body, query, repo_id):
        """Model repos have no type prefix in their git URL: `/{repo}.git/...`."""
        return self.lfs_batch(hub, body, query, "models", repo_id)

    def lfs_upload(self, hub, body, query, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        hub.lfs[oid] = body
        self._send(200, {})

    def lfs_verify(self, hub, body, query):
        req = json.loads(body)
        ok = req["oid"] in hub.lfs and len(hub.lfs[req["oid"]]) == req["size"]
        self._send(200 if ok else 404, {} if ok else {"error": "object not found"})

    def commit(self, hub, body, query, kind, repo_id, rev):
        repo = self._repo(hub, kind, repo_id)
        if repo is None:
            return
        if hub.leak_token_on_commit:
            return self._error(400, f"rejected request with credentials {self.headers.get('Authorization')}")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return self._error(400, "the first line must be the commit header")
        files, lfs_paths = dict(repo.files), set(repo.lfs_paths)
        for line in lines[1:]:
            v = line["value"]
            if line["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
                lfs_paths.discard(v["path"])
            elif line["key"] == "lfsFile":
                if v["oid"] not in hub.lfs:
                    return self._error(400, f"LFS object {v['oid']} of {v['path']} was never uploaded")
                files[v["path"]] = hub.lfs[v["oid"]]
                lfs_paths.add(v["path"])
            elif line["key"] == "deletedFile":
                if v["path"] not in files:
                    return self._error(404, f"A file with this name doesn't exist: {v['path']}", "EntryNotFound")
                del files[v["path"]]
            elif line["key"] == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
            else:
                return self._error(400, f"unknown commit line {line['key']}")
        oid = hashlib.sha1(body + repo.head.encode()).hexdigest()
        repo.files, repo.lfs_paths, repo.head = files, lfs_paths, oid
        repo.commits.append({"oid": oid, "summary": lines[0]["value"]["summary"], "lines": lines[1:]})
        self._send(200, {"commitUrl": f"{hub.url}/{kind}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})

    def resolve(self, hub, body, query, kind, repo_id, rev, path):
        repo = self._repo(hub, kind, repo_id)
        if repo is None:
            return
        if path not in repo.files:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        content = repo.files[path]
        self._send(200, headers={"X-Repo-Commit": repo.head, "ETag": f'"{_git_sha(content)}"'}, body=content)

    def agent_harnesses(self, hub, body, query):
        self._send(200, {})


_REPO = r"([\w.-]+/[\w.-]+)"
ROUTES = [
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("GET", rf"/api/(datasets|models)/{_REPO}/tree/([^/]+)", _Handler.tree),
    ("POST", rf"/api/(datasets|models)/{_REPO}/preupload/([^/]+)", _Handler.preupload),
    ("POST", rf"/(datasets|models)/{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch_model),
    ("PUT", r"/lfs-upload/([0-9a-f]{64})", _Handler.lfs_upload),
    ("POST", r"/lfs-verify", _Handler.lfs_verify),
    ("POST", rf"/api/(datasets|models)/{_REPO}/commit/([^/]+)", _Handler.commit),
    ("GET", rf"/(datasets|models)/{_REPO}/resolve/([^/]+)/(.+)", _Handler.resolve),
]
