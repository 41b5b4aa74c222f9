#!/usr/bin/env bash
# Prints figures (never asserts): throughput and latency through ferry's proxy, through an nginx
# reverse proxy and direct, all to the same nginx backend that ferry deployed as its app; the
# time from `ferry deploy` to switched for an already built release; idle RSS of `ferry serve`.
#
#   bash bench/proxy.sh            # DURATION=10s CONNECTIONS=64 by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
cargo build --release -q
FERRY=$PWD/target/release/ferry
work=$(mktemp -d)
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
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:@PORT@ reuseport;
        location / { return 200 "hello from the backend\n"; }
    }
}
CONF
cat > "$work/repo/run.sh" <<'RUN'
#!/bin/sh
mkdir -p logs
sed "s/@PORT@/$PORT/" nginx.conf.in > nginx.conf
exec nginx -p "$PWD" -c "$PWD/nginx.conf" -g 'daemon off;'
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
[server]
listen = "127.0.0.1:$API"
TOML

env ${SERVE_ENV:-} "$FERRY" serve -c "$work/ferry.toml" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
sleep 1
rss_empty=$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status")

f() { "$FERRY" -c "$work/ferry.toml" "$@"; }
f deploy staging v1 >/dev/null
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
    upstream app { server 127.0.0.1:$BACKEND; keepalive 128; }
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
    local name=$1 url=$2
    wrk -t2 -c"$CONNECTIONS" -d5s "$url" >/dev/null 2>&1 || true  # warm up
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$url" > "$work/wrk.out" 2>&1
    python3 - "$name" "$work/wrk.out" <<'PY'
import re, sys
name, text = sys.argv[1], open(sys.argv[2]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
dist = text.split("Latency Distribution", 1)[1]
p50 = re.search(r"50%\s+(\S+)", dist).group(1)
p99 = re.search(r"99%\s+(\S+)", dist).group(1)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
print(f"{name:<14} {float(rps):>10.0f} req/s   p50 {p50:>8}   p99 {p99:>8}   non-2xx {errors.group(1) if errors else 0}{'   socket errors: ' + sock.group(1) if sock else ''}")
PY
}

echo "== proxy throughput: wrk, $CONNECTIONS connections, $DURATION, one nginx backend (1 worker)"
measure direct "http://127.0.0.1:$BACKEND/"
measure nginx-proxy "http://127.0.0.1:$NGINX_PROXY/"
measure ferry-proxy "http://127.0.0.1:$STAGING/"

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
