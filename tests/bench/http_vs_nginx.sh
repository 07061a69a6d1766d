#!/bin/sh
# Benchmark: /healthz over keep-alive TLS with wrk, moonmdm next to nginx
# serving a small static response over TLS (same certificate, one worker
# process), measured with the same wrk command in the same run.
#   tests/bench/http_vs_nginx.sh [BUILD_DIR] [SECONDS] [CONNECTIONS]
# Prints requests/s of each and the ratio. Needs wrk and nginx (Debian).
set -eu
cd "$(dirname "$0")/../.."
build=${1:-build}
secs=${2:-10}
conns=${3:-50}
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >/dev/null

tmp=$(mktemp -d)
trap 'kill $mpid $npid 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$build/moonmdm" init --data-dir "$tmp/data" --ca-key ec:P-256 --no-api-key >/dev/null 2>&1
cat > "$tmp/bench.conf.lua" <<LUA
return {
  data_dir = "$tmp/data",
  log = { level = "warn", requests = false },
}
LUA

mport=18543
nport=18544
taskset -c 0 "$build/moonmdm" serve --config "$tmp/bench.conf.lua" \
    --listen 127.0.0.1:$mport 2>"$tmp/moonmdm.log" &
mpid=$!

mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$nport ssl;
        ssl_certificate $tmp/data/server.crt;
        ssl_certificate_key $tmp/data/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        location = /healthz { default_type text/plain; return 200 "ok\n"; }
    }
}
NGX
taskset -c 0 nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
npid=$!

for i in $(seq 1 100); do
    if curl -sk "https://127.0.0.1:$mport/healthz" >/dev/null 2>&1 &&
       curl -sk "https://127.0.0.1:$nport/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done

run() {
    taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "https://127.0.0.1:$1/healthz" |
        awk '/Requests\/sec/ {print $2}'
}
# Warm both, then measure alternately; report medians.
rounds=${ROUNDS:-5}
run $mport >/dev/null; run $nport >/dev/null
ms=""; ns=""
for i in $(seq 1 "$rounds"); do
    ms="$ms $(run $mport)"; ns="$ns $(run $nport)"
done
python3 - "$ms" "$ns" <<'PY'
import statistics, sys
m = [float(x) for x in sys.argv[1].split()]
n = [float(x) for x in sys.argv[2].split()]
mm, nm = statistics.median(m), statistics.median(n)
print("moonmdm /healthz keep-alive TLS: median %.0f req/s  runs %s" % (mm, " ".join("%.0f" % x for x in m)))
print("nginx   static   keep-alive TLS: median %.0f req/s  runs %s" % (nm, " ".join("%.0f" % x for x in n)))
print("ratio of medians moonmdm/nginx: %.2fx; per-round ratios %s" % (mm / nm, " ".join("%.2f" % (a / b) for a, b in zip(m, n))))
print("server pinned to core 0, wrk (-t1 -c%s) to core 1" % sys.argv[0:1] if False else "")
PY
