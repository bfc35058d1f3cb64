"""``rnnkit predict``: label every utterance of a file of dialogues with a trained run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnnkit.cli._errors import CLIError
from rnnkit.erc import load_runs, predict_records, read_file
from rnnkit.trainer import atomic_write_bytes

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  rnnkit predict --run runs/builtin/full --input dialogues.jsonl
  rnnkit predict --run runs/meld --input test_sent_emo.csv --output predictions.jsonl
  rnnkit predict --run runs/feats --input talk.jsonl --features talk_features.npy
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="predict the emotion of every utterance in a file",
        description="Predict the emotion of every utterance of a JSONL file, a MELD or EmoryNLP CSV file\n"
        "or a DailyDialog dialogues_*.txt file. Writes JSONL, one line per utterance: dialogue id,\n"
        "index, speaker, text, predicted label and the probability of every label.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, nargs="+", metavar="RUN_DIR",
                        help="a directory written by 'rnnkit train'; several: average their class probabilities")
    parser.add_argument("--input", required=True, metavar="FILE", help="dialogues to label")
    parser.add_argument("--format", choices=("meld", "emorynlp", "dailydialog", "jsonl"),
                        help="input format (default: from the file name and header)")
    parser.add_argument("--features", metavar="FILE",
                        help="for a run trained on precomputed features: the .npy/.pt rows of the input utterances")
    parser.add_argument("--output", metavar="FILE", help="JSONL file to write (default: stdout)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.output is not None and Path(args.output).is_dir():
        raise CLIError(f"{args.output}: is a directory; --output must name a file")
    runs = load_runs(args.run, encoder=None if args.features is None else f"features:{args.features}")
    if any(member.training_features for member in runs):
        raise CLIError(f"{' '.join(args.run)}: the run reads precomputed features; pass --features FILE with one row "
                       "per utterance of --input")
    dialogues = read_file(args.input, args.format)
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in predict_records(runs, dialogues)]
    if args.output is None:
        sys.stdout.writelines(lines)
    else:
        atomic_write_bytes(Path(args.output), "".join(lines).encode("utf-8"))
    return 0
