#!/usr/bin/env bash
# The plugin route's cost in instructions, not seconds: one gateway node (1 worker)
# under valgrind's callgrind, a keep-alive client sending N requests to each route in
# turn (counters zeroed before and dumped after each), so the result is the same on a
# busy or a quiet machine. Routes: no plugins; key-auth + limit-count (local) +
# prometheus (bench/plugins.sh's plugin route); and each of the three alone.
# Prints instructions per request (all threads of the gateway) and the ratio to the
# plain route; the dumps stay in bench/results/callgrind/ for callgrind_annotate.
#   bash bench/plugin_instructions.sh          (ONLY=plugin-instructions bash bench/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
source bench/lib.sh

cargo build --release -q -p portico
bin=target/release/portico
up_port=$(free_port); gw_port=$(free_port)
upstream_conf
nginx -c "$work/upstream.conf" -p "$work" &
start_etcd
key=bench-key-0001
key_hash="sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
ectl put /portico/instances/bench/consumers/bench "{\"id\":\"bench\",\"credentials\":[{\"type\":\"key-auth\",\"id\":\"k\",\"key_hash\":\"$key_hash\"}]}"
limit='"limit-count":{"count":1000000000,"time_window":86400,"key_type":"consumer","policy":"local"}'
ectl put /portico/instances/bench/routes/plug "{\"id\":\"plug\",\"paths\":[\"/plug/*\"],\"upstream_id\":\"up\",\"plugins\":{\"key-auth\":{},$limit,\"prometheus\":{}}}"
for p in key-auth limit-count prometheus; do
  case $p in limit-count) plugin=$limit;; *) plugin="\"$p\":{}";; esac
  ectl put "/portico/instances/bench/routes/only-$p" "{\"id\":\"only-$p\",\"paths\":[\"/only-$p/*\"],\"upstream_id\":\"up\",\"plugins\":{$plugin}}"
done
ectl put /portico/instances/bench/meta '{"revision":2}'

dumps="$out/callgrind"; rm -rf "$dumps"; mkdir -p "$dumps"
PORTICO_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dumps/gateway.%p" "$bin" gateway \
  --listen "127.0.0.1:$gw_port" --instance bench --store "etcd://127.0.0.1:$etcd_port" \
  --threads 1 --no-snapshot --node-id n1 > "$work/gateway.log" 2>&1 &
gw_pid=$!
wait_port "$up_port"
for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$gw_port) 2>/dev/null && break; sleep 0.1; done

# send PATH COUNT: COUNT requests on one keep-alive connection, each with the key.
send() {
  python3 - "$gw_port" "$1" "$2" "$key" <<'PY'
import sys, http.client
port, path, n, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", path, headers={"apikey": key, "User-Agent": "bench"})
    resp = conn.getresponse(); resp.read()
    if resp.status != 200:
        sys.exit(f"{path}: status {resp.status}")
PY
}
routes="api plug only-key-auth only-limit-count only-prometheus"
for _ in $(seq 50); do send /plug/x 1 2>/dev/null && break; sleep 0.2; done
for r in $routes; do send "/$r/x" 300; done  # warm: connections, metric series, caches
for r in $routes; do
  callgrind_control -z "$gw_pid" >/dev/null
  send "/$r/x" "$N"
  callgrind_control -d "$r" "$gw_pid" >/dev/null
done
kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true

for f in "$dumps"/gateway.*.*; do
  name=$(sed -n 's/^desc: Trigger: dump //p' "$f")
  [ -n "$name" ] && echo "$name $(( $(sed -n 's/^summary: //p' "$f") / N ))"
done > "$work/per-request"
base=$(awk '$1 == "api" {print $2}' "$work/per-request")
{
  echo "| route | instructions/request | × no plugins |"
  echo "|---|---|---|"
  for r in $routes; do
    case $r in api) label="no plugins";; plug) label="key-auth + limit-count + prometheus";; *) label="${r#only-} alone";; esac
    awk -v r="$r" -v label="$label" -v base="$base" '$1 == r {printf "| %s | %d | %.2f× |\n", label, $2, $2 / base}' "$work/per-request"
  done
} | tee "$out/plugin-instructions.md"
