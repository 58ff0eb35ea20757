#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian/Ubuntu machine with Python 3.10+.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    # One package a line; "a|b" names alternatives (package names differ between Debian releases).
    missing=""
    while read -r line; do
        [ -n "$line" ] || continue
        installed=""
        for pkg in ${line//|/ }; do dpkg -s "$pkg" >/dev/null 2>&1 && installed=1; done
        [ -n "$installed" ] || missing="$missing $line"
    done < scripts/apt-packages.txt
    if [ -n "$missing" ]; then
        apt-get update -qq
        for line in $missing; do
            for pkg in ${line//|/ }; do
                if apt-cache show "$pkg" >/dev/null 2>&1; then
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
                    break
                fi
            done
        done
    fi
fi
python3 -m pip install -q -r requirements.txt
# DeepSpeed ships as source only; built against the installed torch with no CUDA ops (they build on first use).
if ! python3 -c "import deepspeed" >/dev/null 2>&1; then
    DS_BUILD_OPS=0 python3 -m pip install -q --no-build-isolation deepspeed==0.19.8
fi
