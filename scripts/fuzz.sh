#!/bin/sh
# Builds the libFuzzer targets of tests/fuzz with clang under ASan/UBSan
# (build-fuzz/) and runs each for a bounded time with ctest, starting from
# its committed seed corpus; then prints, per target, the executions per
# second and the coverage libFuzzer reached. A crash, a leak, a hang (an
# input that takes more than 10 s) or a target using more than 2 GiB fails
# the run; the input that did it is left in build-fuzz/fuzz-<target>-*.
#   scripts/fuzz.sh                        every target, 30 s each
#   MOONMDM_FUZZ_SECONDS=300 scripts/fuzz.sh   longer runs
# Extra arguments go to ctest (e.g. -R fuzz/http).
set -eu
cd "$(dirname "$0")/.."
seconds="${MOONMDM_FUZZ_SECONDS:-30}"
dir=build-fuzz

scripts/deps.sh --test
CC=clang cmake -S . -B "$dir" -DMOONMDM_FUZZ=ON -DSANITIZE=address,undefined \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONMDM_FUZZ_SECONDS="$seconds" >/dev/null
# Only what the fuzz tests run: the targets (and the library they link).
targets=""
for src in tests/fuzz/fuzz_*.c; do
    targets="$targets $(basename "$src" .c)"
done
# shellcheck disable=SC2086
cmake --build "$dir" -j"$(nproc)" --target $targets

# The targets are single-threaded: run as many at once as there are cores.
status=0
ctest --test-dir "$dir" -R '^fuzz/' --output-on-failure -j"$(nproc)" "$@" || status=$?

# Per target, from libFuzzer's final status line and -print_final_stats=1.
log="$dir/Testing/Temporary/LastTest.log"
if [ -f "$log" ]; then
    echo
    echo "fuzz summary (${seconds} s per target; cov: edges, ft: features, corpus: inputs kept):"
    awk '
        /^[0-9]+\/[0-9]+ Test: fuzz\// { t = $3; sub(/^fuzz\//, "", t); order[++n] = t; next }
        t != "" && / cov: / && / ft: / {
            line = $0
            cov[t] = field(line, "cov:"); ft[t] = field(line, "ft:"); corp[t] = field(line, "corp:")
        }
        t != "" && /^stat::number_of_executed_units:/ { runs[t] = $2 }
        t != "" && /^stat::average_exec_per_sec:/ { eps[t] = $2 }
        t != "" && /^stat::peak_rss_mb:/ { rss[t] = $2 }
        function field(s, key,   i, a, k) {
            k = split(s, a, " ")
            for (i = 1; i < k; i++) if (a[i] == key) return a[i + 1]
            return "-"
        }
        END {
            printf "  %-10s %10s %8s %7s %7s %14s %7s\n", "target", "execs", "exec/s", "cov", "ft", "corpus", "rss_mb"
            for (i = 1; i <= n; i++) {
                t = order[i]
                printf "  %-10s %10s %8s %7s %7s %14s %7s\n", t, \
                    (t in runs) ? runs[t] : "-", (t in eps) ? eps[t] : "-", \
                    (t in cov) ? cov[t] : "-", (t in ft) ? ft[t] : "-", \
                    (t in corp) ? corp[t] : "-", (t in rss) ? rss[t] : "-"
            }
        }' "$log"
fi
exit "$status"
