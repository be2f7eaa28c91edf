"""A loopback double of the Hugging Face Hub's HTTP API, for offline tests.

It implements the subset of the API that the real `huggingface_hub` (2.x) and `datasets` (5.x)
clients use to publish a dataset folder as one commit, tag it, and load it back with
`datasets.load_dataset(..., revision=...)`. Point the clients at it with `HF_ENDPOINT=double.url`.

State lives in memory: repos, commits (each a full snapshot of the repo's files), branches and
tags; a revision is a branch, a tag or a full commit sha. Every file is stored inline: the
preupload endpoint answers `regular` for all files, so the client sends their content base64 in
the NDJSON commit and no LFS or Xet server is needed.

Auth follows the Hub's rules as the clients see them: an unknown token is a 401 on every request,
writes need a known token with write access to the namespace (else 403), a private repo is a 404
to anyone else. Faults (a dropped connection before or after a commit is applied, or a request
held until the test releases it) let tests interrupt a push at a chosen step.

Not implemented: model and Space repos, LFS/Xet uploads, pull requests, copies, pagination,
`expand`/last-commit info, commit listing, deletes of repos, branches or tags, the
datasets-server API (`load_dataset` must be given a `revision` other than main), and anything a
test does not exercise. Unknown routes answer 404 and are recorded in `unhandled`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# What the Hub puts in a new repo's initial commit (shortened).
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs -text\n"
FaultMode = Literal["drop", "drop_after", "hold"]


def git_blob_sha(data: bytes) -> str:
    """The oid git (and the Hub) gives a regular file; the client compares it to skip no-ops."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    orgs: tuple[str, ...] = ()
    can_write: bool = True  # False: a read-only token

    def owns(self, namespace: str) -> bool:
        return namespace == self.name or namespace in self.orgs


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]  # the whole tree at this commit
    title: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (sha, message)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        rev = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        sha = self.branches.get(rev) or self.tags.get(rev, (None, ""))[0]
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", revision):
            sha = revision
        return self.commits.get(sha) if sha else None


class HubError(Exception):
    """An error answer: status, message, and the `X-Error-Code` the client classifies it by."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


@dataclass
class _Fault:
    mode: FaultMode
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class _Drop(Exception):
    """Close the connection without an answer, as a network failure would."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


_REPO = r"/api/datasets/(?P<repo>[^/]+/[^/]+)"
_FILES = r"/datasets/(?P<repo>[^/]+/[^/]+)"


class HubDouble:
    """The in-memory Hub and its HTTP server on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, tokens: dict[str, User]) -> None:
        self.tokens = dict(tokens)
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.unhandled: list[str] = []
        self._lock = threading.RLock()
        self._faults: dict[str, _Fault] = {}
        self._every_fault: list[_Fault] = []
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., tuple]]] = [
            ("POST", re.compile(r"/api/repos/create"), self._create_repo),
            ("POST", re.compile(r"/api/validate-yaml"), self._validate_yaml),
            ("GET", re.compile(_REPO + r"(?:/revision/(?P<rev>[^/]+))?"), self._repo_info),
            ("GET", re.compile(_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), self._tree),
            ("POST", re.compile(_REPO + r"/paths-info/(?P<rev>[^/]+)"), self._paths_info),
            ("GET", re.compile(_REPO + r"/refs"), self._refs),
            ("POST", re.compile(_REPO + r"/tag/(?P<rev>[^/]+)"), self._tag),
            ("POST", re.compile(_REPO + r"/branch/(?P<branch>[^/]+)"), self._branch),
            ("POST", re.compile(_REPO + r"/preupload/(?P<rev>[^/]+)"), self._preupload),
            ("POST", re.compile(_REPO + r"/commit/(?P<rev>[^/]+)"), self._commit),
            ("GET", re.compile(_FILES + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), self._resolve),
        ]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> HubDouble:
        hub = self

        class Handler(_Handler):
            double = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="hub-double").start()
        return self

    def stop(self) -> None:
        for fault in self._every_fault:
            fault.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- for tests
    def fault(self, endpoint: str, mode: FaultMode) -> _Fault:
        """Make the next request to `endpoint` (e.g. 'commit', 'tag') fail.

        drop: close the connection before applying it; drop_after: apply it, then close the
        connection without an answer; hold: signal `arrived`, wait for `release`, then drop.
        """
        fault = self._faults[endpoint] = _Fault(mode)
        self._every_fault.append(fault)  # stop() releases held requests even once popped
        return fault

    def add_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """A repo as the Hub creates it (one initial commit with .gitattributes), for setup."""
        with self._lock:
            repo = self.repos[repo_id] = Repo(repo_id, private)
            repo.branches["main"] = self._new_commit(
                repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit").sha
            return repo

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            commit = self.repos[repo_id].resolve(revision)
            assert commit is not None, f"{repo_id} has no revision {revision}"
            return dict(commit.files)

    def state(self) -> dict[str, Any]:
        """Everything a push could change, in a comparable form."""
        with self._lock:
            return {rid: (repo.private, sorted(repo.commits), dict(repo.branches), dict(repo.tags))
                    for rid, repo in self.repos.items()}

    def writes(self, since: int = 0) -> list[tuple[str, str, int]]:
        """Requests after log entry `since` that changed state: repo, commit, tag, branch."""
        return [e for e in self.log[since:] if e[0] == "POST" and 200 <= e[2] < 300
                and re.search(r"/(repos/create|commit|tag|branch)(/|$)", e[1])]

    # ---------------------------------------------------------------- dispatch
    def handle(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        method = "GET" if req.method == "HEAD" else req.method
        for verb, pattern, fn in self._routes:
            match = pattern.fullmatch(req.path)
            if verb != method or not match:
                continue
            # Path segments arrive quoted (a revision like refs/convert/parquet is one segment).
            args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            fault = self._faults.pop(_endpoint_name(req.path), None)
            if fault is not None and fault.mode != "drop_after":
                fault.arrived.set()
                if fault.mode == "hold":
                    fault.release.wait(60)
                raise _Drop
            try:
                with self._lock:
                    answer = fn(req, self._user(req), **args)
            except HubError as e:
                return _error(e)
            except Exception as e:  # a request the double cannot parse: make the test fail
                self.unhandled.append(f"{req.method} {req.path}: {e!r}")
                return _error(HubError(500, f"the hub double failed: {e!r}"))
            if fault is not None:  # drop_after: the change is applied, its answer is lost
                fault.arrived.set()
                raise _Drop
            return answer
        self.unhandled.append(f"{req.method} {req.path}")
        return _error(HubError(404, f"the hub double does not implement {req.method} {req.path}"))

    def _user(self, req: Request) -> User | None:
        auth = req.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _readable(self, repo_id: str, user: User | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not (user and user.owns(repo.namespace))):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_id: str, user: User | None) -> Repo:
        repo = self._readable(repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repository")
        if not (user.can_write and user.owns(repo.namespace)):
            raise HubError(403, f"You don't have write access to datasets/{repo_id}")
        return repo

    @staticmethod
    def _commit_at(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, parent: Commit | None, files: dict[str, bytes],
                    title: str) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}|{next(self._counter)}|{title}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_sha(files[path])}".encode())
        commit = Commit(digest.hexdigest(), parent.sha if parent else None, files, title,
                        datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        repo.commits[commit.sha] = commit
        return commit

    # ---------------------------------------------------------------- endpoints
    def _create_repo(self, req: Request, user: User | None) -> tuple:
        payload = req.json()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        if payload.get("type") != "dataset":
            raise HubError(400, "the hub double only hosts dataset repos")
        namespace = payload.get("organization") or user.name
        repo_id = f"{namespace}/{payload['name']}"
        if not (user.can_write and user.owns(namespace)):
            raise HubError(403, f'You don\'t have the rights to create a dataset under the '
                                f'namespace "{namespace}"')
        url = f"{self.url}/datasets/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this dataset repo")
        self.add_repo(repo_id, private=payload.get("visibility") == "private"
                      or bool(payload.get("private")))
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, req: Request, user: User | None) -> tuple:
        content = req.json().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*$", content, flags=re.S | re.M)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("the metadata is not a mapping")
        except yaml.YAMLError as e:
            return _json({"errors": [{"message": str(e)}]}, status=400)
        return _json({"errors": [], "warnings": []})

    def _repo_info(self, req: Request, user: User | None, repo: str, rev: str = "main") -> tuple:
        r = self._readable(repo, user)
        commit = self._commit_at(r, rev)
        return _json({
            "id": repo, "_id": repo, "author": r.namespace, "sha": commit.sha,
            "private": r.private, "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "lastModified": commit.date, "createdAt": commit.date,
            "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)}
                         for p, d in sorted(commit.files.items())],
        })

    def _tree(self, req: Request, user: User | None, repo: str, rev: str,
              path: str = "") -> tuple:
        commit = self._commit_at(self._readable(repo, user), rev)
        path = path.strip("/")
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = _entries(commit.files)
        if path and path not in entries:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        if path and entries[path]["type"] == "file":
            return _json([entries[path]])
        prefix = f"{path}/" if path else ""
        return _json([e for p, e in sorted(entries.items()) if p.startswith(prefix)
                      and (recursive or "/" not in p[len(prefix):])])

    def _paths_info(self, req: Request, user: User | None, repo: str, rev: str) -> tuple:
        commit = self._commit_at(self._readable(repo, user), rev)
        if req.headers.get("Content-Type", "").startswith("application/json"):
            paths = req.json().get("paths", [])
        else:
            paths = parse_qs(req.body.decode()).get("paths", [])
        entries = _entries(commit.files)
        # Like the Hub: paths that do not exist are left out, not an error.
        return _json([entries[p.strip("/")] for p in paths if p.strip("/") in entries])

    def _refs(self, req: Request, user: User | None, repo: str) -> tuple:
        r = self._readable(repo, user)
        return _json({
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                         for n, s in r.branches.items()],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s}
                     for n, (s, _) in r.tags.items()],
            "converts": [], "pullRequests": [],
        })

    def _tag(self, req: Request, user: User | None, repo: str, rev: str) -> tuple:
        r = self._writable(repo, user)
        commit = self._commit_at(r, rev)
        payload = req.json()
        tag = payload["tag"]
        if tag in r.tags or tag in r.branches:
            raise HubError(409, f"Tag {tag} already exists")
        r.tags[tag] = (commit.sha, payload.get("message", ""))
        return _json({"success": True})

    def _branch(self, req: Request, user: User | None, repo: str, branch: str) -> tuple:
        r = self._writable(repo, user)
        start = self._commit_at(r, req.json().get("startingPoint") or "main")
        if branch in r.branches:
            raise HubError(409, f"Branch {branch} already exists")
        r.branches[branch] = start.sha
        return _json({"success": True})

    def _preupload(self, req: Request, user: User | None, repo: str, rev: str) -> tuple:
        r = self._writable(repo, user)
        head = r.resolve(rev)
        existing = head.files if head else {}
        files = []
        for f in req.json()["files"]:
            old = existing.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha(old) if old is not None else None})
        return _json({"files": files, "commitOid": r.branches.get(rev)})

    def _commit(self, req: Request, user: User | None, repo: str, rev: str) -> tuple:
        r = self._writable(repo, user)
        if rev not in r.branches:
            raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)",
                           "RevisionNotFound")
        if "create_pr" in req.query:
            raise HubError(400, "the hub double does not implement pull requests")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "a commit needs a header line with a summary")
        parent = r.commits[r.branches[rev]]
        if header.get("parentCommit") not in (None, parent.sha):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            elif key != "header":
                raise HubError(400, f"the hub double does not implement '{key}' operations")
        commit = self._new_commit(r, parent, files, header["summary"])
        r.branches[rev] = commit.sha
        return _json({"commitUrl": f"{self.url}/datasets/{repo}/commit/{commit.sha}",
                      "commitOid": commit.sha, "success": True, "pullRequestUrl": None})

    def _resolve(self, req: Request, user: User | None, repo: str, rev: str, path: str) -> tuple:
        commit = self._commit_at(self._readable(repo, user), rev)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(data)}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", ""))
        if match and data:
            start = int(match.group(1) or 0)
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start:end + 1]
        return 200, headers, data


def _endpoint_name(path: str) -> str:
    """'commit' for /api/datasets/o/n/commit/main: the name faults are keyed by."""
    parts = path.split("/")
    return parts[5] if len(parts) > 5 and parts[1] == "api" else ""


def _entries(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Tree entries for every file and every folder implied by the files' paths."""
    entries: dict[str, dict[str, Any]] = {}
    for path, data in files.items():
        entries[path] = {"type": "file", "path": path, "size": len(data),
                         "oid": git_blob_sha(data)}
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                        "oid": hashlib.sha1(folder.encode()).hexdigest()})
    return entries


def _json(obj: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _error(e: HubError) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": e.message, **e.headers}
    if e.code:
        headers["X-Error-Code"] = e.code
    return e.status, headers, json.dumps({"error": e.message}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    double: HubDouble

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # requests are kept in double.log instead of spamming stderr

    def _read_body(self) -> bytes:
        # Always drain the body, even for an error answer: on a keep-alive connection unread
        # bytes would be parsed as the next request.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        req = Request(self.command, url.path, parse_qs(url.query), self.headers, body)
        try:
            status, headers, payload = self.double.handle(req)
        except _Drop:
            self.double.log.append((self.command, url.path, 0))
            self.close_connection = True
            return
        self.double.log.append((self.command, url.path, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve
