"""``rnnkit explain``: one picture per dialogue of what a trained run's two RNNs carry (see :mod:`rnnkit.erc.explain`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnkit.cli._errors import CLIError
from rnnkit.cli.predict import add_input_arguments
from rnnkit.erc import explain_dialogues, iter_file, load_run, write_explanations

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  rnnkit explain --run runs/builtin/full --input dialogues.jsonl --out pictures
  rnnkit explain --run runs/meld --input test_sent_emo.csv --out pictures/meld
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explain", help="draw what the RNNs carry through each dialogue of a file",
        description="Draw one PNG per dialogue of a file (read as 'rnnkit predict' reads it) into a directory:\n"
        "its utterances with the predicted label, its probability and the gold label when given, beside heat\n"
        "maps, one row per utterance, of the mean input, forget and output gate activations of the\n"
        "dialogue-context LSTM and of the speaker-history LSTM (per layer and direction; the speaker-history\n"
        "LSTM at the utterance's step of its speaker's own track), and of the share of each fused utterance\n"
        "vector that came from its speaker's history. Files are named NNNN-<dialogue id>.png, in input order.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory written by 'rnnkit train'")
    add_input_arguments(parser, "dialogues to explain, labels optional")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the PNGs (created if missing)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{args.out}: is not a directory; --out must name a directory")
    model = load_run(args.run, encoder=None if args.features is None else f"features:{args.features}")
    dialogues = list(iter_file(args.input, args.format))  # all read, and checked, before anything is written
    if not dialogues:
        print(f"rnnkit: warning: {args.input} holds no dialogues; nothing is drawn", file=sys.stderr)
        return 0
    explanations = explain_dialogues(model, dialogues)
    try:
        paths = write_explanations(explanations, out, title=f"run {Path(args.run).name}, ")
    except OSError as err:
        raise CLIError(f"{args.out}: cannot write the pictures ({err.strerror})") from None
    print(f"{len(paths)} picture(s) in {out}")
    return 0
