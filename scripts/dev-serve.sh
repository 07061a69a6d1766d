#!/bin/sh
# Installs what is missing, builds, creates ./data on first run (dev CA, TLS
# key and certificate, admin API key, config) and runs the server on
# https://127.0.0.1:8443 with the shipped policies.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONMDM_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)"
if [ ! -f data/moonmdm.conf.lua ]; then
    build/moonmdm init --data-dir data
fi
exec build/moonmdm serve --config data/moonmdm.conf.lua "$@"
