#!/usr/bin/env bash
# Gateway benchmarks (run by `cargo xtask bench`):
#  1. proxy throughput and latency: one Portico gateway node vs nginx `proxy_pass`, same
#     upstream (an nginx `return 200`), same worker count, same run, measured by wrk;
#     plus a bare Pingora proxy (crates/gateway/examples/bare_pingora.rs, one worker) to
#     separate the engine's cost from Portico's;
#  2. config propagation: admin API call returning -> every gateway node of the
#     instance serving the change, p50/p99 over 200 changes with 10k routes, one
#     cluster and ten, on etcd and on Redis; the service registry: registration ->
#     traffic, TTL end -> removal (crates/portico/benches/propagation.rs;
#     ONLY=propagation runs it alone, SCENARIO=… picks scenarios);
#  3. the gateway with 1, 10k and 100k routes, and 10k routes replaced under load
#     (crates/portico/benches/dataplane.rs);
#  4. HTTP/2 (h2c) and TLS (keep-alive, new handshakes) against nginx
#     (bench/protocols.sh; ONLY=protocols runs it alone);
#  5. plugin cost (key-auth + limit-count + prometheus, local and Redis) against the
#     same route without plugins and nginx, and limit-count accuracy under 64
#     connections (bench/plugins.sh; ONLY=plugins runs it alone); the same routes'
#     cost in instructions per request under callgrind, which a busy machine does not
#     change (bench/plugin_instructions.sh; ONLY=plugin-instructions);
#  6. the admin's writes: changes/s through the API into SQLite and PostgreSQL, and
#     the time to apply a 10k-route YAML file (crates/portico/benches/admin_writes.rs;
#     ONLY=admin runs it alone).
#  7. the cross-cluster controller with 10 clusters × 1,000 endpoints
#     (crates/portico/benches/xcluster.rs; ONLY=xcluster runs it alone);
#  8. a gateway's kubernetes discovery over 10 clusters × 1,000 endpoints
#     (crates/gateway/benches/kubernetes.rs; ONLY=kubernetes runs it alone).
# The route table micro-benchmarks: cargo bench -p gateway --bench router.
# Loopback only. Results are printed and written to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${ONLY:-}" = protocols ] && exec bash bench/protocols.sh
[ "${ONLY:-}" = plugins ] && exec bash bench/plugins.sh
[ "${ONLY:-}" = plugin-instructions ] && exec bash bench/plugin_instructions.sh
[ "${ONLY:-}" = admin ] && exec cargo bench -q -p portico --bench admin_writes
if [ "${ONLY:-}" = xcluster ]; then
  mkdir -p bench/results
  cargo bench -q -p portico --bench xcluster | tee bench/results/xcluster.md
  exit "${PIPESTATUS[0]}"
fi
if [ "${ONLY:-}" = kubernetes ]; then
  mkdir -p bench/results
  cargo bench -q -p gateway --bench kubernetes | tee bench/results/kubernetes.md
  exit "${PIPESTATUS[0]}"
fi
if [ "${ONLY:-}" = propagation ]; then
  mkdir -p bench/results
  cargo bench -q -p portico --bench propagation 2>/dev/null | tee bench/results/propagation.md
  exit "${PIPESTATUS[0]}"
fi

WORKERS=${WORKERS:-1}          # worker threads of the gateway and worker processes of nginx
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}            # alternating rounds of the wrk comparison (medians reported)
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
# On 2 cores: the proxy under test gets core 0, wrk and the upstream share core 1.
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}

source bench/lib.sh

cargo build --release -q -p portico
cargo build --release -q -p gateway --example bare_pingora
cargo build --release -q -p testkit --example paced_load
bin=target/release/portico

up_port=$(free_port); ngx_port=$(free_port); gw_port=$(free_port); bare_port=$(free_port)

# The shared upstream and the reference proxy: one nginx config, two server blocks would
# share workers, so they run as two nginx processes.
upstream_conf
cat > "$work/proxy.conf" <<NGX
daemon off; worker_processes $WORKERS; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:$up_port; keepalive 256; }
  server { listen 127.0.0.1:$ngx_port; keepalive_requests 1000000;
    location /api/ { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
taskset -c "$LOAD_CPUS" nginx -c "$work/upstream.conf" -p "$work" &
taskset -c "$PROXY_CPUS" nginx -c "$work/proxy.conf" -p "$work" &
ngx_pid=$!

start_etcd
ectl put /portico/instances/bench/meta '{"revision":1}'

PORTICO_LOG=warn taskset -c "$PROXY_CPUS" "$bin" gateway --listen "127.0.0.1:$gw_port" --instance bench \
  --store "etcd://127.0.0.1:$etcd_port" --threads "$WORKERS" --no-snapshot > "$work/gateway.log" 2>&1 &
gw_pid=$!
taskset -c "$PROXY_CPUS" target/release/examples/bare_pingora "127.0.0.1:$bare_port" "127.0.0.1:$up_port" \
  > "$work/bare.log" 2>&1 &
bare_pid=$!
wait_port "$up_port"; wait_port "$ngx_port"; wait_port "$gw_port"; wait_port "$bare_port"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$gw_port/api/x" >/dev/null && break; sleep 0.05; done
curl -fs "http://127.0.0.1:$gw_port/api/x" >/dev/null || { echo "gateway does not serve the route" >&2; cat "$work/gateway.log" >&2; exit 1; }

pid_of() { case $1 in nginx) echo "$ngx_pid";; portico) echo "$gw_pid";; *) echo "$bare_pid";; esac; }
run_wrk() { # name port round
  taskset -c "$LOAD_CPUS" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d3s "http://127.0.0.1:$2/api/x" >/dev/null  # warm-up
  local before; before=$(cpu_ns "$(pid_of "$1")")
  taskset -c "$LOAD_CPUS" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2/api/x" > "$out/wrk-$1-$3.txt"
  # The proxy's own CPU per request: what the load core's saturation cannot blur.
  echo "cpu_ns $(( $(cpu_ns "$(pid_of "$1")") - before ))" >> "$out/wrk-$1-$3.txt"
}
# Rounds alternate between the proxies, so that this shared machine's drift from one
# minute to the next hits each of them alike; medians are reported.
for round in $(seq "$ROUNDS"); do
  run_wrk nginx "$ngx_port" "$round"
  run_wrk portico "$gw_port" "$round"
  run_wrk bare-pingora "$bare_port" "$round"
done

# name -> "rps p99_ms cpu_us_per_request" per round, one line each
rounds_of() {
  for round in $(seq "$ROUNDS"); do
    python3 - "$out/wrk-$1-$round.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
v = re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1)
n, unit = float(re.sub("[a-z]+", "", v)), re.sub("[0-9.]+", "", v)
requests = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = int(re.search(r"^cpu_ns (\d+)", text, re.M).group(1)) / 1000 / requests
print(rps, n * {"us": 0.001, "ms": 1, "s": 1000}[unit], round(cpu_us, 2))
PY
  done
}
median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
for p in nginx portico bare-pingora; do rounds_of "$p" > "$out/rounds-$p.txt"; done
col() { awk -v c="$2" '{print $c}' "$out/rounds-$1.txt" | tr '\n' ' '; }
n_rps=$(median $(col nginx 1)); p_rps=$(median $(col portico 1)); b_rps=$(median $(col bare-pingora 1))
n_p99=$(median $(col nginx 2)); p_p99=$(median $(col portico 2)); b_p99=$(median $(col bare-pingora 2))
n_cpu=$(median $(col nginx 3)); p_cpu=$(median $(col portico 3)); b_cpu=$(median $(col bare-pingora 3))
errors() { cat "$out"/wrk-"$1"-*.txt | awk -v p="$1" '/Non-2xx|Socket errors/ {print p": "$0}'; }
{
  echo "## proxy throughput ($(date -u +%F), workers=$WORKERS, connections=$CONNECTIONS, $ROUNDS alternating rounds of $DURATION, medians)"
  printf '| proxy | requests/s | p99 (ms) | proxy CPU µs/request | rounds: requests/s | rounds: p99 (ms) | rounds: CPU µs/request |\n|---|---|---|---|---|---|---|\n'
  printf '| nginx proxy_pass | %.0f | %.2f | %.2f | %s | %s | %s |\n' "$n_rps" "$n_p99" "$n_cpu" "$(col nginx 1)" "$(col nginx 2)" "$(col nginx 3)"
  printf '| portico gateway | %.0f | %.2f | %.2f | %s | %s | %s |\n' "$p_rps" "$p_p99" "$p_cpu" "$(col portico 1)" "$(col portico 2)" "$(col portico 3)"
  printf '| bare Pingora (reference, WORKERS ignored: 1) | %.0f | %.2f | %.2f | %s | %s | %s |\n' "$b_rps" "$b_p99" "$b_cpu" "$(col bare-pingora 1)" "$(col bare-pingora 2)" "$(col bare-pingora 3)"
  python3 -c "print(f'ratio portico/nginx (medians): throughput {float($p_rps)/float($n_rps):.2f}x, p99 {float($p_p99)/float($n_p99):.2f}x, CPU per request {float($p_cpu)/float($n_cpu):.2f}x')"
  python3 -c "print(f'ratio bare pingora/nginx: throughput {float($b_rps)/float($n_rps):.2f}x; portico/bare pingora: {float($p_rps)/float($b_rps):.2f}x')"
  errors nginx; errors portico; errors bare-pingora
} | tee "$out/throughput.md"

# Latency at the same offered rate for both: wrk's closed loop runs each proxy as fast
# as the load core allows, so the faster one also gets the load core's queueing in its
# p99. An open loop at fixed shares of nginx's maximum compares like with like; the
# proxies alternate at each rate. Above about 0.6 x the generator and the upstream
# saturate the load core themselves (p99s of 10-500 ms for either proxy, run to run).
RATE_SHARES=${RATE_SHARES:-0.25 0.5}
PACED_SECONDS=${PACED_SECONDS:-15}
paced() { taskset -c "$LOAD_CPUS" target/release/examples/paced_load "http://127.0.0.1:$1/api/x" "$2" "$CONNECTIONS" "$PACED_SECONDS" > "$out/paced-$3.txt"; }
field() { tr ' ' '\n' < "$out/paced-$1.txt" | awk -F= -v k="$2" '$1==k {print $2}'; }
{
  echo
  echo "## latency at fixed offered rates (shares of nginx's maximum, $CONNECTIONS connections, open loop, $PACED_SECONDS s each)"
  printf '| rate (req/s) | proxy | achieved req/s | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | errors |\n|---|---|---|---|---|---|---|---|---|\n'
} | tee -a "$out/throughput.md"
ratios=""
for share in $RATE_SHARES; do
  rate=$(python3 -c "print(int(float($n_rps) * $share))")
  paced "$ngx_port" "$rate" "nginx-$share"
  paced "$gw_port" "$rate" "portico-$share"
  for p in nginx portico; do
    printf '| %s (%s x) | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$rate" "$share" "$p" "$(field "$p-$share" rate)" \
      "$(field "$p-$share" p50_ms)" "$(field "$p-$share" p90_ms)" "$(field "$p-$share" p99_ms)" \
      "$(field "$p-$share" p999_ms)" "$(field "$p-$share" max_ms)" "$(field "$p-$share" errors)" | tee -a "$out/throughput.md"
  done
  ratios+=$(python3 -c "print(f' {$share} x: p99 {float($(field "portico-$share" p99_ms))/float($(field "nginx-$share" p99_ms)):.2f}x, p50 {float($(field "portico-$share" p50_ms))/float($(field "nginx-$share" p50_ms)):.2f}x;')")
done
echo "ratio portico/nginx at the same rate:$ratios" | tee -a "$out/throughput.md"

kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true

# ONLY=proxy stops here (the comparison with nginx alone).
[ "${ONLY:-}" = proxy ] && exit 0

echo
cargo bench -q -p portico --bench propagation 2>/dev/null | tee "$out/propagation.md"

echo
cargo bench -q -p portico --bench dataplane 2>/dev/null | tee "$out/dataplane.md"

echo
bash bench/protocols.sh

echo
bash bench/plugins.sh

echo
cargo bench -q -p portico --bench admin_writes 2>/dev/null | tee "$out/admin_writes.md"

echo
cargo bench -q -p portico --bench xcluster 2>/dev/null | tee "$out/xcluster.md"

echo
cargo bench -q -p gateway --bench kubernetes 2>/dev/null | tee "$out/kubernetes.md"
