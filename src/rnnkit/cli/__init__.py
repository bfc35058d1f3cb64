"""The ``rnnkit`` command line: ``rnnkit train``, ``rnnkit evaluate`` and ``rnnkit predict``.

Each subcommand lives in its own module with an ``add_parser(subparsers)`` that registers its flags and
``set_defaults(func=run)``. Input a user can fix (bad data files, bad flag values, a run directory that is
missing or incomplete) ends with one line ``rnnkit: error: <message>`` on stderr and exit status 2; a training
run whose loss turns NaN or infinite stops with such a line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from rnnkit import __version__
from rnnkit.cli import evaluate, predict, train
from rnnkit.cli._errors import CLIError
from rnnkit.erc.data import DataError
from rnnkit.erc.runs import RunError
from rnnkit.erc.training import CheckpointError, DivergenceError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors take the same one-line form as every other error."""

    def error(self, message: str):
        raise CLIError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnkit",
        description="Train, evaluate and apply speaker-aware emotion recognition models on dialogues.",
        epilog="examples:\n  rnnkit train --ablation --out runs/builtin\n"
        "  rnnkit evaluate --run runs/builtin/full --split test\n"
        "  rnnkit predict --run runs/builtin/full --input dialogues.jsonl --output predictions.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__} (torch {torch.__version__})")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict}",
                                       parser_class=_Parser)
    for module in (train, evaluate, predict):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except SystemExit as stop:  # --help ends parsing this way
        return stop.code if isinstance(stop.code, int) else 0
    except (CLIError, DataError, CheckpointError, RunError, DivergenceError) as err:
        print(f"rnnkit: error: {_one_line(str(err))}", file=sys.stderr)
        return 1 if isinstance(err, DivergenceError) else 2


def _one_line(message: str) -> str:
    return " ".join(message.split())
