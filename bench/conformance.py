#!/usr/bin/env python3
"""Runs the wire-level checks of tests/proxy_http.rs side by side against an nginx reverse
proxy and ferry's proxy, both in front of the same sample app (`ferry sample-app`), and prints
a table: check | nginx | ferry. Prints, never asserts (the tests assert).

    python3 bench/conformance.py                      # builds ferry --release
    FERRY_BIN=target/debug/ferry python3 bench/conformance.py   # skips the release build

nginx is configured as its documentation recommends for each feature (WebSocket `map`,
`proxy_buffering off` for event streams, `keepalive 8` upstream, `X-Forwarded-*` and
`X-Request-Id` set by `proxy_set_header`); ferry with its defaults plus the same body limit,
timeout and pool size. nginx and wrk come from apt when missing.
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

TIMEOUT = 10  # seconds a read may block before a check calls it held back
BODY_LIMIT_MB = 60
UPSTREAM_TIMEOUT_S = 2
KEEPALIVE = 8
IDLE_CLIENTS = int(os.environ.get("IDLE_CLIENTS", "2000"))


# --- the wire -------------------------------------------------------------------------------

class Conn:
    """A client connection with a read buffer."""

    def __init__(self, addr, timeout=TIMEOUT):
        host, port = addr.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data.encode("latin-1") if isinstance(data, str) else data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def line(self):
        while b"\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("latin-1")

    def exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def to_eof(self):
        while True:
            try:
                self._fill()
            except EOFError:
                out, self.buf = self.buf, b""
                return out

    def head(self):
        """Status and headers (names lower-case) of the next response."""
        status_line = self.line()
        status = int(status_line.split(" ")[1])
        headers = []
        while True:
            line = self.line()
            if not line:
                return status, headers
            name, value = line.split(":", 1)
            headers.append((name.strip().lower(), value.strip()))

    def response(self, head_request=False):
        status, headers = self.head()
        h = dict(headers)
        if head_request or status < 200 or status in (204, 304):
            body = b""
        elif "chunked" in h.get("transfer-encoding", ""):
            body = b""
            while True:
                size = int(self.line().split(";")[0], 16)
                chunk = self.exactly(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
        elif "content-length" in h:
            body = self.exactly(int(h["content-length"]))
        else:
            body = self.to_eof()
        return status, h, body

    def close(self):
        self.sock.close()


def exchange(addr, request, head_request=False):
    c = Conn(addr)
    try:
        c.send(request)
        return c.response(head_request)
    finally:
        c.close()


def get_json(addr, path):
    status, _, body = exchange(addr, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    if status != 200:
        raise AssertionError(f"{path}: {status}")
    return json.loads(body)


def received(addr, request):
    """Headers (lower-case names) the app got for `request` to /request, and its JSON."""
    status, _, body = exchange(addr, request)
    if status != 200:
        raise AssertionError(f"answered {status}")
    j = json.loads(body)
    return {n: v for n, v in j["headers"]}, j


class Fail(Exception):
    pass


def expect(cond, detail):
    if not cond:
        raise Fail(detail)


# --- the checks: each takes the proxy's host:port and raises Fail (or any error) -------------

def ws_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def ws_read(c):
    b0, b1 = c.exactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(c.exactly(2), "big")
    elif n == 127:
        n = int.from_bytes(c.exactly(8), "big")
    return c.exactly(n).decode()


def check_websocket(addr):
    c = Conn(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(f"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n")
    status, _ = c.head()
    expect(status == 101, f"answered {status}")
    ws_read(c)  # the version
    for word in ("hello", "again"):
        c.send(ws_frame(word))
        got = ws_read(c)
        expect(got == word, f"echo {got!r}")
    c.close()


def check_upgrade(addr):
    c = Conn(addr)
    c.send("GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: ferry-echo/1\r\n\r\n")
    status, headers = c.head()
    expect(status == 101, f"answered {status}")
    c.send(b"raw\x00bytes")
    expect(c.exactly(9) == b"raw\x00bytes", "no echo")
    c.close()


def check_sse(addr):
    c = Conn(addr)
    c.send("GET /sse?n=2&gap_ms=600000 HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    try:
        while b"data: 0\n\n" not in got:
            got += c.sock.recv(4096)
    except socket.timeout:
        raise Fail(f"first event held back {TIMEOUT}s")
    c.close()


def upload_chunks(mb):
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    for _ in range(mb):
        yield block


def check_upload(addr):
    mb = 50
    want = hashlib.sha256()
    for b in upload_chunks(mb):
        want.update(b)
    c = Conn(addr, timeout=60)
    c.send(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {mb << 20}\r\n\r\n")
    for b in upload_chunks(mb):
        c.send(b)
    status, _, body = c.response()
    expect(status == 200, f"answered {status}")
    expect(body.decode() == f"{want.hexdigest()} {mb << 20}\n", body[:80])


def check_download(addr):
    mb = 100
    block = bytes(j % 251 for j in range(65536))
    want = hashlib.sha256()
    for _ in range(mb * 16):
        want.update(block)
    c = Conn(addr, timeout=60)
    c.send(f"GET /download?mb={mb} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, _, body = c.response()
    expect(status == 200, f"answered {status}")
    expect(hashlib.sha256(body).hexdigest() == want.hexdigest(), f"{len(body)} bytes, wrong sum")


def check_continue(addr):
    c = Conn(addr)
    c.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    try:
        status, _ = c.head()
    except socket.timeout:
        raise Fail("no 100 Continue")
    expect(status == 100, f"answered {status} first")
    c.send("hello")
    status, _, body = c.response()
    expect(status == 200 and body.startswith(hashlib.sha256(b"hello").hexdigest().encode()),
           f"answered {status}")


def check_http10_close(addr):
    c = Conn(addr)
    c.send("GET /sse?n=3&gap_ms=10 HTTP/1.0\r\n\r\n")
    status, h, body = c.response()
    expect(status == 200, f"answered {status}")
    expect("transfer-encoding" not in h, "chunked to a 1.0 client")
    expect(body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n", repr(body[:40]))


def check_http10_keepalive(addr):
    c = Conn(addr)
    for i in range(2):
        c.send("GET /version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        try:
            status, _, _ = c.response()
        except EOFError:
            raise Fail(f"closed after request {i}")
        expect(status == 200, f"answered {status}")


def check_no_body(addr):
    c = Conn(addr)
    c.send("HEAD /download?mb=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    status, h, _ = c.response(head_request=True)
    expect(status == 200, f"HEAD answered {status}")
    for code in (204, 304):
        c.send(f"GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = c.response()
        expect(status == code, f"{code} answered {status}")
    c.send("GET /version HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, _, body = c.response()
    expect(status == 200 and b"version" in body, "a body where none belongs")


def check_pipelining(addr):
    c = Conn(addr)
    c.send("GET /request?n=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /request?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    first = json.loads(c.response()[2])["uri"]
    second = json.loads(c.response()[2])["uri"]
    expect((first, second) == ("/request?n=1", "/request?n=2"), f"{first}, {second}")


SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
SHAPES = [
    ("CL + TE", "POST /smuggle-1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("TE + CL", "POST /smuggle-2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                "Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("two differing CL", "POST /smuggle-3 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                         "Content-Length: 36\r\n\r\n" + SMUGGLED),
    ("CL list", "POST /smuggle-4 HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 36\r\n\r\n" + SMUGGLED),
    ("CL +36", "POST /smuggle-5 HTTP/1.1\r\nHost: t\r\nContent-Length: +36\r\n\r\n" + SMUGGLED),
    ("CL 3x", "POST /smuggle-6 HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\n" + SMUGGLED),
    ("CL -1", "POST /smuggle-7 HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n" + SMUGGLED),
    ("obs-fold", "GET /smuggle-8 HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n"),
    ("folded TE", "POST /smuggle-9 HTTP/1.1\r\nHost: t\r\nContent-Length: 36\r\n"
                  "Transfer-Encoding:\r\n chunked\r\n\r\n" + SMUGGLED),
    ("NUL in a value", "GET /smuggle-10 HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b\r\n\r\n"),
    ("space before colon", "POST /smuggle-11 HTTP/1.1\r\nHost: t\r\nContent-Length: 36\r\n"
                           "Transfer-Encoding : chunked\r\n\r\n" + SMUGGLED),
    ("control byte in a name", "GET /smuggle-12 HTTP/1.1\r\nHost: t\r\nX-B\x01d: 1\r\n\r\n"),
    ("TE chunked, identity", "POST /smuggle-13 HTTP/1.1\r\nHost: t\r\n"
                             "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("TE chunked twice", "POST /smuggle-14 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("TE gzip, chunked", "POST /smuggle-16 HTTP/1.1\r\nHost: t\r\n"
                         "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("TE xchunked", "POST /smuggle-15 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n"
                    "0\r\n\r\n" + SMUGGLED),
]


def smuggling_check(shape, request):
    """Refused (400, or 501 for a transfer coding not passed on) and never seen by the app."""
    marker = request.split(" ", 2)[1]
    # the request hidden in the body is told apart per shape
    request = request.replace("/smuggled", f"/smuggled-{marker.rsplit('-', 1)[1]}")
    smuggled = f"/smuggled-{marker.rsplit('-', 1)[1]}"

    def check(addr):
        try:
            status = exchange(addr, request)[0]
        except (EOFError, socket.timeout, ConnectionError) as e:
            status = f"no answer ({type(e).__name__})"
        seen = get_json(addr, "/seen")
        reached = [t for t in seen if t in (marker, smuggled)]
        expect(status in (400, 501) and not reached,
               f"{status}{', reached the app' if reached else ''}")
        return status
    return (f"smuggling: {shape}", check)


def check_504(addr):
    c = Conn(addr, timeout=UPSTREAM_TIMEOUT_S + 20)
    c.send("GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        status = c.head()[0]
    except socket.timeout:
        raise Fail("no answer")
    expect(status == 504, f"answered {status}")


def check_502(addr):
    try:
        status = exchange(addr, "GET /abort HTTP/1.1\r\nHost: t\r\n\r\n")[0]
    except EOFError:
        raise Fail("closed without an answer")
    expect(status == 502, f"answered {status}")


def check_forwarded(addr):
    h, _ = received(addr, f"GET /request HTTP/1.1\r\nHost: {addr}\r\n\r\n")
    missing = [n for n in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via",
                           "x-request-id") if n not in h]
    expect(not missing, "no " + ", ".join(missing))
    expect(h["x-forwarded-for"] == "127.0.0.1", h["x-forwarded-for"])
    expect(h["x-forwarded-host"] == addr, h["x-forwarded-host"])


def check_forwarded_sent(addr):
    h, _ = received(addr, "GET /request HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n"
                          "X-Request-Id: req-42\r\nVia: 1.0 fred\r\n\r\n")
    expect(h.get("x-forwarded-for") == "203.0.113.7, 127.0.0.1", f"XFF {h.get('x-forwarded-for')}")
    expect(h.get("x-request-id") == "req-42", f"id {h.get('x-request-id')}")
    expect(h.get("via", "").startswith("1.0 fred, "), f"Via {h.get('via')}")


def check_hop_by_hop(addr):
    h, _ = received(addr, "GET /request HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Hop\r\n"
                          "X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n"
                          "Upgrade: h2c\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
    leaked = [n for n in ("x-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization")
              if n in h]
    expect(not leaked, "leaked " + ", ".join(leaked))


def check_413(addr):
    c = Conn(addr)
    c.send(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {(BODY_LIMIT_MB + 10) << 20}\r\n\r\n")
    try:
        status = c.head()[0]
    except socket.timeout:
        raise Fail("no answer before the body")
    expect(status == 413, f"answered {status}")


def check_431(addr):
    request = f"GET /headers?big HTTP/1.1\r\nHost: t\r\nX-Big: {'b' * 40000}\r\n\r\n"
    try:
        status = exchange(addr, request)[0]
    except EOFError:
        status = "closed"
    reached = "/headers?big" in get_json(addr, "/seen")
    expect(status == 431 and not reached, f"{status}{', reached the app' if reached else ''}")


def check_absolute_form(addr):
    h, j = received(addr, "GET http://example.test/request?abs=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
    expect(j["uri"] == "/request?abs=1", f"uri {j['uri']}")
    expect(h.get("host") == "example.test", f"Host {h.get('host')}")


def check_idle_pool(addr):
    clients = []
    try:
        for _ in range(IDLE_CLIENTS):
            c = Conn(addr)
            c.send("GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
            clients.append(c)
        for c in clients:
            c.response()
        deadline = time.time() + 10
        while True:
            open_now = get_json(addr, "/conns")["open"]
            if open_now <= KEEPALIVE + 1 or time.time() > deadline:
                break
            time.sleep(0.2)
        expect(open_now <= KEEPALIVE + 1, f"app holds {open_now}")
        # idle, not gone: a sample of them makes its next request
        for c in clients[::100]:
            c.send("GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
            expect(c.response()[0] == 200, "an idle client was cut")
    finally:
        for c in clients:
            c.close()


CHECKS = [
    ("WebSocket 101 and echo", check_websocket),
    ("any Upgrade (101, raw echo)", check_upgrade),
    ("SSE event before the end", check_sse),
    ("50 MB upload, sha256", check_upload),
    ("100 MB download, sha256", check_download),
    ("Expect: 100-continue", check_continue),
    ("HTTP/1.0, read to EOF", check_http10_close),
    ("HTTP/1.0 keep-alive asked", check_http10_keepalive),
    ("HEAD/204/304 without body", check_no_body),
    ("pipelining in order", check_pipelining),
    *(smuggling_check(name, req) for name, req in SHAPES),
    (f"hanging upstream: 504 ({UPSTREAM_TIMEOUT_S}s)", check_504),
    ("broken upstream: 502", check_502),
    ("X-Forwarded-*, Via, request id", check_forwarded),
    ("XFF/Via extended, id kept", check_forwarded_sent),
    ("hop-by-hop removed", check_hop_by_hop),
    (f"body > {BODY_LIMIT_MB} MB: 413", check_413),
    ("headers > 32 KB: 431, unseen", check_431),
    ("absolute form → origin form", check_absolute_form),
    (f"{IDLE_CLIENTS} idle clients: app conns ≤ {KEEPALIVE}+1", check_idle_pool),
]


def run(check, addr):
    try:
        said = check(addr)
        return "ok" if said is None else f"ok ({said})"
    except Fail as e:
        return f"FAIL {e}"[:44]
    except Exception as e:  # a check that broke on the wire says how
        return f"FAIL {type(e).__name__}: {e}"[:44]


# --- the setup ------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream app {{ server 127.0.0.1:{backend}; keepalive {keepalive}; }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    map $http_x_request_id $req_id {{ default $http_x_request_id; '' $request_id; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {limit}m;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout {timeout}s;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $req_id;
        }}
    }}
}}
"""


def main():
    if not shutil.which("nginx"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                       "apt-get install -y -qq nginx >/dev/null", shell=True, check=True)
    ferry = os.environ.get("FERRY_BIN") or benchlib.build_ferry()
    ferry = os.path.abspath(ferry)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * IDLE_CLIENTS + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    tmp = tempfile.mkdtemp()
    procs = []
    app_pid = None
    try:
        benchlib.sample_repo(tmp, [("v1", "health_status = 200\n")])
        # nginx's backend: the same sample app, run directly
        backend_dir = os.path.join(tmp, "backend")
        os.mkdir(backend_dir)
        backend = benchlib.free_port()
        procs.append(subprocess.Popen(
            [ferry, "sample-app"], cwd=backend_dir,
            env={**os.environ, "PORT": str(backend), "APP_VERSION": "v1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        nginx_dir = os.path.join(tmp, "nginx")
        os.mkdir(nginx_dir)
        nginx_port = benchlib.free_port()
        with open(os.path.join(nginx_dir, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(dir=nginx_dir, backend=backend, port=nginx_port,
                                      keepalive=KEEPALIVE, limit=BODY_LIMIT_MB,
                                      timeout=UPSTREAM_TIMEOUT_S))
        procs.append(subprocess.Popen(
            ["nginx", "-p", nginx_dir, "-c", os.path.join(nginx_dir, "nginx.conf"),
             "-g", "daemon off;"], stderr=subprocess.DEVNULL))

        api, staging = benchlib.free_port(), benchlib.free_port()
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f"""[app]
name = "conformance"
repo = "repo"
start = "'{ferry}' sample-app"
[health]
paths = ["/health"]
interval = "50ms"
[environments.staging]
listen = "127.0.0.1:{staging}"
monitor = false
[server]
listen = "127.0.0.1:{api}"
[proxy]
upstream_timeout = "{UPSTREAM_TIMEOUT_S}s"
max_request_body = "{BODY_LIMIT_MB}MB"
upstream_keepalive = {KEEPALIVE}
max_connections = {want}
max_connections_per_client = {want}
header_timeout = "5m"
""")
        serve, _, _ = benchlib.start_serve(ferry, tmp, config, api)
        procs.append(serve)
        subprocess.run([ferry, "-c", config, "deploy", "staging", "v1"], check=True,
                       capture_output=True)
        targets = [("nginx", f"127.0.0.1:{nginx_port}"), ("ferry", f"127.0.0.1:{staging}")]
        # each port is the proxy this run started (a free port can be taken by someone else
        # between picking it and binding it)
        for (name, addr), proc in zip(targets, (procs[1], serve)):
            for _ in range(100):
                try:
                    status, h, _ = exchange(addr, "GET /version HTTP/1.1\r\nHost: t\r\n"
                                                  "Connection: close\r\n\r\n")
                    if status == 200:
                        break
                except (OSError, EOFError):
                    pass
                time.sleep(0.1)
            if proc.poll() is not None:
                sys.exit(f"{name} exited at start; see {tmp}")
            if name == "nginx" and not h.get("server", "").startswith("nginx"):
                sys.exit(f"{addr} is not this run's nginx (Server: {h.get('server')})")
        app_pid = get_json(targets[1][1], "/version")["pid"]

        nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
        print(f"{nginx_version.strip()}; ferry {ferry}")
        print(f"{'check':<38} | {'nginx':<44} | ferry")
        print("-" * 38 + "-+-" + "-" * 44 + "-+-" + "-" * 44)
        for name, check in CHECKS:
            results = [run(check, addr) for _, addr in targets]
            print(f"{name:<38} | {results[0]:<44} | {results[1]}", flush=True)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if app_pid:
            # serve leaves its apps running when it stops: this run's instance goes too
            try:
                os.kill(app_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
