#!/usr/bin/env bash
# Plugin cost and limit accuracy (run by bench/run.sh; ONLY=plugins runs it alone):
#  1. one gateway node, three routes to the same upstream: no plugins; key-auth +
#     limit-count (local) + prometheus; the same with limit-count's Redis policy
#     (127.0.0.1:6379) — against nginx `proxy_pass` in the same run, alternating rounds,
#     medians, wrk with the consumer's key on every request (the limits never refuse);
#  2. limit-count accuracy under 64 connections: admitted = requests - non-2xx, for the
#     local policy on one node and the Redis policy on two nodes (one limit per cluster).
# PERF=1 profiles the gateway on the plain and the plugin route instead (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
LIMIT=${LIMIT:-1000}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
source bench/lib.sh

cargo build --release -q -p portico
bin=target/release/portico
up_port=$(free_port); ngx_port=$(free_port); gw_port=$(free_port); gw2_port=$(free_port)
run_id="bench$$"

upstream_conf
cat > "$work/proxy.conf" <<NGX
daemon off; worker_processes $WORKERS; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:$up_port; keepalive 256; }
  server { listen 127.0.0.1:$ngx_port; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
taskset -c "$LOAD_CPUS" nginx -c "$work/upstream.conf" -p "$work" &
taskset -c "$PROXY_CPUS" nginx -c "$work/proxy.conf" -p "$work" &
ngx_pid=$!

start_etcd
key=bench-key-0001
key_hash="sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
ectl put /portico/instances/bench/consumers/bench "{\"id\":\"bench\",\"credentials\":[{\"type\":\"key-auth\",\"id\":\"k\",\"key_hash\":\"$key_hash\"}]}"
limit() { # policy count key_type
  local redis=""
  [ "$1" = redis ] && redis=",\"redis\":{\"url\":\"$REDIS_URL\",\"timeout_ms\":50}"
  echo "\"limit-count\":{\"count\":$2,\"time_window\":86400,\"key_type\":\"$3\",\"policy\":\"$1\"$redis}"
}
ectl put /portico/instances/bench/routes/plug "{\"id\":\"plug\",\"paths\":[\"/plug/*\"],\"upstream_id\":\"up\",\"plugins\":{\"key-auth\":{},$(limit local 1000000000 consumer),\"prometheus\":{}}}"
ectl put /portico/instances/bench/routes/redis "{\"id\":\"redis\",\"paths\":[\"/redis/*\"],\"upstream_id\":\"up\",\"plugins\":{\"key-auth\":{},$(limit redis 1000000000 consumer),\"prometheus\":{}}}"
ectl put /portico/instances/bench/routes/acc-local "{\"id\":\"acc-local\",\"paths\":[\"/acc-local/*\"],\"upstream_id\":\"up\",\"plugins\":{$(limit local "$LIMIT" constant)}}"
ectl put "/portico/instances/bench/routes/acc-redis-$run_id" "{\"id\":\"acc-redis-$run_id\",\"paths\":[\"/acc-redis/*\"],\"upstream_id\":\"up\",\"plugins\":{$(limit redis "$LIMIT" constant)}}"
ectl put /portico/instances/bench/meta '{"revision":2}'

start_gateway() { # port node-id
  PORTICO_LOG=warn taskset -c "$PROXY_CPUS" "$bin" gateway --listen "127.0.0.1:$1" --instance bench \
    --store "etcd://127.0.0.1:$etcd_port" --threads "$WORKERS" --no-snapshot --node-id "$2" > "$work/$2.log" 2>&1 &
}
start_gateway "$gw_port" node-1; gw_pid=$!
wait_port "$up_port"; wait_port "$ngx_port"; wait_port "$gw_port"
for _ in $(seq 100); do curl -fs -H "apikey: $key" "http://127.0.0.1:$gw_port/redis/x" >/dev/null && break; sleep 0.05; done
curl -fs -H "apikey: $key" "http://127.0.0.1:$gw_port/plug/x" >/dev/null || { echo "gateway does not serve the plugin route" >&2; cat "$work/node-1.log" >&2; exit 1; }

pid_of() { case $1 in nginx) echo "$ngx_pid";; *) echo "$gw_pid";; esac; }
path_of() { case $1 in nginx|plain) echo /api/x;; plugins) echo /plug/x;; redis) echo /redis/x;; esac; }
port_of() { case $1 in nginx) echo "$ngx_port";; *) echo "$gw_port";; esac; }
run_wrk() { # name round
  local url="http://127.0.0.1:$(port_of "$1")$(path_of "$1")"
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d3s -H "apikey: $key" "$url" >/dev/null
  local before; before=$(cpu_ns "$(pid_of "$1")")
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "apikey: $key" "$url" > "$out/plugins-$1-$2.txt"
  echo "cpu_ns $(( $(cpu_ns "$(pid_of "$1")") - before ))" >> "$out/plugins-$1-$2.txt"
}
# PERF=1: a CPU profile of the gateway (perf, software clock) under the plain and the
# plugin route's load, into bench/results/perf-{plain,plugins}.txt, then stop.
if [ -n "${PERF:-}" ]; then
  for p in plain plugins; do
    url="http://127.0.0.1:$gw_port$(path_of "$p")"
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d2s -H "apikey: $key" "$url" >/dev/null
    perf record -F 4999 -g -p "$gw_pid" -o "$work/perf-$p.data" -- sleep 6 >/dev/null 2>&1 &
    perf_pid=$!
    perf stat -x, -e syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait \
      -p "$gw_pid" -o "$out/perf-$p-syscalls.csv" -- sleep 6 >/dev/null 2>&1 &
    stat_pid=$!
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d6s -H "apikey: $key" "$url" > "$out/perf-$p-wrk.txt"
    wait "$perf_pid" "$stat_pid"
    cp "$work/perf-$p.data" "$out/perf-$p.data"
    perf report -i "$work/perf-$p.data" --no-children --percent-limit 0.02 --stdio -g none \
      > "$out/perf-$p.txt" 2>/dev/null
    echo "profile of the $p route: $out/perf-$p.txt"
  done
  exit 0
fi
# ONLY_ACCURACY=1 skips the throughput rounds.
if [ -z "${ONLY_ACCURACY:-}" ]; then
for round in $(seq "$ROUNDS"); do
  for p in nginx plain plugins redis; do run_wrk "$p" "$round"; done
done
summary() { # name -> "rps p99_ms cpu_us non2xx" per round
  for round in $(seq "$ROUNDS"); do
    python3 - "$out/plugins-$1-$round.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
v = re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1)
n, unit = float(re.sub("[a-z]+", "", v)), re.sub("[0-9.]+", "", v)
requests = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
cpu_us = int(re.search(r"^cpu_ns (\d+)", text, re.M).group(1)) / 1000 / requests
print(rps, n * {"us": 0.001, "ms": 1, "s": 1000}[unit], round(cpu_us, 2), int(bad.group(1)) if bad else 0)
PY
  done
}
median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
for p in nginx plain plugins redis; do summary "$p" > "$out/plugins-rounds-$p.txt"; done
col() { awk -v c="$2" '{print $c}' "$out/plugins-rounds-$1.txt" | tr '\n' ' '; }
{
  echo "## plugin cost ($(date -u +%F), workers=$WORKERS, connections=$CONNECTIONS, $ROUNDS alternating rounds of $DURATION, medians)"
  printf '| route | requests/s | p99 (ms) | proxy CPU µs/request | non-2xx | rounds: requests/s |\n|---|---|---|---|---|---|\n'
  for p in nginx plain plugins redis; do
    case $p in nginx) name="nginx proxy_pass";; plain) name="portico, no plugins";; plugins) name="portico, key-auth + limit-count (local) + prometheus";; redis) name="portico, key-auth + limit-count (redis) + prometheus";; esac
    printf '| %s | %.0f | %.2f | %.2f | %s | %s |\n' "$name" "$(median $(col $p 1))" "$(median $(col $p 2))" "$(median $(col $p 3))" "$(col $p 4)" "$(col $p 1)"
  done
  # The ratios of the medians, then the medians of the ratios round by round (the two
  # sides of a pair are measured seconds apart, so a slow spell moves both).
  python3 - "$(col nginx 1)" "$(col plain 1)" "$(col plugins 1)" "$(col redis 1)" <<'PY'
import statistics, sys
n, plain, plug, redis = ([float(x) for x in a.split()] for a in sys.argv[1:])
m = statistics.median
def per_round(a, b):
    return m(x / y for x, y in zip(a, b))
print(f"ratios (medians): plugins/no plugins {m(plug)/m(plain):.2f}x, plugins/nginx {m(plug)/m(n):.2f}x, "
      f"redis/no plugins {m(redis)/m(plain):.2f}x, redis/nginx {m(redis)/m(n):.2f}x, no plugins/nginx {m(plain)/m(n):.2f}x")
print(f"per-round ratios (medians): plugins/no plugins {per_round(plug, plain):.2f}x, "
      f"plugins/nginx {per_round(plug, n):.2f}x, redis/no plugins {per_round(redis, plain):.2f}x")
PY
} | tee "$out/plugins.md"
fi

# Accuracy: 64 connections for 3 s against a limit of $LIMIT per day-long window.
admitted() { python3 - "$@" <<'PY'
import re, sys
total = 0
for path in sys.argv[1:]:
    text = open(path).read()
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total += requests - (int(bad.group(1)) if bad else 0)
print(total)
PY
}
taskset -c "$LOAD_CPUS" wrk -t1 -c64 -d3s "http://127.0.0.1:$gw_port/acc-local/x" > "$out/acc-local.txt"
start_gateway "$gw2_port" node-2
wait_port "$gw2_port"
for _ in $(seq 100); do curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gw2_port/none" | grep -q 404 && break; sleep 0.05; done
sleep 1
taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d3s "http://127.0.0.1:$gw_port/acc-redis/x" > "$out/acc-redis-1.txt" &
w1=$!
taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d3s "http://127.0.0.1:$gw2_port/acc-redis/x" > "$out/acc-redis-2.txt" &
w2=$!
wait "$w1" "$w2"
redis-cli --scan --pattern "portico:limit-count:bench:route:acc-redis-$run_id:*" | xargs -r redis-cli del >/dev/null
{
  echo
  echo "## limit-count accuracy (limit $LIMIT per window, 64 connections, 3 s)"
  echo "| policy | nodes | requests | admitted | limit |"
  echo "|---|---|---|---|---|"
  echo "| local | 1 | $(grep -o '[0-9]* requests in' "$out/acc-local.txt" | cut -d' ' -f1) | $(admitted "$out/acc-local.txt") | $LIMIT per node |"
  echo "| redis | 2 | $(( $(grep -o '[0-9]* requests in' "$out/acc-redis-1.txt" | cut -d' ' -f1) + $(grep -o '[0-9]* requests in' "$out/acc-redis-2.txt" | cut -d' ' -f1) )) | $(admitted "$out/acc-redis-1.txt" "$out/acc-redis-2.txt") | $LIMIT per cluster |"
} | tee -a "$out/plugins.md"
