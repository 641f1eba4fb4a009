#!/usr/bin/env bash
# HTTP/2 and TLS comparisons with nginx (run by bench/run.sh, or alone: bash
# bench/protocols.sh). One Portico gateway node and one nginx proxy, same upstream (an
# nginx `return 200`), one worker each, same run, alternating rounds, medians:
#  1. HTTP/2 with prior knowledge (h2c): h2load, 32 connections x 10 streams, against
#     nginx `listen ... http2` with keepalive_requests raised so connections are not
#     recycled;
#  2. TLS keep-alive: wrk over HTTPS (TLS 1.3, the same ECDSA P-256 certificate for
#     both), 64 connections;
#  3. TLS new handshakes: wrk with `Connection: close`, so every request is a new TCP
#     connection and TLS handshake.
# Each row also reports the proxy's own CPU time per request (schedstat of all its
# threads over the round). Loopback only; results in bench/results/protocols.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}        # seconds per measurement
ROUNDS=${ROUNDS:-3}
# TESTS: any of h2c tls-keepalive tls-handshake (default all)
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}

source bench/lib.sh

cargo build --release -q -p portico
bin=target/release/portico

# One ECDSA P-256 certificate for localhost, served by both.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

up_port=$(free_port); ngx_h2=$(free_port); ngx_tls=$(free_port)
gw_port=$(free_port); gw_tls=$(free_port)

upstream_conf
cat > "$work/proxy.conf" <<NGX
daemon off; worker_processes 1; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:$up_port; keepalive 256; }
  keepalive_requests 1000000;
  ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:$ngx_h2 http2; listen 127.0.0.1:$ngx_tls ssl http2;
    location /api/ { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
taskset -c "$LOAD_CPUS" nginx -c "$work/upstream.conf" -p "$work" &
taskset -c "$PROXY_CPUS" nginx -c "$work/proxy.conf" -p "$work" &
ngx_pid=$!

start_etcd
ectl put /portico/instances/bench/certificates/c1 "$(python3 -c 'import json,sys; print(json.dumps({"id":"c1","snis":["localhost"],"cert":open(sys.argv[1]).read(),"key":open(sys.argv[2]).read()}))' "$work/cert.pem" "$work/key.pem")"
ectl put /portico/instances/bench/meta '{"revision":1}'

PORTICO_LOG=warn taskset -c "$PROXY_CPUS" "$bin" gateway --listen "127.0.0.1:$gw_port" \
  --tls-listen "127.0.0.1:$gw_tls" --instance bench --store "etcd://127.0.0.1:$etcd_port" \
  --threads 1 --no-snapshot > "$work/gateway.log" 2>&1 &
gw_pid=$!
wait_port "$up_port"; wait_port "$ngx_h2"; wait_port "$ngx_tls"; wait_port "$gw_port"; wait_port "$gw_tls"
for _ in $(seq 100); do curl -fsk "https://localhost:$gw_tls/api/x" >/dev/null && break; sleep 0.05; done
curl -fsk "https://localhost:$gw_tls/api/x" >/dev/null || { echo "gateway does not serve TLS" >&2; cat "$work/gateway.log" >&2; exit 1; }

pid_of() { case $1 in nginx) echo "$ngx_pid";; *) echo "$gw_pid";; esac; }

# measure <test> <proxy> <round>: one line "requests_per_s cpu_us_per_request"
measure() {
  local test=$1 proxy=$2 port before file="$out/proto-$1-$2-$3.txt"
  case "$test-$proxy" in
    h2c-nginx) port=$ngx_h2;; h2c-portico) port=$gw_port;;
    tls*-nginx) port=$ngx_tls;; tls*-portico) port=$gw_tls;;
  esac
  before=$(cpu_ns "$(pid_of "$proxy")")
  case "$test" in
    h2c) taskset -c "$LOAD_CPUS" h2load -c 32 -m 10 -D "$DURATION" --warm-up-time=2 \
           "http://127.0.0.1:$port/api/x" > "$file" ;;
    tls-keepalive) taskset -c "$LOAD_CPUS" wrk -t1 -c64 -d"${DURATION}s" "https://localhost:$port/api/x" > "$file" ;;
    tls-handshake) taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d"${DURATION}s" -H "Connection: close" \
           "https://localhost:$port/api/x" > "$file" ;;
  esac
  echo "cpu_ns $(( $(cpu_ns "$(pid_of "$proxy")") - before ))" >> "$file"
  python3 - "$file" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
if m:  # wrk
    rps = float(m.group(1)); requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
else:  # h2load
    rps = float(re.search(r"finished in [^,]+, ([0-9.]+) req/s", text).group(1))
    requests = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    failed = int(re.search(r"(\d+) failed", text).group(1))
    if failed: print(f"warning: {failed} failed", file=sys.stderr)
cpu = int(re.search(r"^cpu_ns (\d+)", text, re.M).group(1)) / 1000 / max(requests, 1)
print(f"{rps:.0f} {cpu:.2f}")
PY
}

median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
{
  echo "## HTTP/2 and TLS ($(date -u +%F), one worker each, $ROUNDS alternating rounds of ${DURATION}s, medians)"
  printf '| test | proxy | requests/s | proxy CPU µs/request | rounds (requests/s) |\n|---|---|---|---|---|\n'
} | tee "$out/protocols.md"
for test in ${TESTS:-h2c tls-keepalive tls-handshake}; do
  : > "$work/$test-nginx"; : > "$work/$test-portico"
  for round in $(seq "$ROUNDS"); do
    for proxy in nginx portico; do measure "$test" "$proxy" "$round" >> "$work/$test-$proxy"; done
  done
  for proxy in nginx portico; do
    rps=$(median $(awk '{print $1}' "$work/$test-$proxy")); cpu=$(median $(awk '{print $2}' "$work/$test-$proxy"))
    echo "$rps $cpu" > "$work/$test-$proxy.median"
    printf '| %s | %s | %.0f | %.2f | %s |\n' "$test" "$proxy" "$rps" "$cpu" "$(awk '{print $1}' "$work/$test-$proxy" | tr '\n' ' ')" | tee -a "$out/protocols.md"
  done
  read -r n_rps n_cpu < "$work/$test-nginx.median"; read -r p_rps p_cpu < "$work/$test-portico.median"
  python3 -c "print(f'ratio portico/nginx, $test: throughput {$p_rps/$n_rps:.2f}x, CPU per request {$p_cpu/$n_cpu:.2f}x')" | tee -a "$out/protocols.md"
done
