# Shared by the bench scripts (sourced): a work directory cleaned up on exit, free
# loopback ports, an etcd holding one bench instance, and a process's CPU time.
out=bench/results; mkdir -p "$out"
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# upstream_conf: $work/upstream.conf, the shared upstream: an nginx `return 200` on
# $up_port, one worker.
upstream_conf() {
  cat > "$work/upstream.conf" <<NGX
daemon off; worker_processes 1; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$up_port; keepalive_requests 1000000;
  location / { return 200 "ok\n"; } } }
NGX
}

# start_etcd: an etcd on free ports ($etcd_port) with instance `bench`: upstream `up`
# (127.0.0.1:$up_port) and route r1 (/api/* to it); `ectl` writes more.
start_etcd() {
  etcd_port=$(free_port); local peer; peer=$(free_port)
  etcd --data-dir "$work/etcd" --name bench \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" > "$work/etcd.log" 2>&1 &
  wait_port "$etcd_port"
  export ETCDCTL_API=3
  ectl put /portico/instances/bench/upstreams/up "{\"id\":\"up\",\"nodes\":[{\"host\":\"127.0.0.1\",\"port\":$up_port,\"weight\":1}]}"
  ectl put /portico/instances/bench/routes/r1 '{"id":"r1","paths":["/api/*"],"upstream_id":"up"}'
}
ectl() { etcdctl --endpoints "127.0.0.1:$etcd_port" "$@" >/dev/null; }

# CPU time (ns) of a process and its children, all threads (nginx: master and workers).
cpu_ns() { for pid in "$1" $(pgrep -P "$1"); do cat /proc/"$pid"/task/*/schedstat; done | awk '{s+=$1} END {print s}'; }
