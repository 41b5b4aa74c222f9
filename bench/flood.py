#!/usr/bin/env python3
"""What a flood of half-open connections costs ferry's other clients, printed (never asserted).

Two environments and the API. Request latency (p50/p99 of 200 sequential requests on fresh
connections) to the quiet environment's proxy, to the flooded one's and to the API is measured
before, then while FLOOD half-open connections are held on the flooded proxy and API_FLOOD on
the API (every other one sending half a header) and a thread keeps opening more. Also printed:
how long ferry took to take the flood, and its connection counters from /metrics.

Usage: python3 bench/flood.py [flood] [api_flood]
       (builds ferry --release first, or takes FERRY_BIN; about a minute)
Everything runs on 127.0.0.1 in a temp dir and stops by itself.
"""

import os
import resource
import socket
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import build_ferry, free_port, sample_repo, sh, start_serve

FLOOD = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
API_FLOOD = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
SAMPLES = 200


def latencies(url, token=None):
    """Milliseconds of SAMPLES GETs, each on a new connection; errors counted apart."""
    times, errors = [], 0
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for _ in range(SAMPLES):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
                r.read()
            times.append((time.perf_counter() - started) * 1000)
        except OSError:
            errors += 1
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")
    return pick(0.5), pick(0.99), errors


def half_open(port, n):
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2 == 0:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: flood\r\nX-Half: ")
            except OSError:
                pass
        conns.append(s)
    return conns


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + API_FLOOD + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    # FERRY_BIN: an already built binary (the debug one, say) instead of building --release
    ferry = os.environ.get("FERRY_BIN") or build_ferry()
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [("v1.0.0", "message = flood\n")])
        api_port, quiet_port, flooded_port = free_port(), free_port(), free_port()
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "flood"
repo = "repo"
start = "'{ferry}' sample-app"

[health]
paths = ["/health"]
interval = "100ms"

[environments.quiet]
listen = "127.0.0.1:{quiet_port}"

[environments.flooded]
listen = "127.0.0.1:{flooded_port}"

[server]
listen = "127.0.0.1:{api_port}"
""")
        try:
            serve, base, token = start_serve(ferry, tmp, config, api_port)
        except OSError:
            raise SystemExit("ferry serve did not start:\n" + open(os.path.join(tmp, "serve.log")).read())
        try:
            for env in ("quiet", "flooded"):
                sh(tmp, ferry, "-c", config, "deploy", env, "v1.0.0")
            targets = {
                "quiet proxy": (f"http://127.0.0.1:{quiet_port}/", None),
                "flooded proxy": (f"http://127.0.0.1:{flooded_port}/", None),
                "API": (f"{base}/api/environments", token),
            }
            before = {name: latencies(*t) for name, t in targets.items()}
            started = time.perf_counter()
            flood = half_open(flooded_port, FLOOD)
            api_flood = half_open(api_port, API_FLOOD)
            took = time.perf_counter() - started
            stop = threading.Event()
            more = []

            def keep_flooding():
                while not stop.is_set():
                    more.extend(half_open(flooded_port, 50))
                    time.sleep(0.05)

            flooder = threading.Thread(target=keep_flooding, daemon=True)
            flooder.start()
            during = {name: latencies(*t) for name, t in targets.items()}
            stop.set()
            flooder.join()
            metrics_req = urllib.request.Request(f"{base}/metrics",
                                                 headers={"authorization": f"Bearer {token}"})
            with urllib.request.urlopen(metrics_req, timeout=10) as r:
                metrics = [l for l in r.read().decode().splitlines()
                           if l.startswith("ferry_connections_") and not l.endswith(" 0")]
            for s in flood + api_flood + more:
                s.close()
        finally:
            serve.terminate()
            serve.wait(timeout=30)

    print(f"ferry flood bench: {FLOOD} half-open connections to one proxy and {API_FLOOD} to the API "
          f"(taken in {took:.2f} s), {len(more)} more opened while measuring")
    print(f"  {'':15} {'before p50/p99 ms':>20} {'during p50/p99 ms':>20} {'errors':>8}")
    for name in targets:
        b, d = before[name], during[name]
        print(f"  {name:15} {b[0]:9.2f} /{b[1]:8.2f} {d[0]:9.2f} /{d[1]:8.2f} {b[2] + d[2]:8}")
    print("  counters:")
    for line in metrics:
        print(f"    {line}")


if __name__ == "__main__":
    main()
