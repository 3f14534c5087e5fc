"""A small in-memory stand-in for the Hugging Face Hub HTTP API (stdlib only), for tests.

    with FakeHub() as hub:              # or hub = FakeHub().start(); ...; hub.stop()
        HfApi(endpoint=hub.url, token="hf_fake").upload_folder(...)
        # fresh processes: HF_ENDPOINT=hub.url HF_TOKEN=hf_fake HF_HOME=<tmp> (no HF_HUB_OFFLINE)

Covers what huggingface_hub 2.4 needs for create_repo / create_branch / create_commit / upload_folder /
upload_file / push_to_hub (preupload answers "regular" for every file, so no LFS or Xet; the commit is NDJSON
with base64 contents), model_info / repo_info, list_repo_tree / list_repo_files / get_paths_info,
HEAD+GET /{repo}/resolve/{rev}/{path} (hf_hub_download, snapshot_download, from_pretrained) and
POST /api/validate-yaml. Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound).
Model repos only, ids must be "namespace/name"; no auth, no LFS, no pull requests.
Set `hub.fail_commits = True` to make every commit fail with HTTP 500. `hub.requests` logs (method, path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.commit, self.extra = status, code, commit, extra


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # id -> {"private", "branches": {name: sha}, "commits": {sha: {...}}}
        self.fail_commits = False
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers for tests -------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self._repo(repo_id)
        return dict(repo["commits"][self._sha(repo, revision)]["files"])

    def commit_messages(self, repo_id: str, branch: str = "main") -> list[str]:
        """Commit summaries from newest to oldest."""
        repo, out = self._repo(repo_id), []
        sha = repo["branches"][branch]
        while sha is not None:
            out.append(repo["commits"][sha]["summary"])
            sha = repo["commits"][sha]["parent"]
        return out

    # -- model -------------------------------------------------------------------------------------
    def _repo(self, repo_id: str) -> dict:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def _sha(self, repo: dict, revision: str) -> str:
        sha = repo["branches"].get(revision) or (revision if revision in repo["commits"] else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def _commit(self, repo: dict, branch: str, summary: str, files: dict[str, bytes]) -> str:
        parent = repo["branches"].get(branch)
        digest = hashlib.sha1(f"{parent}\n{branch}\n{summary}\n{len(repo['commits'])}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha(files[path])}\n".encode())
        sha = digest.hexdigest()
        repo["commits"][sha] = {"parent": parent, "summary": summary, "files": files}
        repo["branches"][branch] = sha
        return sha

    def create_repo(self, repo_id: str, private: bool = False) -> None:
        with self.lock:
            if repo_id in self.repos:  # huggingface_hub reads "url" even from the 409 body (exist_ok=True)
                raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
            repo = self.repos[repo_id] = {"private": private, "branches": {}, "commits": {}}
            gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            self._commit(repo, "main", "initial commit", {".gitattributes": gitattributes})


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """Hub tree listing of `files` under folder `prefix` ("" = root)."""
    entries, dirs = [], set()
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    for path in sorted(files):
        if not path.startswith(base):
            continue
        parts = path[len(base):].split("/")
        for i in range(1, len(parts) if recursive else min(2, len(parts))):
            dirs.add(base + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            entries.append({"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_sha(files[path])})
    folders = [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(dirs)]
    return folders + entries


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _send(self, status: int, body: bytes | dict | list, headers: dict | None = None, head: bool = False) -> None:
        if not isinstance(body, bytes):
            body, ctype = json.dumps(body).encode(), "application/json"
        else:
            ctype = "application/octet-stream"
        self.send_response(status)
        for key, value in {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.requests.append((method, url.path))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        try:
            status, payload, headers = self._route(method, parts, parse_qs(url.query), body)
        except HubError as e:
            headers = {"X-Error-Message": str(e)}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            status, payload = e.status, {"error": str(e), **e.extra}
        self._send(status, payload, headers, head=method == "HEAD")

    def _route(self, method: str, parts: list[str], query: dict, body: bytes) -> tuple[int, object, dict]:
        hub = self.hub
        if method == "POST" and parts == ["api", "repos", "create"]:
            req = json.loads(body)
            if req.get("type", "model") != "model":
                raise HubError(400, "FakeHub only supports model repos")
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            hub.create_repo(repo_id, private=req.get("visibility") == "private")
            return 200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}, {}
        if method == "GET" and parts == ["api", "agent-harnesses"]:  # fetched by every fresh process (user agent)
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if method == "GET" and parts == ["api", "whoami-v2"]:
            return 200, {"type": "user", "name": "fake-user", "auth": {"type": "access_token"}}, {}
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            return self._api(method, "/".join(parts[2:4]), parts[4:], query, body)
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = hub._repo("/".join(parts[:2]))
            sha = hub._sha(repo, parts[3])
            data = repo["commits"][sha]["files"].get("/".join(parts[4:]))
            if data is None:
                raise HubError(404, "Entry not found", "EntryNotFound", commit=sha)
            return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha(data)}"'}
        raise HubError(404, f"FakeHub has no route for {method} /{'/'.join(parts)}")

    def _api(self, method: str, repo_id: str, rest: list[str], query: dict, body: bytes) -> tuple[int, object, dict]:
        hub = self.hub
        repo = hub._repo(repo_id)
        action = rest[0] if rest else "revision"
        rev = rest[1] if len(rest) > 1 else "main"
        if method == "GET" and action == "revision":
            sha = hub._sha(repo, rev)
            files = repo["commits"][sha]["files"]
            siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]
            return 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo["private"], "siblings": siblings}, {}
        if method == "GET" and action == "tree":
            files = repo["commits"][hub._sha(repo, rev)]["files"]
            entries = _tree_entries(files, "/".join(rest[2:]), query.get("recursive", ["false"])[0].lower() == "true")
            if rest[2:] and not entries:
                raise HubError(404, f"{'/'.join(rest[2:])} does not exist on {rev}", "EntryNotFound")
            return 200, entries, {}
        if method == "POST" and action == "paths-info":
            files = repo["commits"][hub._sha(repo, rev)]["files"]
            every = _tree_entries(files, "", recursive=True)
            wanted = set(parse_qs(body.decode()).get("paths", []))
            return 200, [e for e in every if e["path"] in wanted], {}
        if method == "POST" and action == "preupload":
            hub._sha(repo, rev)
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}, {}
        if method == "POST" and action == "branch":
            with hub.lock:
                if rev in repo["branches"]:
                    raise HubError(409, f"Branch {rev} already exists")
                start = json.loads(body or b"{}").get("startingPoint", "main")
                repo["branches"][rev] = hub._sha(repo, start)
            return 200, {}, {}
        if method == "POST" and action == "commit":
            return self._commit(repo_id, repo, rev, query, body)
        raise HubError(404, f"FakeHub has no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _commit(self, repo_id: str, repo: dict, branch: str, query: dict, body: bytes) -> tuple[int, object, dict]:
        hub = self.hub
        if hub.fail_commits:
            raise HubError(500, "Internal Error - FakeHub is in failure mode (fail_commits=True)")
        if "create_pr" in query:
            raise HubError(400, "FakeHub does not support pull requests")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        with hub.lock:
            if branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["branches"][branch]
            if header.get("parentCommit") not in (None, head):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo["commits"][head]["files"])
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, f"FakeHub does not support commit operation {key!r}")
            sha = hub._commit(repo, branch, header.get("summary", ""), files)
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}"}, {}
