#!/usr/bin/env bash
# What the browser test (tests/test_app_browser.py) needs: Debian's Chromium, and Playwright for Python
# pointed at /usr/bin/chromium (no browser download: `playwright install` is never run). Idempotent.
# Run as root on Debian/Ubuntu; scripts/setup.sh installs the same when chromium is in
# scripts/apt-packages.txt and playwright in requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "error: Chromium is missing; as root run: apt-get install chromium" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
pinned="$(grep -E '^playwright==' requirements.txt | sed 's/[[:space:]]*#.*//' || true)"
python3 -m pip install -q "${pinned:-playwright==1.65.2}"
python3 - <<'PY'
from playwright.sync_api import sync_playwright

with sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )
    print(f"browser test ready: Chromium {browser.version} driven by Playwright for Python")
    browser.close()
PY
