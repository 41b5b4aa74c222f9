#!/usr/bin/env python3
"""Traffic rules figures for ferry, printed (never asserted): the time from a 5xx burst
starting (the first failed response a client gets from a new release that fails half of its
requests) to traffic back on the old instance (the first response from the old release after
the new release's last answer), as the clients see it; and the failed requests each time. The monitor's own figure (breach
-> traffic switched back) is printed beside it.

Usage: python3 bench/traffic.py [runs]   (builds ferry --release first; about a minute)
CLIENTS (8) clients request the environment through ferry's proxy back to back (keep-alive).
Everything runs on 127.0.0.1 in a temp dir and stops by itself.
"""

import http.client
import os
import re
import statistics
import sys
import tempfile
import threading
import time

from benchlib import api, build_ferry, free_port, sample_repo, start_serve, wait_done

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
CLIENTS = int(os.environ.get("CLIENTS", "8"))






class Clients:
    """Clients requesting `/` until stopped, each response noted as (time, status, version)."""

    def __init__(self, port):
        self.port, self.stop, self.lock = port, False, threading.Lock()
        self.seen = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                m = re.search(r"from (\S+) \(", body)
                with self.lock:
                    self.seen.append((time.monotonic(), r.status, m.group(1) if m else None))
            except (OSError, http.client.HTTPException):
                conn = None
                with self.lock:
                    self.seen.append((time.monotonic(), 0, None))

    def take(self):
        with self.lock:
            seen, self.seen = self.seen, []
        return seen

    def close(self):
        self.stop = True
        for t in self.threads:
            t.join()


def main():
    ferry = build_ferry()
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [("v1", "message = one\n"), ("v2", "error_percent = 50\n")])
        api_port, port = free_port(), free_port()
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "bench"
repo = "repo"
start = "'{ferry}' sample-app"
stop_timeout = "2s"
drain_timeout = "2s"

[health]
paths = ["/health"]
interval = "100ms"
timeout = "1s"

[monitor]
duration = "30s"
interval = "5s"
max_error_rate = 0.05
min_requests = 20
window = "10s"

[environments.staging]
listen = "127.0.0.1:{port}"

[server]
listen = "127.0.0.1:{api_port}"
""")
        serve, base, token = start_serve(ferry, tmp, config, api_port)
        clients = None
        try:
            d = api(base, "/api/deployments", {"environment": "staging", "ref": "v1"})
            assert wait_done(base, d["id"])["deployment"]["state"] == "succeeded"
            clients = Clients(port)
            back_ms, switch_ms, failed, total = [], [], [], []
            for _ in range(RUNS):
                time.sleep(2)
                clients.take()
                d = api(base, "/api/deployments", {"environment": "staging", "ref": "v2"})
                d = wait_done(base, d["id"])
                assert d["deployment"]["state"] == "rolled_back", d["deployment"]
                time.sleep(0.5)
                seen = sorted(clients.take())
                first_fail = next(t for t, status, _ in seen if status != 200)
                # the last answer of the new release (its 500s, or its 200s), then the old one's
                last_new = max(t for t, status, v in seen if status != 200 or v == "v2")
                back = next(t for t, status, v in seen if t > last_new and v == "v1")
                back_ms.append((back - first_fail) * 1000)
                failed.append(sum(1 for _, status, _ in seen if status != 200))
                total.append(len(seen))
                out = next(s for s in d["steps"] if s["name"] == "monitor")["output"]
                switch_ms.append(float(re.search(r"([\d.]+) ms after the breach", out).group(1)))
            print(f"ferry traffic rules bench: {RUNS} runs, {CLIENTS} keep-alive clients, "
                  f"a release failing 50% of requests, max_error_rate 5%, min_requests 20")
            for label, values in [("first 5xx -> only the old instance answers", back_ms),
                                  ("breach -> traffic switched back (monitor)", switch_ms)]:
                print(f"{label:<48} min {min(values):8.1f} ms  median {statistics.median(values):8.1f} ms"
                      f"  max {max(values):8.1f} ms")
            print(f"failed requests per burst: {', '.join(f'{f} of {t}' for f, t in zip(failed, total))}")
        finally:
            if clients:
                clients.close()
            serve.terminate()
            serve.wait(timeout=30)


if __name__ == "__main__":
    main()
