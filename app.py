"""Serve the StableAvatar web page: `python app.py`, then open http://127.0.0.1:7860 (`--help` for options)."""

from wan.app.cli import main
from wan.cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
