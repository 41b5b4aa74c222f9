#!/usr/bin/env bash
# Prints figures (never asserts): throughput and latency through ferry's proxy, through an nginx
# reverse proxy and direct, all to the same nginx backend that ferry deployed as its app; the
# time from `ferry deploy` to switched for an already built release; idle RSS of `ferry serve`.
#
# Then, with 2,000 idle keep-alive clients that each made one request through ferry: the
# connections the app holds, and serve's RSS and descriptors.
#
#   bash bench/proxy.sh            # DURATION=10s CONNECTIONS="64 256" ROUNDS=3 by default
#   ONLY_METRICS=1 bash bench/proxy.sh   # only the metrics on vs off rounds
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64 256}
IDLE_CLIENTS=${IDLE_CLIENTS:-2000}
ROUNDS=${ROUNDS:-3}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
cargo build --release -q
FERRY=$PWD/target/release/ferry
work=$(mktemp -d)
# as root, ferry runs the app as another user, who must pass through to its release
chmod 711 "$work"
cleanup() {
    [[ -n ${serve_pid:-} ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    [[ -f $work/proxy/nginx.pid ]] && kill "$(cat "$work/proxy/nginx.pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); STAGING=$(free_port); PRODUCTION=$(free_port); NGINX_PROXY=$(free_port)

# the app: nginx answering a fixed body on $PORT, one worker
mkdir -p "$work/repo"
cat > "$work/repo/nginx.conf.in" <<'CONF'
worker_processes 1;
pid nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:@PORT@ reuseport;
        location / { return 200 "hello from the backend\n"; }
    }
}
CONF
cat > "$work/repo/run.sh" <<'RUN'
#!/bin/sh
# the release dir is read-only to the app: nginx's files go to a dir of its own
d="$HOME/nginx-$PORT"
mkdir -p "$d/logs"
sed "s/@PORT@/$PORT/" nginx.conf.in > "$d/nginx.conf"
exec nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;'
RUN
chmod +x "$work/repo/run.sh"
(cd "$work/repo" && git init -q -b main && git add . \
    && git -c user.name=b -c user.email=b@b commit -qm app && git tag v1 \
    && git -c user.name=b -c user.email=b@b commit -q --allow-empty -m two && git tag v2)

cat > "$work/ferry.toml" <<TOML
[app]
name = "bench"
repo = "repo"
start = "./run.sh"
[health]
paths = ["/"]
interval = "10ms"
retries = 500
[environments.staging]
listen = "127.0.0.1:$STAGING"
[environments.production]
listen = "127.0.0.1:$PRODUCTION"
# the same proxy without per-instance traffic figures: metrics on (staging) vs off, same run
traffic_metrics = false
[server]
listen = "127.0.0.1:$API"
[proxy]
# every bench client comes from 127.0.0.1: one client address may hold them all
max_connections = 4096
max_connections_per_client = 4096
TOML

# --stop-apps: the apps go with serve when the bench ends (they outlive it by default)
env ${SERVE_ENV:-} "$FERRY" serve --stop-apps -c "$work/ferry.toml" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
sleep 1
if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "ferry serve did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
rss_empty=$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status")

f() { "$FERRY" -c "$work/ferry.toml" "$@"; }
f deploy staging v1 >/dev/null || { f deploy staging v1; exit 1; }
f deploy production v1 >/dev/null
f deploy staging v2 >/dev/null
BACKEND=$(f status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[1]["port"])')

mkdir -p "$work/proxy/logs"
cat > "$work/proxy/nginx.conf" <<CONF
worker_processes auto;
pid $work/proxy/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server 127.0.0.1:$BACKEND; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PROXY;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf"

measure() {
    local name=$1 url=$2 conns=$3
    wrk -t2 -c"$conns" -d3s "$url" >/dev/null 2>&1 || true  # warm up
    wrk -t2 -c"$conns" -d"$DURATION" --latency "$url" > "$work/wrk.out" 2>&1
    python3 - "$name" "$work/wrk.out" <<'PY'
import re, sys
name, text = sys.argv[1], open(sys.argv[2]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
dist = text.split("Latency Distribution", 1)[1]
p50 = re.search(r"50%\s+(\S+)", dist).group(1)
p99 = re.search(r"99%\s+(\S+)", dist).group(1)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
print(f"{name:<16} {float(rps):>10.0f} req/s   p50 {p50:>8}   p99 {p99:>8}   non-2xx {errors.group(1) if errors else 0}{'   socket errors: ' + sock.group(1) if sock else ''}")
PY
}

for conns in $CONNECTIONS; do
    [[ -n ${ONLY_METRICS:-} ]] && break
    echo "== proxy throughput: wrk -t2, $conns connections, $DURATION, one nginx backend (1 worker); nginx proxy: worker_processes auto, keepalive 64"
    measure direct "http://127.0.0.1:$BACKEND/" "$conns"
    measure nginx-proxy "http://127.0.0.1:$NGINX_PROXY/" "$conns"
    measure ferry-proxy "http://127.0.0.1:$STAGING/" "$conns"
done

# traffic figures on (staging) vs off (production, traffic_metrics = false): two identical
# nginx backends, measured in turn, ROUNDS times each
echo "== ferry proxy with per-instance traffic metrics on vs off, $ROUNDS rounds each, ${DURATION}"
for conns in $CONNECTIONS; do
    for round in $(seq "$ROUNDS"); do
        measure "metrics-on/$conns" "http://127.0.0.1:$STAGING/" "$conns"
        measure "metrics-off/$conns" "http://127.0.0.1:$PRODUCTION/" "$conns"
    done
done
[[ -n ${ONLY_METRICS:-} ]] && exit 0

echo "== connections ferry's proxy opened to the app during all of the above (its pool's churn)"
curl -sf -H "authorization: Bearer $(cat "$work/.ferry/local-token")" "http://127.0.0.1:$API/metrics" \
    | grep -E '^ferry_upstream_connections(_opened_total)?\{environment="staging"' || true

echo "== $IDLE_CLIENTS idle keep-alive clients, one request each through ferry's proxy"
python3 - "$STAGING" "$BACKEND" "$serve_pid" "$IDLE_CLIENTS" <<'PY'
import os, resource, socket, sys, time
port, backend, pid, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1024)), hard))
def app_conns():
    # serve's own connections to the backend: its socket inodes whose peer is the backend port
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[2].split(":")[1], 16) == backend and parts[3] == "01" and parts[9] in inodes:
                    count += 1
    return count
def serve_figures():
    rss = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
    return int(rss) // 1024, len(os.listdir(f"/proc/{pid}/fd"))
before = app_conns(), *serve_figures()
clients = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"backend\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    clients.append(s)
time.sleep(1)
after = app_conns(), *serve_figures()
print(f"before: app connections {before[0]:>5}   serve RSS {before[1]:>4} MiB   serve fds {before[2]:>5}")
print(f"after:  app connections {after[0]:>5}   serve RSS {after[1]:>4} MiB   serve fds {after[2]:>5}   ({len(clients)} clients open)")
PY

echo "== deploy of an already built release, to switched (from the store's timestamps)"
for tag in v1 v2 v1 v2 v1; do
    f deploy staging "$tag" --json > "$work/deploy.json"
    python3 - "$tag" "$work/deploy.json" <<'PY'
import json, sys
from datetime import datetime
d = json.load(open(sys.argv[2]))
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
steps = {s["name"]: s for s in d["steps"]}
created = t(d["deployment"]["created_at"])
switched = t(steps["switch"]["finished_at"])
boot = t(steps["health"]["finished_at"]) - t(steps["start"]["started_at"])
total = (switched - created).total_seconds() * 1000
print(f"{sys.argv[1]:<4} build={steps['build']['state']:<8} request→switched {total:7.1f} ms   app boot (start→healthy) {boot.total_seconds()*1000:6.1f} ms   ferry's own time {total - boot.total_seconds()*1000:6.1f} ms")
PY
done

sleep 2
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status")
echo "== ferry serve RSS with two environments: at start $((rss_empty / 1024)) MiB (${rss_empty} kB), idle after deploys $((rss_idle / 1024)) MiB (${rss_idle} kB)"

# failed requests across restarts of ferry itself (a SIGTERM, an upgrade, a kill -9 under
# socket activation): bench/restart.py runs its own ferry
python3 bench/restart.py
