#!/bin/bash
# APNs push benchmark: a burst of pushes (100,000 by default) through
# moonmdm's APNs client (libcurl multi on the libuv loop, HTTP/2, client
# certificate) to two APNs stand-ins, over one and several connections,
# with GET /healthz measured on the same loop during the burst
# (apns_bench, built with the tests).
#
# Each stand-in's own ceiling is measured in the same run with h2load (a
# C HTTP/2 load generator from nghttp2) sending the same requests, so that
# moonmdm's rate reads as a ratio to what the stand-in can take at all:
#   python   tests/integration/apns_standin.py (python3-h2 + asyncio), the
#            stand-in of the integration tests; it asks for the client
#            certificate (h2load has none, so it is optional here)
#   nghttpd  nghttp2's C server, serving an empty file for every device path
#            (a POST to an existing file gets 200; its --echo-upload mode
#            spools every body to a temporary file and is slower than the
#            Python stand-in)
#
# usage: tests/bench/apns_bench.sh [BUILD_DIR]     (default: build)
# env:   N=100000 (pushes per burst), INFLIGHT=256 (apns.max_in_flight),
#        CONNS="1 8" (apns.connections values), STANDINS="python nghttpd"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
MOONMDM=$BUILD/moonmdm
BENCH=$BUILD/tests/bench/apns_bench
N=${N:-100000}
INFLIGHT=${INFLIGHT:-256}
CONNS=${CONNS:-"1 8"}
STANDINS=${STANDINS:-"python nghttpd"}
PYTHON=${PYTHON:-/usr/bin/python3}
TOPIC=com.apple.mgmt.External.00000000-0000-0000-0000-00000000be0c
WORK=$(mktemp -d /tmp/apns-bench-XXXXXX)
PIDS=()

for tool in "$MOONMDM" "$BENCH"; do
    [ -x "$tool" ] || { echo "missing $tool: build first" >&2; exit 1; }
done
if ! command -v h2load >/dev/null || ! command -v nghttpd >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "needs h2load and nghttpd (nghttp2-client, nghttp2-server)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nghttp2-client nghttp2-server >/dev/null
fi

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---- certificates: the stand-ins' CA and server certificate, a push certificate
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench stand-in CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout srv.key -out srv.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > srv.ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile srv.ext -out srv.pem 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/UID=$TOPIC/CN=APSP:bench/C=US" \
    -addext extendedKeyUsage=clientAuth -keyout push.key -out push.pem 2>/dev/null
chmod 600 push.key
printf '{"mdm":"00000000-0000-0000-0000-000000000000"}' > body.json
"$MOONMDM" init --data-dir "$WORK/data" --ca-key ec:P-256 >/dev/null
CONFIG=$WORK/data/moonmdm.conf.lua
# No policy hooks: the burst is the push service alone.
mkdir -p policy && echo 'return {}' > policy/init.lua

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_standin() {
    case "$1" in
    python)
        "$PYTHON" "$ROOT/tests/integration/apns_standin.py" --cert srv.pem --key srv.key \
            --client-ca push.pem --optional-client-cert --no-record --until-signal \
            > standin.out 2>standin.err &
        PIDS+=($!)
        STANDIN_PID=$!
        for _ in $(seq 1 100); do
            PORT=$(sed -n 's/^port=//p' standin.out)
            [ -n "$PORT" ] && return 0
            sleep 0.1
        done
        echo "python stand-in did not start: $(cat standin.err)" >&2
        exit 1
        ;;
    nghttpd)
        PORT=$(free_port)
        if [ ! -d htdocs ]; then
            # apns_bench's tokens are SHA-256 of "bench-%06d".
            "$PYTHON" - "$N" <<'PY'
import hashlib, os, sys
d = "htdocs/3/device"
os.makedirs(d, exist_ok=True)
open(os.path.join(d, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), "w").close()
for i in range(int(sys.argv[1])):
    open(os.path.join(d, hashlib.sha256(b"bench-%06d" % i).hexdigest()), "w").close()
PY
        fi
        nghttpd -n 1 -m 1000 -d htdocs "$PORT" srv.key srv.pem \
            > standin.out 2>standin.err &
        PIDS+=($!)
        STANDIN_PID=$!
        for _ in $(seq 1 100); do
            if curl -sk --http2 -o /dev/null "https://127.0.0.1:$PORT/3/device/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" 2>/dev/null; then
                return 0
            fi
            sleep 0.1
        done
        echo "nghttpd did not start: $(cat standin.err)" >&2
        exit 1
        ;;
    esac
}

ceiling() {   # $1 connections -> requests per second h2load got
    local c=$1 m=$(( (INFLIGHT + $1 - 1) / $1 ))
    h2load -n "$N" -c "$c" -m "$m" -d body.json \
        -H "apns-topic: $TOPIC" -H "apns-push-type: mdm" -H "apns-priority: 10" \
        -H "apns-expiration: 0" -H "content-type: application/json" \
        "https://127.0.0.1:$PORT/3/device/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" \
        > h2load.out 2>&1 || { cat h2load.out >&2; exit 1; }
    local ok
    ok=$(awk '/^requests:/ {print $8}' h2load.out)
    [ "$ok" = "$N" ] || { echo "h2load: only $ok of $N succeeded" >&2; cat h2load.out >&2; }
    awk '/^finished in/ {print $4}' h2load.out
}

echo "nproc=$(nproc) N=$N max_in_flight=$INFLIGHT"
for s in $STANDINS; do
    start_standin "$s"
    for c in $CONNS; do
        rate=$(ceiling "$c")
        echo "standin=$s tool=h2load connections=$c requests_per_s=$rate"
        line=$("$BENCH" --config "$CONFIG" --url "https://127.0.0.1:$PORT" --ca-file ca.pem \
            --cert push.pem --key push.key --topic "$TOPIC" --devices "$N" \
            --connections "$c" --max-in-flight "$INFLIGHT" --policy-dir "$WORK/policy")
        ours=$(echo "$line" | sed -n 's/.*pushes_per_s=\([0-9.]*\).*/\1/p')
        ratio=$(awk -v a="$ours" -v b="$rate" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
        echo "standin=$s tool=moonmdm $line ratio_to_h2load=$ratio"
    done
    kill "$STANDIN_PID" 2>/dev/null || true
    wait "$STANDIN_PID" 2>/dev/null || true
done
