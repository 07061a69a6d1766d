#!/bin/sh
# Installs what moonmdm needs from Debian 12 packages, and nothing that is
# already there. Runs `apt-get update` only when something is missing.
#   scripts/deps.sh          build and runtime dependencies
#   scripts/deps.sh --test   the same plus what the test suite uses
set -eu

pkgs="build-essential cmake pkg-config liblua5.4-dev libuv1-dev node-llhttp
libssl-dev openssl libplist-dev liblmdb-dev lmdb-utils libjansson-dev
libcurl4-openssl-dev libcrypt-dev ca-certificates"
if [ "${1:-}" = "--test" ]; then
    pkgs="$pkgs libcmocka-dev python3 python3-pytest python3-cryptography
python3-requests python3-h2 python3-yaml scep curl iproute2 clang libclang-rt-14-dev valgrind"
fi

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "deps: all present"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "deps: missing:$missing (run as root to install)" >&2
        exit 1
    fi
else
    SUDO=
fi

echo "deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
