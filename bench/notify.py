#!/usr/bin/env python3
"""Notification figures, printed (never asserted):

1. how long a deploy takes with no notifier, with a webhook that answers at once, with one
   that is down (nothing listens on its port) and with one that accepts the connection and
   never answers: a notifier must never delay a deployment, so the four should match;
2. how soon a healthy webhook hears of a deploy: from the deployment's `finished_at` to the
   receiver getting its `deploy.succeeded`.

Usage: python3 bench/notify.py [runs]   (builds ferry --release first; about a minute)
Each case runs its own `ferry serve` in a temp dir on 127.0.0.1 and stops by itself.
"""

import http.server
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

from benchlib import api, build_ferry, free_port, sample_repo, start_serve, ts, wait_done

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


class Receiver:
    """A webhook receiver on 127.0.0.1 noting when each (event, deployment) arrived."""

    def __init__(self):
        got = self.got = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                got[(body.get("event"), body.get("deployment"))] = time.time()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """Accepts connections and never answers (the backlog holds them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def run_case(ferry, label, notify_port):
    """RUNS deploys alternating v1/v2 under one serve; the durations and the deployments."""
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [("v1.0.0", "boot_ms = 50\n"), ("v2.0.0", "boot_ms = 50\nmessage = two\n")])
        api_port, env_port = free_port(), free_port()
        notify = "" if notify_port is None else f"""
[[notify]]
url = "http://127.0.0.1:{notify_port}/hook"
"""
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "bench"
repo = "repo"
start = "'{ferry}' sample-app"
stop_timeout = "2s"
drain_timeout = "1s"

[health]
paths = ["/health"]
interval = "100ms"
timeout = "1s"

[environments.staging]
listen = "127.0.0.1:{env_port}"
monitor = false

[server]
listen = "127.0.0.1:{api_port}"
{notify}""")
        serve, base, _token = start_serve(ferry, tmp, config, api_port)
        took, done = [], []
        try:
            # the first deploy builds both releases' trees; it is not counted
            for i in range(RUNS + 2):
                ref = "v1.0.0" if i % 2 == 0 else "v2.0.0"
                d = api(base, "/api/deployments", {"environment": "staging", "ref": ref})
                d = wait_done(base, d["id"])["deployment"]
                assert d["state"] == "succeeded", d
                if i >= 2:
                    took.append((ts(d["finished_at"]) - ts(d["created_at"])) * 1000)
                    done.append(d)
            if notify_port is not None:
                time.sleep(1)  # the last deploy's messages are sent before serve stops
        finally:
            serve.terminate()
            serve.wait(timeout=60)
        line = f"{label:<44} median {statistics.median(took):7.0f} ms  max {max(took):7.0f} ms"
        print(line, flush=True)
        return took, done


def main():
    ferry = build_ferry()
    print(f"ferry notification bench: {RUNS} deploys per case (no build: releases reused)")
    run_case(ferry, "deploy, no notifier", None)
    receiver = Receiver()
    try:
        _, deploys = run_case(ferry, "deploy, a webhook answering at once", receiver.port)
        lag = [(receiver.got[("deploy.succeeded", d["id"])] - ts(d["finished_at"])) * 1000
               for d in deploys if ("deploy.succeeded", d["id"]) in receiver.got]
        if lag:
            print(f"{'  finished -> receiver has deploy.succeeded':<44} median {statistics.median(lag):7.1f} ms"
                  f"  max {max(lag):7.1f} ms  ({len(lag)}/{len(deploys)} heard)")
        else:
            print("  the receiver heard of no deploy")
    finally:
        receiver.close()
    run_case(ferry, "deploy, a webhook that is down", free_port())
    silent = Silent()
    try:
        run_case(ferry, "deploy, a webhook that never answers", silent.port)
    finally:
        silent.close()


if __name__ == "__main__":
    main()
