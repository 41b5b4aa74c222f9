#!/usr/bin/env python3
"""Container deploys, printed (never asserted): ferry deploying a docker app beside the status
quo, `docker compose up -d --force-recreate` of the same image, under the same load.

1. ferry: a docker app (busybox httpd in a FROM scratch image) with two releases, both built
   first; then DEPLOYS deploys alternating them while CLIENTS threads request the
   environment's proxy back to back. Per deploy: request -> switched (the deployment's
   created_at to its `switch` step's finished_at, from `ferry show <id> --json`), the
   container's boot (`start` step started -> `health` step finished) and ferry's own time (the
   difference); then the medians, and the total and failed requests (goal: 0).
2. the status quo: the same image in a compose file (`network_mode: host`, a fixed port,
   `init: true`, the same 2 s stop grace) and DEPLOYS times `up -d --force-recreate` under the
   same load against that port: the time each `up` takes, how long requests failed, and the
   total and failed requests.

A failed request is anything but a 200: a refused or reset connection, a timeout, a cut
answer. After a failure a client waits 10 ms before its next attempt (no busy loop on a
refused port), so the failed count of a down service is about CLIENTS x 100 per second down.

Usage: python3 bench/docker.py     (DEPLOYS=10 CLIENTS=8; builds ferry --release first unless
       FERRY_BIN names a binary; about a minute once ferry is built)
Needs a docker daemon (else prints SKIPPED and exits 0) and Debian's busybox-static; never
pulls. Every container, image and directory it makes is named `fbench<pid>…` and removed at
the end, whatever happens.
"""

import http.client
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import build_ferry, free_port, sh, start_serve  # noqa: E402

DEPLOYS = int(os.environ.get("DEPLOYS", "10"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
PREFIX = f"fbench{os.getpid()}"
BASE = f"{PREFIX}-busybox:1"
COMPOSE_IMAGE = f"{PREFIX}-app:v1"
BUSYBOX = "/bin/busybox"
LABEL = f"ferry.bench={PREFIX}"


def run(args, timeout=120, check=True, **kw):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {(out.stderr or out.stdout).strip()}")
    return out


def docker(*args, check=True, timeout=120):
    return run(["docker", *args], check=check, timeout=timeout).stdout


def is_static(path):
    """Whether the 64-bit ELF at `path` has no program interpreter (runs without libc)."""
    with open(path, "rb") as f:
        elf = f.read()
    if not elf.startswith(b"\x7fELF\x02\x01"):
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    size, count = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * size)[0] != 3 for i in range(count))


def skip_reason():
    if not shutil.which("docker"):
        return "no docker CLI on PATH"
    try:
        out = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the docker daemon does not answer (20 s)"
    if out.returncode != 0 or not out.stdout.strip():
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        return f"no docker daemon reachable: {lines[0] if lines else 'no server version'}"
    if not os.path.exists(BUSYBOX) or not is_static(BUSYBOX):
        return f"{BUSYBOX} is missing or not static: install Debian's busybox-static"
    return None


def compose_command():
    """`docker compose` (v2) when present, else `docker-compose` (v1), else None."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class Load:
    """CLIENTS threads requesting 127.0.0.1:port/version back to back, each on one
    connection kept alive as long as the server keeps it."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []  # (monotonic time, reason)
        self.versions = Counter()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def client(self):
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            reason = None
            try:
                conn.request("GET", "/version")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    reason = f"HTTP {resp.status}"
                elif resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # a failed request, whatever the cause
                reason = type(e).__name__
            with self.lock:
                if reason is None:
                    self.ok += 1
                    self.versions[body.strip().decode(errors="replace")] += 1
                else:
                    self.failures.append((time.monotonic(), reason))
            if reason is not None:
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.01)

    def counts(self):
        with self.lock:
            return self.ok, len(self.failures)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def wait_answering(port, limit=30):
    """Seconds until 127.0.0.1:port/version answers 200 (polled every 5 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/version")
            if conn.getresponse().status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.005)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port} after {limit} s")


def describe(label, values, unit="ms"):
    print(f"  {label:<34} median {statistics.median(values):8.1f} {unit}   "
          f"min {min(values):8.1f} {unit}   max {max(values):8.1f} {unit}")


def summary(load, took, before, after):
    ok, failed = after[0] - before[0], after[1] - before[1]
    reasons = Counter(r for _, r in load.failures)
    print(f"  requests across the {DEPLOYS} deploys ({took:.1f} s, {CLIENTS} clients): "
          f"{ok + failed} total, {failed} failed (goal 0){'  ' + str(dict(reasons)) if reasons else ''}")
    print(f"  answered by (whole run, warm-up included): {dict(load.versions)}")


def build_base(tmp):
    d = os.path.join(tmp, "base")
    os.mkdir(d)
    shutil.copy(BUSYBOX, os.path.join(d, "busybox"))
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write('FROM scratch\nCOPY busybox /bin/busybox\n'
                'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                'RUN mkdir -p /tmp && chmod 1777 /tmp\n')
    run(["docker", "build", "-q", "--force-rm", "-t", BASE, "--label", LABEL, d],
        env={**os.environ, "DOCKER_BUILDKIT": "0"})


def app_repo(tmp):
    """tmp/repo: a commit and tag per release, each a Dockerfile FROM the base serving
    /health and /version (its version) with busybox httpd on $HOST:$PORT."""
    os.chmod(tmp, 0o711)  # as root, ferry runs the app as the environment's user
    repo = os.path.join(tmp, "repo")
    os.mkdir(repo)
    sh(repo, "git", "init", "-q", "-b", "main")
    for tag in ("v1", "v2"):
        with open(os.path.join(repo, "Dockerfile"), "w") as f:
            f.write(f"FROM {BASE}\n"
                    f"RUN mkdir -p /srv && echo {tag} > /srv/health && echo {tag} > /srv/version\n"
                    'CMD exec httpd -f -p "$HOST:$PORT" -h /srv\n')
        sh(repo, "git", "add", ".")
        sh(repo, "git", "commit", "-qm", tag)
        sh(repo, "git", "tag", tag)


def bench_ferry(ferry, tmp):
    """Part 1; returns the id of the v1 image ferry built (for the compose part)."""
    api_port, env_port = free_port(), free_port()
    config = os.path.join(tmp, "ferry.toml")
    with open(config, "w") as f:
        f.write(f"""[app]
name = "{PREFIX}"
repo = "repo"
runtime = "docker"
stop_timeout = "2s"
drain_timeout = "5s"

[health]
paths = ["/health"]
interval = "20ms"
timeout = "1s"
retries = 500

[environments.production]
listen = "127.0.0.1:{env_port}"
monitor = false

[server]
listen = "127.0.0.1:{api_port}"
""")
    serve, _, _ = start_serve(ferry, tmp, config, api_port)

    def deploy(ref):
        out = run([ferry, "-c", config, "deploy", "production", ref, "--json"], timeout=300,
                  check=False)
        try:
            dep = json.loads(out.stdout)["deployment"]
        except (ValueError, KeyError):
            raise SystemExit(f"ferry deploy {ref}: {out.stderr.strip() or out.stdout.strip()}")
        detail = json.loads(run([ferry, "-c", config, "show", str(dep["id"]), "--json"]).stdout)
        if detail["deployment"]["state"] != "succeeded":
            log = open(os.path.join(tmp, "serve.log")).read()[-3000:]
            raise SystemExit(f"deploy {ref} ended {detail['deployment']['state']}:\n"
                             f"{json.dumps(detail['steps'], indent=1)[-3000:]}\n{log}")
        return detail

    try:
        for ref in ("v1", "v2"):
            deploy(ref)  # builds the image; the timed deploys reuse it
        image = run([ferry, "-c", config, "history", "production", "--json"]).stdout
        v1_image = next(d["digest"] for d in json.loads(image) if d["ref"] == "v1")
        load = Load(env_port)
        time.sleep(1)
        before, started = load.counts(), time.monotonic()
        total, boot, own = [], [], []
        print(f"== ferry: {DEPLOYS} deploys of already built images, alternating v1/v2, "
              f"{CLIENTS} clients on the environment's proxy")
        for i in range(DEPLOYS):
            ref = "v1" if i % 2 == 0 else "v2"
            d = deploy(ref)
            steps = {s["name"]: s for s in d["steps"]}
            t = (ts(steps["switch"]["finished_at"]) - ts(d["deployment"]["created_at"])) * 1000
            b = (ts(steps["health"]["finished_at"]) - ts(steps["start"]["started_at"])) * 1000
            total.append(t), boot.append(b), own.append(t - b)
            print(f"  {ref}  build {steps['build']['state']:<8} request→switched {t:7.1f} ms   "
                  f"container boot (start→healthy) {b:7.1f} ms   ferry's own {t - b:7.1f} ms")
        time.sleep(1)
        after, took = load.counts(), time.monotonic() - started
        load.finish()
        describe("request→switched", total)
        describe("container boot (start→healthy)", boot)
        describe("ferry's own time", own)
        summary(load, took, before, after)
        return v1_image
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


def bench_compose(compose, tmp, image):
    port = free_port()
    d = os.path.join(tmp, "compose")
    os.mkdir(d)
    docker("tag", image, COMPOSE_IMAGE)
    with open(os.path.join(d, "docker-compose.yml"), "w") as f:
        f.write(f"""version: "2.4"
services:
  web:
    image: {COMPOSE_IMAGE}
    network_mode: host
    init: true
    stop_grace_period: 2s
    labels:
      ferry.bench: "{PREFIX}"
    environment:
      HOST: 127.0.0.1
      PORT: "{port}"
""")
    cmd = [*compose, "-p", PREFIX]
    run([*cmd, "up", "-d"], cwd=d)
    wait_answering(port)
    load = Load(port)
    time.sleep(1)
    before, started = load.counts(), time.monotonic()
    ups, back, down = [], [], []
    print(f"== status quo: {DEPLOYS} × `{' '.join(compose)} up -d --force-recreate` of the same "
          f"image (network_mode: host, port {port}), {CLIENTS} clients on that port")
    for _ in range(DEPLOYS):
        start = time.monotonic()
        run([*cmd, "up", "-d", "--force-recreate"], cwd=d)
        up = time.monotonic() - start
        answering = up + wait_answering(port)
        with load.lock:
            failed = [t for t, _ in load.failures if t >= start]
        span = (max(failed) - min(failed)) * 1000 if failed else 0.0
        ups.append(up * 1000), back.append(answering * 1000), down.append(span)
        print(f"  up {up * 1000:7.1f} ms   answering again {answering * 1000:7.1f} ms after the up "
              f"began   requests failing for {span:7.1f} ms ({len(failed)} failed)")
        time.sleep(0.3)  # the next up starts on a settled service
    time.sleep(1)
    after, took = load.counts(), time.monotonic() - started
    load.finish()
    describe("`up -d --force-recreate`", ups)
    describe("requests failing (first→last)", down)
    summary(load, took, before, after)


def cleanup(compose, tmp):
    """Best effort: the compose project, then every container and image of this run."""
    d = os.path.join(tmp, "compose")
    if compose and os.path.isdir(d):
        run([*compose, "-p", PREFIX, "down", "-t", "1"], cwd=d, check=False, timeout=120)
    ids = set()
    for flt in (f"label=ferry.app={PREFIX}", f"label={LABEL}", f"name={PREFIX}"):
        ids.update(docker("ps", "-aq", "--no-trunc", "--filter", flt, check=False).split())
    if ids:
        docker("rm", "-f", *sorted(ids), check=False)
    images = set()
    for flt in (f"label=ferry.app={PREFIX}", f"label={LABEL}"):
        images.update(docker("images", "-q", "--no-trunc", "--filter", flt, check=False).split())
    tags = [t for t in docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).split()
            if PREFIX in t]
    # tags first (an image tagged twice is removed with its last tag), then the ids left
    for names in (tags, sorted(images)):
        if names:
            docker("rmi", "-f", *names, check=False)


def main():
    reason = skip_reason()
    if reason:
        print(f"SKIPPED: {reason}")
        return
    compose = compose_command()
    ferry = os.environ.get("FERRY_BIN") or build_ferry()
    load_avg = open("/proc/loadavg").read().split()[:3]
    print(f"docker {docker('version', '--format', '{{.Client.Version}}').strip()} (client), "
          f"{docker('version', '--format', '{{.Server.Version}}').strip()} (daemon); "
          + (run([*compose, "version"]).stdout.splitlines()[0] if compose else "no compose")
          + f"; load average {' '.join(load_avg)} on {os.cpu_count()} cores")
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    try:
        build_base(tmp)
        app_repo(tmp)
        image = bench_ferry(ferry, tmp)
        if compose:
            bench_compose(compose, tmp, image)
        else:
            print("SKIPPED the status quo: neither `docker compose` nor `docker-compose` found")
    finally:
        cleanup(compose, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
