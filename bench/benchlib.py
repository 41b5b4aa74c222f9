"""Helpers the bench scripts share: ports, git, building ferry."""

import os
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """Builds ferry --release and returns the binary's path."""
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
    token = open(os.path.join(tmp, ".ferry", "local-token")).read().strip()
    return serve, base, token
