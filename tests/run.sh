#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need on a fresh Debian machine
# when run as root, then runs every test. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v kill >/dev/null 2>&1 || need+=(procps)
# openssl: the auth conformance tests sign rsa-sha1 fixtures with it (ring no longer signs SHA-1).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# postgresql: the PostgreSQL store tests start their own throwaway cluster with its initdb.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "tests need: ${need[*]} (install them, or run this script as root on Debian)" >&2
        exit 1
    fi
fi
# openapi-spec-validator: the API test checks /openapi.json with it (Debian does not package it).
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
        else
            echo "tests need: python3-pip (or openapi-spec-validator installed for python3)" >&2
            exit 1
        fi
    fi
    # Debian marks its Python externally managed (PEP 668); this is a test machine's tool.
    python3 -m pip install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1' \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            'openapi-spec-validator>=0.7,<1'
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest run --no-fail-fast "$@"
