"""Command line: the experiments' commands (``runs | sweep | run``) and the deployment ones, each from the module
that owns it:

    python -m colab_helpers export MODEL_DIR OUT_DIR --format hf|gguf
    python -m colab_helpers serve MODEL_DIR --host 127.0.0.1 --port 8000
    python -m colab_helpers loadtest URL ...
    python -m colab_helpers report RESULTS_DIR ...
    python -m colab_helpers soak URL --seconds 120 --concurrency 16

Each deployment module offers ``add_parser(commands)`` (its sub-command) and ``run(args) -> int`` (exit status).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from ..experiments import cli as experiments_cli

# sub-command -> module of this package that owns it
COMMANDS: dict[str, str] = {
    "export": "export",
    "loadtest": "loadtest",
    "serve": "serve_cli",
    "report": "report",
    "soak": "reliability",
}


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    """The parser of ``python -m colab_helpers``: the experiments' commands plus the deployment ones."""
    parser = experiments_cli.build_parser()
    commands = next(a for a in parser._subparsers._group_actions if a.dest == "command")  # noqa: SLF001
    for module in COMMANDS.values():
        importlib.import_module(f".{module}", __package__).add_parser(commands)
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    module = COMMANDS.get(args.command)
    if module is None:
        return experiments_cli.main(sys.argv[1:] if argv is None else argv)
    try:
        return importlib.import_module(f".{module}", __package__).run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
