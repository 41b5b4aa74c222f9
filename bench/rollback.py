#!/usr/bin/env python3
"""Rollback figures for ferry, printed (never asserted):

1. breach -> traffic on the warm previous instance (target: under 50 ms);
2. breach detection time against the interval x max_consecutive_failures bound;
3. a cold manual rollback (start, health, switch) minus the app's boot (target: under 1 s).

Usage: python3 bench/rollback.py [runs]   (builds ferry --release first; about a minute)
Everything runs on 127.0.0.1 in a temp dir and stops by itself.
"""

import os
import re
import statistics
import sys
import tempfile
import time

from benchlib import api, build_ferry, free_port, sample_repo, start_serve, ts, wait_done

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
INTERVAL_MS, MAX_FAILURES, FAIL_AFTER_MS, BOOT_MS = 200, 3, 1000, 300








def step(detail, name):
    return next(s for s in detail["steps"] if s["name"] == name)


def describe(label, values, unit, target=None):
    line = f"{label:<46} min {min(values):8.2f} {unit}  median {statistics.median(values):8.2f} {unit}  max {max(values):8.2f} {unit}"
    if target:
        line += f"   (target {target})"
    print(line)


def main():
    ferry = build_ferry()
    with tempfile.TemporaryDirectory() as tmp:
        sample_repo(tmp, [("v1.0.0", f"boot_ms = {BOOT_MS}\n"),
                          ("v2.0.0", f"boot_ms = {BOOT_MS}\nmessage = two\n"),
                          ("v3.0.0", f"fail_health_after_ms = {FAIL_AFTER_MS}\n")])
        api_port, mon_port, cold_port = free_port(), free_port(), free_port()
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
interval = "1s"
timeout = "1s"

[monitor]
duration = "30s"
interval = "{INTERVAL_MS}ms"
max_consecutive_failures = {MAX_FAILURES}

[environments.monitored]
listen = "127.0.0.1:{mon_port}"

[environments.cold]
listen = "127.0.0.1:{cold_port}"
monitor = false

[server]
listen = "127.0.0.1:{api_port}"
""")
        serve, base, token = start_serve(ferry, tmp, config, api_port)
        try:

            def deploy(env, ref):
                d = api(base, "/api/deployments", {"environment": env, "ref": ref})
                return wait_done(base, d["id"])

            # 1 and 2: warm rollback after a monitor breach
            first = deploy("monitored", "v1.0.0")
            assert first["deployment"]["state"] == "succeeded", first
            switch_ms, detect_ms = [], []
            for _ in range(RUNS):
                d = deploy("monitored", "v3.0.0")
                assert d["deployment"]["state"] == "rolled_back", d["deployment"]
                out = step(d, "monitor")["output"]
                switch_ms.append(float(re.search(r"\(kept warm\) ([\d.]+) ms after the breach", out).group(1)))
                started = ts(step(d, "start")["finished_at"])
                breach = ts(step(d, "monitor")["finished_at"])
                detect_ms.append((breach - started) * 1000 - FAIL_AFTER_MS)
            print(f"ferry rollback bench: {RUNS} runs each")
            describe("breach -> traffic on the warm instance", switch_ms, "ms", "< 50 ms")
            describe("breach detected after health starts failing", detect_ms, "ms",
                     f"bound interval x max_consecutive_failures = {INTERVAL_MS * MAX_FAILURES} ms")

            # 3: cold manual rollback, minus the app's boot
            deploy("cold", "v1.0.0")
            deploy("cold", "v2.0.0")
            cold_ms = []
            for i in range(RUNS):
                target = "v1.0.0" if i % 2 == 0 else "v2.0.0"
                asked = time.time()
                d = api(base, "/api/environments/cold/rollback", {"to": target, "reason": "bench"})
                d = wait_done(base, d["id"])
                assert d["deployment"]["state"] == "succeeded", d["deployment"]
                live = ts(step(d, "switch")["finished_at"])
                cold_ms.append((live - asked) * 1000)
            describe("cold manual rollback, request -> switched", cold_ms, "ms")
            describe(f"  minus the app's boot ({BOOT_MS} ms)", [c - BOOT_MS for c in cold_ms], "ms", "< 1000 ms")
        finally:
            serve.terminate()
            serve.wait(timeout=30)


if __name__ == "__main__":
    main()
