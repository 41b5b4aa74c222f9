"""Helpers the bench scripts share: ports, git, building ferry, its API."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the running serve's local token (start_serve sets it; api() sends it)
TOKEN = ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cwd, *args):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})


def sample_repo(tmp, releases):
    """Makes tmp passable for the environments' users (as root, ferry runs the app as one and
    it must reach its release under the state dir) and a git repo at tmp/repo with one
    commit and tag per (tag, app.conf text) of `releases`, in order."""
    os.chmod(tmp, 0o711)
    repo = os.path.join(tmp, "repo")
    os.mkdir(repo)
    sh(repo, "git", "init", "-q", "-b", "main")
    for tag, conf in releases:
        with open(os.path.join(repo, "app.conf"), "w") as f:
            f.write(conf)
        sh(repo, "git", "add", ".")
        sh(repo, "git", "commit", "-qm", tag)
        sh(repo, "git", "tag", tag)
    return repo


def build_ferry():
    """Builds ferry --release and returns the binary's path (FERRY=path: that binary, unbuilt)."""
    if os.environ.get("FERRY"):
        return os.path.abspath(os.environ["FERRY"])
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "ferry")


def start_serve(ferry, tmp, config, api_port):
    """Starts `ferry serve -c config` (log in tmp/serve.log), waits for its API and returns
    (process, API base URL, the local token)."""
    import time
    import urllib.request
    base = f"http://127.0.0.1:{api_port}"
    log = open(os.path.join(tmp, "serve.log"), "w")
    # --stop-apps: the apps go with serve when the bench ends (they outlive it by default)
    serve = subprocess.Popen([ferry, "serve", "--stop-apps", "-c", config], stdout=log, stderr=log)
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    global TOKEN
    TOKEN = open(os.path.join(tmp, ".ferry", "local-token")).read().strip()
    return serve, base, TOKEN


def api(base, path, body=None, timeout=60):
    """GET `path` (or POST `body` as JSON) on serve's API; the answer's JSON, errors included."""
    req = urllib.request.Request(base + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json", "x-ferry-user": "bench",
                                          "authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def wait_done(base, dep_id):
    """Polls a deployment until it has ended; its detail (`deployment`, `steps`, …)."""
    while True:
        d = api(base, f"/api/deployments/{dep_id}")
        if d["deployment"]["state"] not in ("queued", "running", "monitoring", "awaiting_approval"):
            return d
        time.sleep(0.05)


def ts(s):
    """An RFC 3339 time from the API as a Unix timestamp."""
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
