#!/usr/bin/env bash
# Prints figures (never asserts): HTTPS through ferry's front door vs through nginx terminating
# TLS with the same certificate, both proxying to the same nginx backend that ferry deployed as
# its app: requests/s and p99 on keep-alive connections (wrk), and TLS handshakes/s (wrk with
# `Connection: close`: one handshake per request). Only meaningful on a quiet machine: the
# load average is printed first.
#
#   bash bench/tls.sh            # DURATION=10s CONNECTIONS="64 256" by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64 256}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v openssl >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk openssl >/dev/null
fi
# FERRY_BIN=target/debug/ferry skips the release build (to try the script, not for figures)
if [[ -n ${FERRY_BIN:-} ]]; then
    FERRY=$(realpath "$FERRY_BIN")
else
    cargo build --release -q
    FERRY=$PWD/target/release/ferry
fi
work=$(mktemp -d)
chmod 711 "$work"
cleanup() {
    [[ -n ${serve_pid:-} ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    [[ -f $work/proxy/nginx.pid ]] && kill "$(cat "$work/proxy/nginx.pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); HTTP=$(free_port); HTTPS=$(free_port); NGINX_TLS=$(free_port)

# one certificate for both: ECDSA P-256, as Let's Encrypt issues by default
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

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
d="$HOME/nginx-$PORT"
mkdir -p "$d/logs"
sed "s/@PORT@/$PORT/" nginx.conf.in > "$d/nginx.conf"
exec nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;'
RUN
chmod +x "$work/repo/run.sh"
(cd "$work/repo" && git init -q -b main && git add . \
    && git -c user.name=b -c user.email=b@b commit -qm app && git tag v1)

cat > "$work/ferry.toml" <<TOML
[app]
name = "bench"
repo = "repo"
start = "./run.sh"
[health]
paths = ["/"]
interval = "10ms"
retries = 500
[environments.production]
hosts = ["localhost"]
tls = { cert = "cert.pem", key = "key.pem" }
[server]
listen = "127.0.0.1:$API"
http = "127.0.0.1:$HTTP"
https = "127.0.0.1:$HTTPS"
[proxy]
max_connections = 4096
max_connections_per_client = 4096
TOML

"$FERRY" serve --stop-apps -c "$work/ferry.toml" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "ferry serve did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
f() { "$FERRY" -c "$work/ferry.toml" "$@"; }
f deploy production v1 >/dev/null || { f deploy production v1; exit 1; }
BACKEND=$(f status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["port"])')

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
        listen 127.0.0.1:$NGINX_TLS ssl http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_session_cache off;
        ssl_session_tickets off;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
CONF
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf"

measure() {
    local name=$1 url=$2 conns=$3; shift 3
    wrk -t2 -c"$conns" -d3s "$@" "$url" >/dev/null 2>&1 || true  # warm up
    wrk -t2 -c"$conns" -d"$DURATION" --latency "$@" "$url" > "$work/wrk.out" 2>&1
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

for conns in $CONNECTIONS; do
    echo "== HTTPS keep-alive: wrk -t2, $conns connections, $DURATION (HTTP/1.1), same certificate, same backend"
    measure nginx-tls "https://localhost:$NGINX_TLS/" "$conns"
    measure ferry-tls "https://localhost:$HTTPS/" "$conns"
done
echo "== TLS handshakes: wrk -t2, 64 connections, Connection: close (a full handshake per request)"
measure nginx-hs "https://localhost:$NGINX_TLS/" 64 -H "Connection: close"
measure ferry-hs "https://localhost:$HTTPS/" 64 -H "Connection: close"
if command -v h2load >/dev/null; then
    echo "== HTTP/2: h2load -c 16 -m 16, 100000 requests"
    for pair in "nginx-h2 $NGINX_TLS" "ferry-h2 $HTTPS"; do
        set -- $pair
        h2load -c 16 -m 16 -n 100000 "https://localhost:$2/" 2>/dev/null \
            | awk -v n="$1" '/^finished in/ {rps=$4} /^requests:/ {fail=$10} END {printf "%-14s %10s req/s   failed %s\n", n, rps, fail}'
    done
fi
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
