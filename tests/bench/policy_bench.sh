#!/bin/bash
# Policy engine benchmark (issue 5), all in one run on this machine:
#  1. the cost of the policy per connect cycle: the same mdm_load runs (Idle
#     with an empty queue, and Idle -> command -> Acknowledged) against the
#     shipped policy and against an empty policy set;
#  2. hook latency p50/p99, from the decision log's per-call durations;
#  3. reload time with 1 and with 100 policy files (POST /v1/policy/reload,
#     median of 20), and the memory of a loaded state (GET /v1/policy);
#  4. 100 reloads while mdm_load runs: failed requests.
# The server runs on core 0, mdm_load on core 1.
#   tests/bench/policy_bench.sh [BUILD_DIR]     env: SECS=8 CONNS=200
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
SECS=${SECS:-8}
CONNS=${CONNS:-200}
MOONMDM=$BUILD/moonmdm
LOAD=$BUILD/tests/bench/mdm_load
PORT=${PORT:-18843}
PLAIN_PORT=${PLAIN_PORT:-18844}
WORK=$(mktemp -d /tmp/policy-bench-XXXXXX)
SPID=
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

DATA=$WORK/data
"$MOONMDM" init --data-dir "$DATA" --ca-key ec:P-256 >"$WORK/init.out" 2>&1
KEY=$(grep -oE 'mdm_[0-9a-f]{16}_[0-9a-f]{64}' "$WORK/init.out" | head -1)
mkdir -p "$WORK/empty" "$WORK/one" "$WORK/hundred"

# A set of one file and a set of 100 files (init.lua requires 99 modules).
cat >"$WORK/one/init.lua" <<'LUA'
local M = { name = "one" }
function M.groups(device) return { "all" } end
function M.profiles(device, groups) return {} end
return M
LUA
{
    echo 'local M = { name = "hundred" }'
    echo 'local parts = {}'
    for i in $(seq 1 99); do echo "parts[$i] = require(\"m$i\")"; done
    echo 'function M.groups(device) local g = { "all" } for i = 1, 3 do g[#g + 1] = parts[i].name end return g end'
    echo 'function M.profiles(device, groups) return {} end'
    echo 'return M'
} >"$WORK/hundred/init.lua"
for i in $(seq 1 99); do
    cat >"$WORK/hundred/m$i.lua" <<LUA
-- module $i
local M = { name = "group$i" }
function M.matches(device) return device.serial ~= nil and #device.serial > $((i % 7)) end
return M
LUA
done

config() {
    cat >"$DATA/bench.conf.lua" <<LUA
return {
  data_dir = "$DATA",
  log = { level = "warn", requests = false },
  http = { max_connections = 20000 },
  store = { map_size = "1GiB" },
  policy = { dir = "$1"${POLICY_EXTRA:-} },
}
LUA
}

start() {
    config "$1"
    setsid taskset -c 0 "$MOONMDM" serve --config "$DATA/bench.conf.lua" \
        --listen "127.0.0.1:$PORT" --listen-plain "127.0.0.1:$PLAIN_PORT" >"$WORK/serve.log" 2>&1 &
    SPID=$!
    for _ in $(seq 1 100); do
        curl -sk -o /dev/null "https://127.0.0.1:$PORT/healthz" && return 0
        sleep 0.1
    done
    cat "$WORK/serve.log" >&2
    exit 1
}
stop() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
}
load() {
    taskset -c 1 "$LOAD" --data-dir "$DATA" --port "$PORT" --plain-port "$PLAIN_PORT" --pid "$SPID" \
        --warmup 2 --duration "$SECS" --api-key "$KEY" --devices 1000 --connections "$CONNS" "$@" |
        tail -1
}
field() { echo "$2" | grep -oE "(^| )$1=[^ ]+" | head -1 | cut -d= -f2; }
api() { curl -sk -H "Authorization: Bearer $KEY" "$@"; }

start "$WORK/empty"
load --mode idle --enroll --label enroll >/dev/null
results=()
for set in empty shipped; do
    dir=$WORK/empty
    [ "$set" = shipped ] && dir=$PWD/policies
    stop
    start "$dir"
    idle=$(load --mode idle --label "idle-$set")
    cmd=$(load --mode command --label "cmd-$set")
    results+=("$set $(field cycles_per_s "$idle") $(field server_cpu_ms_per_req "$idle") \
$(field cycles_per_s "$cmd") $(field server_cpu_ms_per_cycle "$cmd") $(field errors "$idle") \
$(field errors "$cmd")")
done

# The same offered load for both sets: open loop at half the empty set's
# peak, alternating sets for ROUNDS rounds (this machine is noisy); server
# CPU per command cycle, medians. At the peak, a slower policy also means
# smaller group commits (more fsync work per cycle), so the closed-loop
# figures above overstate what the policy itself costs.
ROUNDS=${ROUNDS:-3}
set -- ${results[0]}
RATE=${RATE:-$(/usr/bin/python3 -c "print(int(float('$4') / 2))")}
fixed_empty=() fixed_shipped=()
for round in $(seq 1 "$ROUNDS"); do
    for set in empty shipped; do
        dir=$WORK/empty
        [ "$set" = shipped ] && dir=$PWD/policies
        stop
        start "$dir"
        out=$(load --mode command --rate "$RATE" --label "fixed-$set-$round")
        if [ "$set" = empty ]; then
            fixed_empty+=("$(field server_cpu_ms_per_cycle "$out")")
        else
            fixed_shipped+=("$(field server_cpu_ms_per_cycle "$out")")
        fi
    done
done
stop
start "$PWD/policies"

# Hook latency from the decision log of the shipped-policy runs.
lat=$(api "https://127.0.0.1:$PORT/v1/decisions?limit=1000" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)["decisions"]
by = {}
for e in d:
    by.setdefault(e["hook"], []).append(e["duration_us"])
for h, v in sorted(by.items()):
    v.sort()
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"{h}: n={len(v)} p50={p(0.5)} us p99={p(0.99)} us")
')
stop

reload_time() {
    start "$1"
    local mem
    mem=$(api "https://127.0.0.1:$PORT/v1/policy" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["memory_bytes"])')
    local t
    t=$(for _ in $(seq 1 20); do
        api -o /dev/null -w '%{time_total}\n' -X POST "https://127.0.0.1:$PORT/v1/policy/reload"
    done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] * 1000}')
    stop
    echo "$t $mem"
}
r1=$(reload_time "$WORK/one")
r100=$(reload_time "$WORK/hundred")

# 100 reloads while devices run Idle and command cycles.
start "$WORK/hundred"
(
    sleep 2
    for i in $(seq 1 100); do
        echo "-- $i" >>"$WORK/hundred/m1.lua"
        api -o /dev/null -w '%{http_code}\n' -X POST "https://127.0.0.1:$PORT/v1/policy/reload"
    done >"$WORK/reload-codes"
) &
RPID=$!
under=$(load --mode command --label reload-under-load)
wait "$RPID"
reloads_ok=$(grep -c '^200$' "$WORK/reload-codes" || true)
revision_count=$(api "https://127.0.0.1:$PORT/v1/policy" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["reloads"])')
stop

echo
echo "policy benchmark: 1000 devices, $CONNS keep-alive mTLS connections, ${SECS}s per run; server core 0, load core 1"
echo
echo "| policy set | Idle cycles/s | CPU ms per Idle | command cycles/s | CPU ms per command cycle | errors |"
echo "|---|---|---|---|---|---|"
for r in "${results[@]}"; do
    set -- $r
    echo "| $1 | $2 | $3 | $4 | $5 | $6 / $7 |"
done
set -- ${results[0]}
e_idle=$3; e_cmd=$5
set -- ${results[1]}
/usr/bin/python3 - "$e_idle" "$3" "$e_cmd" "$5" <<'PY'
import sys
ei, si, ec, sc = map(float, sys.argv[1:])
print(f"\npolicy overhead (shipped vs empty, server CPU): Idle {100 * (si - ei) / ei:+.1f}%, "
      f"command cycle {100 * (sc - ec) / ec:+.1f}%")
PY
/usr/bin/python3 - "$RATE" "${fixed_empty[*]}" "${fixed_shipped[*]}" <<'PY'
import statistics, sys
rate = sys.argv[1]
e = [float(x) for x in sys.argv[2].split()]
s = [float(x) for x in sys.argv[3].split()]
me, ms = statistics.median(e), statistics.median(s)
print(f"\nsame offered load ({rate} command cycles/s, open loop, {len(e)} alternating rounds):")
print(f"  server CPU per command cycle: empty {me:.4f} ms {e}, shipped {ms:.4f} ms {s}")
print(f"  policy overhead: {100 * (ms - me) / me:+.1f}% of a command cycle")
PY
echo
echo "hook latency (decision log, shipped policy):"
echo "$lat" | sed 's/^/  /'
set -- $r1
echo "reload, 1 file: median ${1} ms over 20; state memory ${2} bytes"
set -- $r100
echo "reload, 100 files: median ${1} ms over 20; state memory ${2} bytes"
echo "100 reloads under load: $reloads_ok answered 200, server counted $revision_count reloads; load run: \
cycles/s $(field cycles_per_s "$under"), errors $(field errors "$under")"
