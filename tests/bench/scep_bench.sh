#!/bin/bash
# SCEP enrollment benchmark: moonmdm in several key layouts against
# `scepserver` (Debian's scep package, micromdm), with the same client
# (scep_bench, built with the tests) and the same CA key sizes.
#
# Every server runs alone in a network namespace that has only loopback
# (scepserver binds every interface), and the client runs in it too. For
# each run: enrollments per second through the full PKIOperation path, and
# the server's CPU time (utime+stime from /proc/<pid>/stat) per enrollment,
# next to the private-key bound of the layout, from `openssl speed`.
#
# usage: sudo tests/bench/scep_bench.sh [BUILD_DIR]   (default: build)
# env:   N=300 (enrollments a run), CONC=4 (connections), SPEED_SECONDS=3,
#        SYNC=true (moonmdm's store.sync: an fsync per commit batch; scepserver
#        writes its files without fsync)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
MOONMDM=$BUILD/moonmdm
CLIENT=$BUILD/tests/bench/scep_bench
N=${N:-300}
CONC=${CONC:-4}
SPEED_SECONDS=${SPEED_SECONDS:-3}
SYNC=${SYNC:-true}
NS=scepbench$$
WORK=$(mktemp -d /tmp/scep-bench-XXXXXX)
PIDS=()

for tool in "$MOONMDM" "$CLIENT"; do
    [ -x "$tool" ] || { echo "missing $tool: build first" >&2; exit 1; }
done
command -v scepserver >/dev/null || { echo "scepserver not found (apt-get install scep)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root for the network namespace" >&2; exit 1; }

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

# ---- private-key operations per second (one core) ------------------------
echo "== openssl speed (one core, ${SPEED_SECONDS}s each)" >&2
openssl speed -seconds "$SPEED_SECONDS" rsa2048 rsa3072 rsa4096 ecdsap256 \
    > "$WORK/speed.txt" 2>/dev/null
rsa_ops() { awk -v b="$1" '$1=="rsa" && $2==b && $3=="bits" {print $6}' "$WORK/speed.txt"; }
RSA2048=$(rsa_ops 2048)
RSA3072=$(rsa_ops 3072)
RSA4096=$(rsa_ops 4096)
P256=$(awk '/256 bits ecdsa \(nistp256\)/ {print $(NF-1)}' "$WORK/speed.txt")
ms() { awk -v o="$1" 'BEGIN {printf "%.3f", 1000.0 / o}'; }

wait_http() {
    for _ in $(seq 1 200); do
        if in_ns curl -sf -o /dev/null "http://127.0.0.1:$1/scep?operation=GetCACaps"; then
            return 0
        fi
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

RESULTS=()
# run_client LABEL PORT PID BOUND_MS -> appends a result row
run_client() {
    local label=$1 port=$2 pid=$3 bound=$4
    # The client exits 1 when some enrollment failed; the row shows it.
    in_ns "$CLIENT" --url "http://127.0.0.1:$port/scep" --n 20 --concurrency "$CONC" \
        --challenge bench-pw --label warmup >/dev/null || true
    local line
    line=$(in_ns "$CLIENT" --url "http://127.0.0.1:$port/scep" --n "$N" \
        --concurrency "$CONC" --challenge bench-pw --pid "$pid" --label "$label") || true
    echo "$line" >&2
    local rate cpu ok
    rate=$(sed -n 's/.*enroll_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    cpu=$(sed -n 's/.*server_cpu_ms_per_enroll=\([0-9.]*\).*/\1/p' <<<"$line")
    ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
    RESULTS+=("$label|$ok/$N|$rate|$cpu|$bound")
}

# moonmdm_run LABEL BOUND_MS INIT_ARGS...
moonmdm_run() {
    local label=$1 bound=$2
    shift 2
    local dir=$WORK/$label port=18500
    "$MOONMDM" init --data-dir "$dir" --no-api-key "$@" >/dev/null 2>&1
    local conf=$dir/moonmdm.conf.lua
    # A static challenge for every request (merged into init's scep table
    # when it wrote one).
    if grep -q '^  scep = {$' "$conf"; then
        sed -i 's|^  scep = {$|  scep = {\n    static_challenge = "bench-pw",|' "$conf"
    else
        sed -i 's|^  store = {|  scep = { static_challenge = "bench-pw" },\n  store = {|' "$conf"
    fi
    sed -i "s|^  store = {\$|  store = {\n    sync = $SYNC,|" "$conf"
    # `ip netns exec` execs the server: $! is the server's pid.
    ip netns exec "$NS" "$MOONMDM" serve --config "$conf" --listen 127.0.0.1:0 \
        --listen-plain "127.0.0.1:$port" >"$dir/serve.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$port"
    run_client "$label" "$port" "$pid" "$bound"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

# scepserver_run LABEL BITS BOUND_MS
scepserver_run() {
    local label=$1 bits=$2 bound=$3
    local dir=$WORK/$label port=18600
    mkdir -p "$dir"
    (cd "$dir" && scepserver ca -init -depot depot -keySize "$bits" >/dev/null 2>&1)
    (cd "$dir" && exec ip netns exec "$NS" scepserver -depot depot -port "$port" \
        -challenge bench-pw -allowrenew 0 >"$dir/serve.log" 2>&1) &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$port"
    run_client "$label" "$port" "$pid" "$bound"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

B_CA4096=$(awk -v a="$RSA4096" 'BEGIN {printf "%.3f", 3000.0 / a}')
B_CA3072=$(awk -v a="$RSA3072" 'BEGIN {printf "%.3f", 3000.0 / a}')
B_CA2048=$(awk -v a="$RSA2048" 'BEGIN {printf "%.3f", 3000.0 / a}')
B_RA_RSA3072=$(awk -v a="$RSA2048" -v c="$RSA3072" 'BEGIN {printf "%.3f", 2000.0 / a + 1000.0 / c}')
B_RA_P256=$(awk -v a="$RSA2048" -v c="$P256" 'BEGIN {printf "%.3f", 2000.0 / a + 1000.0 / c}')

echo "== moonmdm" >&2
moonmdm_run moonmdm-default-p256ca-rsa2048ra "$B_RA_P256"
moonmdm_run moonmdm-rsa3072ca-rsa2048ra "$B_RA_RSA3072" --ca-key rsa:3072
moonmdm_run moonmdm-rsa2048ca-only "$B_CA2048" --ca-key rsa:2048 --no-ra
moonmdm_run moonmdm-rsa3072ca-only "$B_CA3072" --ca-key rsa:3072 --no-ra
moonmdm_run moonmdm-rsa4096ca-only "$B_CA4096" --ca-key rsa:4096 --no-ra
echo "== scepserver" >&2
scepserver_run scepserver-rsa2048ca 2048 "$B_CA2048"
scepserver_run scepserver-default-rsa4096ca 4096 "$B_CA4096"

echo
echo "openssl speed, private-key ops/s on one core: RSA-2048 $RSA2048 ($(ms "$RSA2048") ms)," \
    "RSA-3072 $RSA3072 ($(ms "$RSA3072") ms), RSA-4096 $RSA4096 ($(ms "$RSA4096") ms)," \
    "ECDSA P-256 $P256 ($(ms "$P256") ms)"
echo "N=$N enrollments a run, $CONC connections, $(nproc) cores, moonmdm store.sync=$SYNC"
echo
echo "| server and key layout | ok | enrollments/s | server CPU ms/enrollment | private-key bound ms | bound / CPU |"
echo "|---|---|---|---|---|---|"
for r in "${RESULTS[@]}"; do
    IFS='|' read -r label ok rate cpu bound <<<"$r"
    frac=$(awk -v b="$bound" -v c="$cpu" 'BEGIN {printf "%.2f", b / c}')
    echo "| $label | $ok | $rate | $cpu | $bound | $frac |"
done
