#!/usr/bin/env python3
"""Requests dropped during deploys and rollbacks, printed (never asserted; goal: 0 failed).

64 keep-alive connections request an environment's public address (ferry's proxy) in a loop
while ferry runs 20 deploys (alternating two releases) and then 20 manual rollbacks. Every
answer that is not a 200, and every connection error or timeout, counts as failed.

Usage: python3 bench/load.py [connections] [deploys] [rollbacks]
       (builds ferry --release first; about a minute)
Everything runs on 127.0.0.1 in a temp dir and stops by itself.
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

from benchlib import build_ferry, free_port, sample_repo, start_serve

CONNECTIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
DEPLOYS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ROLLBACKS = int(sys.argv[3]) if len(sys.argv) > 3 else 20


class Load:
    """CONNECTIONS threads, each with one keep-alive connection to the proxy."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.total = 0
        self.failed = Counter()
        self.versions = Counter()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CONNECTIONS)]

    def run(self):
        conn = None
        total, failed, versions = 0, Counter(), Counter()
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    versions[body.split(b" from ")[-1].split(b" ")[0].decode()] += 1
                else:
                    failed[f"HTTP {resp.status}"] += 1
            except Exception as e:  # a dropped request, whatever the cause
                failed[type(e).__name__] += 1
                conn.close()
                conn = None
            total += 1
        with self.lock:
            self.total += total
            self.failed.update(failed)
            self.versions.update(versions)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def main():
    ferry = build_ferry()
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [(tag, f"message = {tag}\n") for tag in ["v1.0.0", "v1.1.0"]])
        api_port, env_port = free_port(), free_port()
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "load"
repo = "repo"
start = "'{ferry}' sample-app"
stop_timeout = "5s"
drain_timeout = "10s"

[health]
paths = ["/health"]
interval = "100ms"
timeout = "1s"

[environments.production]
listen = "127.0.0.1:{env_port}"

[server]
listen = "127.0.0.1:{api_port}"
""")
        serve, base, token = start_serve(ferry, tmp, config, api_port)
        try:
            def call(path, body):
                req = urllib.request.Request(base + path, method="POST", data=json.dumps(body).encode(),
                                             headers={"content-type": "application/json",
                                                      "authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        return json.load(r)
                except urllib.error.HTTPError as e:
                    return json.load(e)

            def wait(dep):
                if "id" not in dep:
                    raise SystemExit(f"ferry refused: {dep}")
                while True:
                    req = urllib.request.Request(f"{base}/api/deployments/{dep['id']}",
                                                 headers={"authorization": f"Bearer {token}"})
                    with urllib.request.urlopen(req, timeout=30) as r:
                        d = json.load(r)["deployment"]
                    if d["state"] not in ("queued", "running", "monitoring"):
                        return d
                    time.sleep(0.05)

            first = wait(call("/api/deployments", {"environment": "production", "ref": "v1.0.0"}))
            assert first["state"] == "succeeded", first
            load = Load(env_port)
            started = time.monotonic()
            load.start()
            outcomes = Counter()
            for i in range(DEPLOYS):
                ref = "v1.1.0" if i % 2 == 0 else "v1.0.0"
                d = wait(call("/api/deployments", {"environment": "production", "ref": ref}))
                outcomes[f"deploy {d['state']}"] += 1
            for i in range(ROLLBACKS):
                # a rollback marks the release it leaves as bad: name the target each time
                to = "v1.1.0" if i % 2 == 0 else "v1.0.0"
                d = wait(call("/api/environments/production/rollback", {"reason": "load bench", "to": to}))
                outcomes[f"rollback {d['state']}"] += 1
            load.finish()
            took = time.monotonic() - started
        finally:
            serve.terminate()
            serve.wait(timeout=30)

    print(f"ferry load bench: {CONNECTIONS} keep-alive connections through the proxy, "
          f"{DEPLOYS} deploys then {ROLLBACKS} rollbacks, {took:.1f} s")
    print(f"  switches:          {dict(outcomes)}")
    print(f"  total requests:    {load.total}  ({load.total / took:.0f}/s)")
    print(f"  failed requests:   {sum(load.failed.values())}  {dict(load.failed) or ''}  (goal: 0)")
    print(f"  answered by:       {dict(load.versions)}")


if __name__ == "__main__":
    main()
