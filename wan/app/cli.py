"""`python app.py`: the command line of the web app (Gradio and torch are imported only after parsing)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Serve the StableAvatar web page (Gradio). By default only this computer can open it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server_name",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 lets other machines in (anyone who reaches it can use it)",
    )
    parser.add_argument("--server_port", type=int, default=7860, help="port")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also publish a temporary public gradio.live link (needs internet)",
    )
    parser.add_argument(
        "--checkpoints_dir",
        type=Path,
        default=Path("checkpoints"),
        help="where the demo model (demo/) and converted folders (with model_index.json) are looked for",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=Path("outputs/app"),
        help="where videos are written; the only server folder the page may read",
    )
    parser.add_argument("--max_file_size", default="200mb", help="largest upload, e.g. 50mb or 1gb")
    parser.add_argument("--queue_size", type=int, default=16, help="generations that may wait in the queue")
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA when available), 'cuda', 'cuda:1' or 'cpu'"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="bfloat16 (default on a GPU and on a CPU with bfloat16 units) or float32 (default on other CPUs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .runner import Runner
    from .ui import build_ui, launch_options

    runner = Runner(args.checkpoints_dir, args.output_dir, device=args.device, dtype=args.dtype)
    if runner.models[0].is_random:
        print(
            "NOTE: no trained model in checkpoints/demo: the default model has RANDOM weights (noise, not a face)."
        )
    if args.share or args.server_name not in LOCAL_NAMES:
        print("WARNING: the app is reachable from other machines; anyone who reaches it can run generations.")
    demo = build_ui(runner)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(**launch_options(args, runner.output_dir))
    return 0
