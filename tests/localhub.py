"""A local stand-in for the Hugging Face Hub on 127.0.0.1, for tests only (never shipped).

It implements just the HTTP routes huggingface_hub 2.4.0 and diffusers 0.42.1 call for the paths the
kit teaches, read from their source (`hf_api.py`, `file_download.py`, `_commit_api.py`,
`_snapshot_download.py`):

* repo info      GET  /api/{models,datasets}/{id}[/revision/{rev}]   (sha, siblings)
* tree listing   GET  /api/{type}s/{id}/tree/{rev}[/{path}]          (snapshot_download)
* file resolve   HEAD/GET /{id}/resolve/{rev}/{path}, /datasets/{id}/resolve/...   (X-Repo-Commit, ETag,
                 Content-Length; X-Linked-Etag/X-Linked-Size (sha256) for LFS-like weight files)
* uploads        POST /api/repos/create, /api/{type}s/{id}/preupload/{rev} (every file "regular", so the
                 content travels inline in the commit), /api/{type}s/{id}/commit/{rev} (ndjson),
                 /api/validate-yaml, GET /api/whoami-v2
* errors as the Hub sends them: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound,
  401 with X-Error-Code GatedRepo for a gated repo asked without an accepted token.

Repositories live in memory as immutable commits; a commit's id is the sha1 of its parent, message and
files, so the same content always gets the same 40-hex id (tests can pin it).

It also answers as an HTTP proxy that refuses everything (CONNECT or absolute URLs): point
`https_proxy`/`http_proxy` at it and any attempt to leave the machine (diffusers asking PyPI, say) fails
at once and is recorded in `offbox`, where a test can see it.

Not imitated: xet storage and LFS batch uploads (every upload is inline), auth scopes and fine-grained
tokens (a token is either in `tokens` or not), private repos, pull requests, branches other than main,
tags, rate limits and 429s, redirects to a CDN, Range requests, pagination (one page), gating requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".gguf", ".h5")
MAX_BODY = 512 * 2**20  # a request body larger than this is refused (the tiny repos are a few MB)
EPOCH = "2026-01-01T00:00:00.000Z"
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str  # "model" or "dataset"
    repo_id: str
    gated: bool = False
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit | None:
        return self.commits[-1] if self.commits else None

    def commit(self, files: dict[str, bytes], message: str, deleted: set[str] = frozenset()) -> Commit:
        parent = self.head
        merged = {**(parent.files if parent else {}), **files}
        for path in deleted:
            merged = {p: d for p, d in merged.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        digest = hashlib.sha1((parent.oid if parent else "").encode() + message.encode())
        for path in sorted(merged):
            digest.update(path.encode() + b"\0" + hashlib.sha256(merged[path]).digest())
        new = Commit(digest.hexdigest(), message, merged)
        self.commits.append(new)
        return new

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "refs/heads/main"):
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


class LocalHub:
    """The repositories and the server. `start()` serves on 127.0.0.1 at a free port; `url` is its endpoint."""

    def __init__(self, tokens: set[str] = frozenset()):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens = set(tokens)  # tokens that may write and that have accepted every gate
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, sent a token)
        self.offbox: list[str] = []  # attempts to reach another host through the refusing proxy
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # --- content -------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model", gated: bool = False) -> Repo:
        with self.lock:
            return self.repos.setdefault((repo_type, repo_id), Repo(repo_type, repo_id, gated))

    def add_folder(self, repo_id: str, folder: str | Path, repo_type: str = "model", message: str = "add folder",
                   prefix: str = "") -> str:
        """Commit every file under `folder` (at `prefix/` in the repo); returns the commit id."""
        folder = Path(folder)
        files = {prefix + p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}
        return self.add_files(repo_id, files, repo_type, message)

    def add_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                  message: str = "add files") -> str:
        repo = self.repo(repo_id, repo_type)
        with self.lock:
            return repo.commit(files, message).oid

    # --- server --------------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client cannot hold a thread forever

    def log_message(self, *args) -> None:  # quiet: the test output stays readable
        pass

    # --- plumbing ------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, None, f"request body over {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data) -> None:
        self._send(status, json.dumps(data).encode())

    def _dispatch(self, method: str) -> None:
        target = self.path
        if not target.startswith("/"):  # an absolute URL: we are being used as a proxy to another host
            self.hub.offbox.append(f"{method} {target}")
            self._send(403, b'{"error": "the local Hub refuses to proxy"}')
            return
        with self.hub.lock:
            self.hub.requests.append((method, urlsplit(target).path, self._token() is not None))
        try:
            self._route(method, urlsplit(target))
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            body = json.dumps({"error": error.message}).encode()
            self._send(error.status, body, headers, head=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_CONNECT(self):
        self.hub.offbox.append(f"CONNECT {self.path}")
        self._send(403, b"")
        self.close_connection = True

    # --- routes --------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str, *, read: bool = True) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        if read and repo.gated and self._token() not in self.hub.tokens:
            raise HubError(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in.")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(unquote(revision))
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _route(self, method: str, url) -> None:
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:2] == ["api", "whoami-v2"]:
            if self._token() not in self.hub.tokens:
                raise HubError(401, None, "Invalid credentials in Authorization header")
            return self._json(200, {"type": "user", "name": "kit-tester", "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create(json.loads(self._body()))
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            repo_type, repo_id, rest = parts[1][:-1], "/".join(parts[2:4]), parts[4:]
            if not rest:
                return self._info(repo_type, repo_id, "main")
            if rest[0] == "revision" and len(rest) >= 2:
                return self._info(repo_type, repo_id, "/".join(rest[1:]))
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive)
            if rest[0] == "preupload" and method == "POST":
                return self._preupload(repo_type, repo_id)
            if rest[0] == "commit" and method == "POST":
                return self._commit_upload(repo_type, repo_id, "/".join(rest[1:]))
        repo_type = "model"
        if parts[0] == "datasets":
            repo_type, parts = "dataset", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), method == "HEAD")
        raise HubError(404, None, f"the local Hub does not implement {method} {url.path}")

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if path.endswith(LFS_SUFFIXES):
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        self._json(200, {"id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid, "private": False,
                         "gated": "auto" if repo.gated else False, "disabled": False, "lastModified": EPOCH,
                         "createdAt": EPOCH, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings})

    def _tree(self, repo_type: str, repo_id: str, revision: str, under: str, recursive: bool) -> None:
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        entries, folders = [], set()
        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:depth]))
            if len(rest) > 1 and not recursive:
                continue
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if not recursive:
            folders = {f for f in folders if "/" not in f[len(prefix):]}
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders]
        self._json(200, sorted(entries, key=lambda e: e["path"]))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision!r}", commit=commit.oid)
        data = commit.files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.oid,
                   "ETag": f'"{git_blob_id(data)}"', "Content-Length": str(len(data))}
        if path.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        self._send(200, data, headers, head=head)

    def _require_writer(self) -> None:
        if self._token() not in self.hub.tokens:
            raise HubError(401, None, "Invalid username or password.")

    def _create(self, payload: dict) -> None:
        self._require_writer()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization'] or 'kit-tester'}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        repo = self.hub.repo(repo_id, repo_type)
        with self.hub.lock:  # as on the Hub: a new repo starts with one commit holding .gitattributes
            repo.commit({".gitattributes": GITATTRIBUTES}, "initial commit")
        self._json(200, {"url": url, "name": repo_id})

    def _preupload(self, repo_type: str, repo_id: str) -> None:
        self._require_writer()
        self._repo(repo_type, repo_id, read=False)
        files = json.loads(self._body())["files"]
        self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]})

    def _commit_upload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_writer()
        repo = self._repo(repo_type, repo_id, read=False)
        if unquote(revision) != "main":
            raise HubError(400, None, "the local Hub only commits to main")
        files, deleted, message = {}, set(), "commit"
        for line in self._body().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value.get("summary") or message
            elif item["key"] == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.add(value["path"])
            else:  # lfsFile needs an LFS/xet upload first, which this stand-in does not implement
                raise HubError(400, None, f"the local Hub does not accept {item['key']!r} operations")
        with self.hub.lock:
            commit = repo.commit(files, message, deleted)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{commit.oid}",
                         "commitOid": commit.oid, "pullRequestUrl": None})
