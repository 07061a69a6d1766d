#!/bin/bash
# MDM protocol benchmark (issue 4): connect cycles per second over
# keep-alive mTLS with 1,000 and with 100,000 enrolled devices under the
# same load, latency at 50% of the peak (open loop), the ratio to /healthz
# in the same run, and the server's CPU time per Idle request in
# Mdm-Signature mode (plain listener) next to /healthz on that listener.
#
# The server runs pinned to core 0 (taskset), the load generator
# (mdm_load, built with the tests) pinned to core 1. Nothing is built here.
#
# usage: tests/bench/mdm_bench.sh [BUILD_DIR]          (default: build)
# env:   SECS=15          seconds measured per run (after WARMUP=3)
#        CONNS=1000       keep-alive connections (= active devices) of the main runs
#        SMALL_N=1000     devices of the small population (fresh data dir per run)
#        BIG_N=100000     devices of the large population
#        BIG_DATA=/var/tmp/moonmdm-bench-100k-tpl  a template of its data dir:
#                         created and enrolled once and kept; every run works
#                         on a fresh copy of it, so that earlier runs' results
#                         and queue entries do not weigh on the next one
#                         (delete it to enroll again)
#        BIG_REUSE=0      1: run on BIG_DATA itself (its history grows)
#        SYNC=true        store.sync of the server (true is the default of moonmdm)
#        OPEN_CONNS=100   connections of the second open-loop runs (the first use CONNS)
#        NEW_CONNS=32     concurrent connections of the one-handshake-per-cycle runs
#        SIG_CONNS=32     connections of the Mdm-Signature runs
#        PORT=18643 PLAIN_PORT=18644
#        ONLY=small|big   run one population only
#        PRIO=-10         nice value of the autogroups of the server and of
#                         mdm_load (each runs in a session of its own), so that
#                         other work on the machine takes little of cores 0
#                         and 1 during a run; 0 leaves the priorities alone.
#                         Every result line reports core0_busy/core1_busy
#                         next to server/client CPU, which shows what others took.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
MOONMDM=$BUILD/moonmdm
LOAD=$BUILD/tests/bench/mdm_load
SECS=${SECS:-15}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-1000}
SMALL_N=${SMALL_N:-1000}
BIG_N=${BIG_N:-100000}
BIG_DATA=${BIG_DATA:-/var/tmp/moonmdm-bench-100k-tpl}
BIG_REUSE=${BIG_REUSE:-0}
SYNC=${SYNC:-true}
OPEN_CONNS=${OPEN_CONNS:-100}
NEW_CONNS=${NEW_CONNS:-32}
SIG_CONNS=${SIG_CONNS:-32}
PRIO=${PRIO:--10}
PORT=${PORT:-18643}
PLAIN_PORT=${PLAIN_PORT:-18644}
ONLY=${ONLY:-}
WORK=$(mktemp -d /tmp/mdm-bench-XXXXXX)
SPID=

for tool in "$MOONMDM" "$LOAD"; do
    [ -x "$tool" ] || { echo "missing $tool: build first" >&2; exit 1; }
done
command -v taskset >/dev/null || { echo "taskset not found" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }

cleanup() {
    local rc=$?
    if [ "$rc" != 0 ] && [ -s "$WORK/serve.log" ]; then
        echo "== the run failed (exit $rc); the server's last log lines:" >&2
        grep -v 'event=scep.no_usable_recipient' "$WORK/serve.log" | tail -20 >&2 || true
    fi
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "== $*" >&2; }

# make_datadir DIR: `moonmdm init` (once), an API key in DIR/bench-api-key,
# and the benchmark's config in DIR/bench.conf.lua.
make_datadir() {
    local dir=$1
    if [ ! -f "$dir/ca.key" ]; then
        mkdir -p "$(dirname "$dir")"
        "$MOONMDM" init --data-dir "$dir" --ca-key ec:P-256 >"$WORK/init.out" 2>&1
        grep -oE 'mdm_[0-9a-f]{16}_[0-9a-f]{64}' "$WORK/init.out" | head -1 >"$dir/bench-api-key"
        chmod 600 "$dir/bench-api-key"
    fi
    if [ ! -s "$dir/bench-api-key" ]; then
        "$MOONMDM" apikey create --config "$dir/moonmdm.conf.lua" 2>/dev/null |
            grep -oE 'mdm_[0-9a-f]{16}_[0-9a-f]{64}' | head -1 >"$dir/bench-api-key"
    fi
    cat >"$dir/bench.conf.lua" <<LUA
return {
  data_dir = "$dir",
  log = { level = "warn", requests = false },
  http = { max_connections = 20000 },
  -- A map large enough from the start: with the 256MiB default the map
  -- fills during the command runs on 100,000 devices, and a batch commit
  -- that fails with MDB_MAP_FULL is not retried after growing the map
  -- (every later batch is answered 503 until a restart; see BENCHMARKS.md).
  store = { sync = $SYNC, map_size = "4GiB" },
}
LUA
}

# Runs a command in a session of its own whose autogroup has nice $PRIO
# (with autogroups the kernel shares CPU between sessions first, so plain
# nice would not do).
prio() {
    if [ "$PRIO" = 0 ]; then "$@"; return; fi
    setsid -w sh -c 'echo "$0" >/proc/self/autogroup 2>/dev/null || true; exec "$@"' "$PRIO" "$@"
}

start_server() {
    local dir=$1
    # In the background of a script the job leads no process group, so
    # setsid execs in place and $! is the server's pid.
    setsid taskset -c 0 "$MOONMDM" serve --config "$dir/bench.conf.lua" \
        --listen "127.0.0.1:$PORT" --listen-plain "127.0.0.1:$PLAIN_PORT" \
        >"$WORK/serve.log" 2>&1 &
    SPID=$!
    for _ in $(seq 1 200); do
        if curl -sk -o /dev/null "https://127.0.0.1:$PORT/healthz"; then
            # Only now is the server surely in its own session.
            if [ "$PRIO" != 0 ]; then
                echo "$PRIO" >"/proc/$SPID/autogroup" 2>/dev/null || true
                log "server pid $SPID: $(cat "/proc/$SPID/autogroup" 2>/dev/null)"
            fi
            return 0
        fi
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    echo "the server did not start:" >&2
    cat "$WORK/serve.log" >&2
    exit 1
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
}

# load ARGS...: one mdm_load run on core 1; prints its result line.
load() {
    local cmd=(prio taskset -c 1 "$LOAD" --data-dir "$DATA" --port "$PORT" --plain-port "$PLAIN_PORT"
               --pid "$SPID" --warmup "$WARMUP" --duration "$SECS" --api-key "$(cat "$DATA/bench-api-key")" "$@")
    echo "\$ ${cmd[*]}" | sed 's/--api-key [^ ]*/--api-key KEY/' >&2
    local line
    line=$("${cmd[@]}" 2>"$WORK/load.err") || { cat "$WORK/load.err" >&2; exit 1; }
    grep -E '^mdm_load: error' "$WORK/load.err" | head -3 >&2 || true
    echo "$line" >&2
    echo "$line"
}

val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
half() { awk -v r="$1" 'BEGIN {printf "%d", r / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

ROWS=()
# mkrow POPULATION RUN THROUGHPUT RATIO LINE req|cycle: one table row.
mkrow() {
    local l=$5 extra=""
    [ -n "$(val hs_p50_ms "$l")" ] && extra=", handshake $(val hs_p50_ms "$l") / $(val hs_p99_ms "$l")"
    [ -n "$(val svc_p99_ms "$l")" ] && extra=", from send $(val svc_p50_ms "$l") / $(val svc_p99_ms "$l")"
    ROWS+=("| $1 | $2 | $3 | $4 | $(val p50_ms "$l") / $(val p99_ms "$l") (max $(val max_ms "$l"))$extra | $(val "server_cpu_ms_per_$6" "$l") per $6 | $(val disk_write_kb_per_req "$l") | $(val server_cpu_util "$l") / $(val core0_busy "$l") | $(val errors "$l") |")
}

# measure LABEL N: the runs of one population (the server already runs).
measure() {
    local label=$1 n=$2 conns=$CONNS
    [ "$conns" -le "$n" ] || conns=$n
    log "$label: /healthz keep-alive TLS"
    local hz idle cmd
    hz=$(load --devices "$n" --connections "$conns" --mode healthz --label "$label-healthz")
    log "$label: Idle, empty queue, keep-alive mTLS, closed loop"
    idle=$(load --devices "$n" --connections "$conns" --mode idle --label "$label-idle")
    local hz_rps idle_cps cmd_cps oi oc
    hz_rps=$(val req_per_s "$hz")
    idle_cps=$(val cycles_per_s "$idle")
    # The open-loop runs use the rates of the first population for both, so
    # that the load is the same.
    if [ -z "${RATE_IDLE:-}" ]; then RATE_IDLE=$(half "$idle_cps"); fi
    log "$label: open loop at $RATE_IDLE Idle cycles/s"
    oi=$(load --devices "$n" --connections "$conns" --mode idle --rate "$RATE_IDLE" --label "$label-idle-open")
    log "$label: open loop at $RATE_IDLE Idle cycles/s over $OPEN_CONNS connections"
    local oi2 oc2
    oi2=$(load --devices "$n" --connections "$OPEN_CONNS" --mode idle --rate "$RATE_IDLE" --label "$label-idle-open-$OPEN_CONNS")
    log "$label: one TLS handshake per cycle (Idle), $NEW_CONNS connections"
    local nc
    nc=$(load --devices "$n" --connections "$NEW_CONNS" --conn new --mode idle --label "$label-newconn")
    # Idle runs before command runs: the command runs leave at most one
    # command queued per device behind them.
    log "$label: Idle -> command -> Acknowledged, keep-alive mTLS, closed loop"
    cmd=$(load --devices "$n" --connections "$conns" --mode command --label "$label-command")
    cmd_cps=$(val cycles_per_s "$cmd")
    if [ -z "${RATE_CMD:-}" ]; then RATE_CMD=$(half "$cmd_cps"); fi
    log "$label: open loop at $RATE_CMD command cycles/s"
    oc=$(load --devices "$n" --connections "$conns" --mode command --rate "$RATE_CMD" --label "$label-command-open")
    log "$label: open loop at $RATE_CMD command cycles/s over $OPEN_CONNS connections"
    oc2=$(load --devices "$n" --connections "$OPEN_CONNS" --mode command --rate "$RATE_CMD" --label "$label-command-open-$OPEN_CONNS")

    mkrow "$label" "/healthz keep-alive TLS, $conns conns" "$hz_rps req/s" "" "$hz" req
    mkrow "$label" "Idle (empty queue), $conns conns" "$idle_cps cycles/s" "$(ratio "$idle_cps" "$hz_rps")" "$idle" req
    mkrow "$label" "open loop Idle at $RATE_IDLE/s, $conns conns" "$(val cycles_per_s "$oi") cycles/s" "" "$oi" req
    mkrow "$label" "open loop Idle at $RATE_IDLE/s, $OPEN_CONNS conns" "$(val cycles_per_s "$oi2") cycles/s" "" "$oi2" req
    mkrow "$label" "new TLS connection per Idle cycle, $NEW_CONNS conns" "$(val cycles_per_s "$nc") cycles/s" "" "$nc" cycle
    mkrow "$label" "Idle->cmd->Ack + bulk enqueue, $conns conns" "$cmd_cps cycles/s ($(val req_per_s "$cmd") req/s)" "$(ratio "$(val req_per_s "$cmd")" "$hz_rps") (req/s)" "$cmd" cycle
    mkrow "$label" "open loop cmd at $RATE_CMD/s, $conns conns" "$(val cycles_per_s "$oc") cycles/s" "" "$oc" cycle
    mkrow "$label" "open loop cmd at $RATE_CMD/s, $OPEN_CONNS conns" "$(val cycles_per_s "$oc2") cycles/s" "" "$oc2" cycle
}

# signature LABEL N: Mdm-Signature over the plain listener, then /healthz there.
signature() {
    local label=$1 n=$2 conns=$SIG_CONNS
    [ "$conns" -le "$n" ] || conns=$n
    log "$label: Mdm-Signature Idle (empty queue) on the plain listener"
    local s h
    s=$(load --devices "$n" --connections "$conns" --transport sig --mode idle --label "$label-sig-idle")
    log "$label: /healthz on the plain listener"
    h=$(load --devices "$n" --connections "$conns" --transport sig --mode healthz --label "$label-plain-healthz")
    mkrow "$label" "Mdm-Signature Idle (empty queue), plain, $conns conns" "$(val cycles_per_s "$s") req/s" "" "$s" req
    mkrow "$label" "/healthz, plain, $conns conns" "$(val req_per_s "$h") req/s" "" "$h" req
}

RATE_IDLE=
RATE_CMD=

if [ "$ONLY" != big ]; then
    DATA=$WORK/small
    make_datadir "$DATA"
    start_server "$DATA"
    log "small: enrolling $SMALL_N devices"
    prio taskset -c 1 "$LOAD" --data-dir "$DATA" --port "$PORT" --pid "$SPID" \
        --devices "$SMALL_N" --enroll-only >&2
    signature "${SMALL_N}-enrolled" "$SMALL_N"
    measure "${SMALL_N}-enrolled" "$SMALL_N"
    stop_server
fi

BIG_STATE=
if [ "$ONLY" != small ]; then
    DATA=$BIG_DATA
    make_datadir "$DATA"
    if [ ! -f "$DATA/bench-enrolled" ] || [ "$(cat "$DATA/bench-enrolled")" -lt "$BIG_N" ]; then
        start_server "$DATA"
        log "big: enrolling up to $BIG_N devices in the template (only those not enrolled yet)"
        prio taskset -c 1 "$LOAD" --data-dir "$DATA" --port "$PORT" --pid "$SPID" \
            --devices "$BIG_N" --enroll-only >&2
        stop_server
        echo "$BIG_N" >"$DATA/bench-enrolled"
    fi
    if [ "$BIG_REUSE" != 1 ]; then
        log "big: copying the template $DATA ($(du -sh "$DATA" | cut -f1))"
        cp -a "$DATA" "$WORK/big"
        DATA=$WORK/big
        make_datadir "$DATA"
    fi
    # What the store holds weighs on its command runs (a backlog of waiting
    # commands makes the queue table sparse): say it in the summary.
    BIG_STATE=$("$MOONMDM" db check "$DATA/db" 2>/dev/null | sed -n 's/^checked: //p' || true)
    start_server "$DATA"
    measure "${BIG_N}-enrolled" "$BIG_N"
    stop_server
fi

echo
echo "$("$MOONMDM" --version 2>/dev/null | head -1 || true); $(nproc) cores; server on core 0, mdm_load on core 1;"
echo "store.sync=$SYNC; ${SECS}s measured after ${WARMUP}s warm-up per run; latency per request (p50 / p99 ms)"
[ -z "$BIG_STATE" ] || echo "the ${BIG_N}-device store before the runs: $BIG_STATE"
echo
echo "| population | run | throughput | ratio to /healthz | latency p50 / p99 (max) ms | server CPU ms | disk writes KB/req | server util / core 0 busy | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do echo "$r"; done
