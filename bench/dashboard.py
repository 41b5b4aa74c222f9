#!/usr/bin/env python3
"""Dashboard page times with 1,000 deployments in history, printed (never asserted).

Fills a real ferry store with 1,000 deployments of 12 steps each and 6 hours of health probes,
then times the overview, an environment page (first and last history page, with the health
chart) and a deployment page from a client on 127.0.0.1. The client-side time includes the
loopback round trip, so it is an upper bound on server time (target: under 50 ms).

Usage: python3 bench/dashboard.py [requests per page]   (builds ferry --release first)
Everything runs on 127.0.0.1 in a temp dir and stops by itself.
"""

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from benchlib import build_ferry, free_port, sample_repo, start_serve

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
DEPLOYMENTS = 1000
STEPS = ["resolve", "policy", "lock", "prepare", "build", "test", "backup", "start", "health",
         "switch", "monitor", "finish"]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fill(db):
    """1,000 finished deployments with their steps, and 6 h of probes every 10 s."""
    conn = sqlite3.connect(db, timeout=30)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    with conn:
        for i in range(DEPLOYMENTS):
            at = start + timedelta(minutes=40 * i)
            state = "failed" if i % 17 == 0 else "succeeded"
            cur = conn.execute(
                "INSERT INTO deployments (environment, kind, git_ref, commit_sha, version, release,"
                " state, step, reason, triggered_by, created_at, finished_at)"
                " VALUES ('staging', 'deploy', ?, ?, ?, ?, ?, NULL, NULL, 'bench', ?, ?)",
                (f"v0.{i}.0", f"{i:040x}", f"v0.{i}.0", f"v0.{i}.0-{i:07x}", state,
                 iso(at), iso(at + timedelta(seconds=42))))
            dep = cur.lastrowid
            for n, name in enumerate(STEPS):
                conn.execute(
                    "INSERT INTO steps (deployment_id, name, state, started_at, finished_at, output)"
                    " VALUES (?, ?, 'ok', ?, ?, ?)",
                    (dep, name, iso(at + timedelta(seconds=3 * n)),
                     iso(at + timedelta(seconds=3 * n + 2)), f"{name} output line\n" * 20))
        now = datetime.now(timezone.utc)
        for k in range(6 * 360):
            conn.execute(
                "INSERT INTO probes (environment, at, ok, response_ms) VALUES ('staging', ?, ?, ?)",
                (iso(now - timedelta(seconds=10 * k)), 0 if k % 97 == 0 else 1, 1.0 + k % 7))
    conn.close()


def timed(url):
    times = []
    for _ in range(REQUESTS):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
            assert r.status == 200
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times


def main():
    ferry = build_ferry()
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [("v1.0.0", "health_status = 200\n")])
        api_port, env_port, prod_port = free_port(), free_port(), free_port()
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "bench"
repo = "repo"
start = "'{ferry}' sample-app"

[health]
paths = ["/health"]
interval = "100ms"

[environments.staging]
listen = "127.0.0.1:{env_port}"

[environments.production]
listen = "127.0.0.1:{prod_port}"
requires = "staging"

[server]
listen = "127.0.0.1:{api_port}"
open_reads = true  # the pages are read without a session: rendering is measured, not sign-in
""")
        serve, base, token = start_serve(ferry, tmp, config, api_port)
        try:
            req = urllib.request.Request(
                base + "/api/deployments", method="POST",
                data=json.dumps({"environment": "staging", "ref": "v1.0.0"}).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
            dep = json.load(urllib.request.urlopen(req, timeout=30))["id"]
            while json.load(urllib.request.urlopen(urllib.request.Request(
                    f"{base}/api/deployments/{dep}", headers={"authorization": f"Bearer {token}"})))[
                    "deployment"]["state"] in ("queued", "running"):
                time.sleep(0.05)
            fill(os.path.join(tmp, ".ferry", "ferry.db"))
            pages = [("overview /", "/"),
                     ("environment, history page 1", "/environments/staging"),
                     ("environment, last history page", "/environments/staging?page=41"),
                     ("environment, 72 h chart", "/environments/staging?hours=72"),
                     ("deployment page", "/deployments/500")]
            print(f"{DEPLOYMENTS} deployments x {len(STEPS)} steps, 2160 probes; "
                  f"{REQUESTS} requests per page, one at a time")
            for label, path in pages:
                timed(base + path)  # warm
                t = timed(base + path)
                p99 = t[min(len(t) - 1, int(len(t) * 0.99))]
                print(f"{label:<34} p50 {statistics.median(t):6.2f} ms   p99 {p99:6.2f} ms"
                      f"   max {t[-1]:6.2f} ms   (target < 50 ms)")
        finally:
            serve.terminate()
            serve.wait(timeout=30)


if __name__ == "__main__":
    main()
