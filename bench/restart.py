#!/usr/bin/env python3
"""Prints failed requests out of all (never asserts) while ferry itself is restarted under
load: 8 keep-alive clients request staging's proxy back to back through

  - a bare SIGTERM and a new `ferry serve` (nothing holds the sockets in between),
  - a SIGTERM restart with the sockets held as systemd holds them (tests/support/socket_activate.py),
  - `ferry upgrade` (the sockets handed over),
  - a `kill -9` with the sockets held as systemd holds them.

A failure is anything but a 200: a refused or reset new connection, a timeout, a cut
response. The one retry is what browsers and HTTP libraries do for an idempotent request: a
reused keep-alive connection closed before any byte of the response (counted as "retried").

    python3 bench/restart.py            # CLIENTS=8 LOAD_SECONDS=3 (of load before and after each)
"""

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

CLIENTS = int(os.environ.get("CLIENTS", "8"))
SECONDS = float(os.environ.get("LOAD_SECONDS", "3"))
HARNESS = os.path.join(benchlib.ROOT, "tests", "support", "socket_activate.py")


class Hammer:
    def __init__(self, port):
        self.port, self.stop = port, False
        self.ok = self.failed = self.retried = 0
        self.reasons = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def attempt(self, conn):
        """(outcome, connection to keep): outcome is 'ok', 'unanswered' (reused connection
        closed before any response byte) or a failure reason."""
        fresh = conn is None
        if fresh:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", "/version")
        except OSError as e:
            conn.close()
            return (f"send: {e}" if fresh else "unanswered"), None
        try:
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            conn.close()
            return (f"no response: {e!r}" if fresh else "unanswered"), None
        except Exception as e:  # noqa: BLE001
            conn.close()
            return f"response: {e!r}", None
        try:
            resp.read()
        except Exception as e:  # noqa: BLE001
            conn.close()
            return f"body: {e!r}", None
        if resp.status != 200:
            conn.close()
            return f"status {resp.status}", None
        if resp.will_close:
            conn.close()
            conn = None
        return "ok", conn

    def client(self):
        conn = None
        while not self.stop:
            outcome, conn = self.attempt(conn)
            retried = outcome == "unanswered"
            if retried:
                outcome, conn = self.attempt(None)
            with self.lock:
                self.retried += retried
                if outcome == "ok":
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.reasons) < 5:
                        self.reasons.append(outcome)
            if outcome != "ok":
                time.sleep(0.005)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self


def wait_health(api, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(api + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("ferry serve did not come up healthy")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def report(name, h):
    total = h.ok + h.failed
    why = f"   e.g. {h.reasons[:3]}" if h.reasons else ""
    print(f"{name:<34} failed {h.failed:>6} of {total:>6}   retried {h.retried:>3}{why}", flush=True)


def main():
    ferry = benchlib.build_ferry()
    tmp = tempfile.mkdtemp(prefix="ferry-restart-bench-")
    benchlib.sample_repo(tmp, [("v1", "health_status = 200\n")])
    api_port, staging = benchlib.free_port(), benchlib.free_port()
    api = f"http://127.0.0.1:{api_port}"
    config = os.path.join(tmp, "ferry.toml")
    with open(config, "w") as f:
        f.write(f"""[app]
name = "bench"
repo = "repo"
start = "'{ferry}' sample-app"
stop_timeout = "2s"
[health]
paths = ["/health"]
interval = "100ms"
startup_delay = "0s"
[environments.staging]
listen = "127.0.0.1:{staging}"
[server]
listen = "127.0.0.1:{api_port}"
""")
    log = open(os.path.join(tmp, "serve.log"), "a")

    def serve(*extra):
        p = subprocess.Popen([ferry, "serve", "-c", config, *extra], stdout=log, stderr=log)
        wait_health(api)
        return p

    def ferry_cmd(*args):
        subprocess.run([ferry, "-c", config, *args], check=True, capture_output=True)

    def serve_pid():
        return int(open(os.path.join(tmp, ".ferry", "serve.lock")).read().strip())

    print(f"== failed requests across restarts of ferry, {CLIENTS} keep-alive clients, "
          f"{SECONDS:g}s of load before and after each")
    first = serve()
    ferry_cmd("deploy", "staging", "v1")

    # a bare SIGTERM, then a new serve: nobody listens in between
    h = Hammer(staging)
    time.sleep(SECONDS)
    first.send_signal(signal.SIGTERM)
    first.wait()
    second = serve()
    time.sleep(SECONDS)
    report("SIGTERM + new serve (bare)", h.finish())

    # ferry upgrade: the sockets handed over
    h = Hammer(staging)
    time.sleep(SECONDS)
    ferry_cmd("upgrade", "--binary", ferry)
    time.sleep(SECONDS)
    report("ferry upgrade", h.finish())
    upgraded = serve_pid()
    os.kill(upgraded, signal.SIGTERM)
    second.wait()
    while alive(upgraded):
        time.sleep(0.05)

    # systemd holding the sockets: SIGTERM (systemctl restart), then kill -9
    pidfile = os.path.join(tmp, "serve.pid")
    harness = subprocess.Popen(
        [sys.executable, HARNESS, pidfile, f"api=127.0.0.1:{api_port}",
         f"staging=127.0.0.1:{staging}", "--", ferry, "serve", "-c", config],
        stdout=log, stderr=log)
    while not os.path.exists(pidfile):
        time.sleep(0.05)
    wait_health(api)
    for name, sig in (("SIGTERM, sockets held (systemd)", signal.SIGTERM),
                      ("kill -9, sockets held (systemd)", signal.SIGKILL)):
        h = Hammer(staging)
        time.sleep(SECONDS)
        old = int(open(pidfile).read())
        os.kill(old, sig)
        while alive(old) or int(open(pidfile).read()) == old:
            time.sleep(0.01)
        wait_health(api)
        time.sleep(SECONDS)
        report(name, h.finish())
    harness.send_signal(signal.SIGTERM)
    harness.wait()
    # the apps outlive serve by design: the last serve stops them
    p = serve("--stop-apps")
    p.send_signal(signal.SIGTERM)
    p.wait()
    subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
