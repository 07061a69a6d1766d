#!/bin/sh
# Installs what is missing, builds and runs the whole test suite (C unit
# tests and integration tests against the real binary) with ctest.
#   scripts/test.sh              the normal build (build-test/)
#   scripts/test.sh --sanitize   the same under ASan/UBSan (build-asan/)
#   scripts/test.sh --valgrind   the same under valgrind (build-valgrind/):
#                                every unit test program and every server
#                                the integration tests start; any error or
#                                definite leak fails the test. Slow: pick
#                                tests with -R (e.g. -R unit/).
# Extra arguments after the flag go to ctest (e.g. -R http). Tests run two
# at a time (MOONMDM_TEST_JOBS=1 runs them one by one).
set -eu
cd "$(dirname "$0")/.."
dir=build-test
flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo"
if [ "${1:-}" = "--sanitize" ]; then
    shift
    dir=build-asan
    flags="-DCMAKE_BUILD_TYPE=Debug -DSANITIZE=address,undefined"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
elif [ "${1:-}" = "--valgrind" ]; then
    shift
    dir=build-valgrind
    flags="$flags -DMOONMDM_TEST_WRAPPER=valgrind;-q;--error-exitcode=99;--leak-check=full;--show-leak-kinds=definite,indirect;--errors-for-leak-kinds=definite,indirect"
    # Tests with time limits give the slower runs room; the integration
    # tests start every server under valgrind.
    export MOONMDM_SLOW_TESTS=1 MOONMDM_VALGRIND=1
fi
scripts/deps.sh --test
# shellcheck disable=SC2086
cmake -S . -B "$dir" $flags >/dev/null
cmake --build "$dir" -j"$(nproc)"
exec ctest --test-dir "$dir" --output-on-failure -j"${MOONMDM_TEST_JOBS:-2}" "$@"
