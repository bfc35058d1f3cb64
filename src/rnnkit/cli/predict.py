"""``rnnkit predict``: label every utterance of a file of dialogues with a trained run.

A JSONL input is streamed: dialogues are read, labeled and written a window at a time
(:func:`rnnkit.erc.predict_records`), so memory does not grow with the input's size. With ``--onnx`` an
exported model (``rnnkit export``) labels them in onnxruntime (:func:`rnnkit.erc.predict_onnx_records`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from rnnkit.cli._errors import CLIError
from rnnkit.cli._output import open_output
from rnnkit.erc import ONNX_WINDOW, iter_file, load_onnx, load_runs, predict_onnx_records, predict_records
from rnnkit.erc.recipe import PREDICT_WINDOW

__all__ = ["add_parser", "add_input_arguments", "run"]

# Seconds of predicting before a progress bar appears (on a terminal only): short inputs finish without one.
PROGRESS_DELAY = 2.0

EXAMPLES = """examples:
  rnnkit predict --run runs/builtin/full --input dialogues.jsonl
  rnnkit predict --run runs/meld --input test_sent_emo.csv --output predictions.jsonl
  rnnkit predict --run runs/feats --input talk.jsonl --features talk_features.npy
  rnnkit predict --onnx model.onnx --input dialogues.jsonl
  rnnkit predict --onnx meld.onnx --run runs/meld --input test_sent_emo.csv
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="predict the emotion of every utterance in a file",
        description="Predict the emotion of every utterance of a JSONL file, a MELD or EmoryNLP CSV file\n"
        "or a DailyDialog dialogues_*.txt file. Writes JSONL, one line per utterance: dialogue id,\n"
        "index, speaker, text, predicted label and the probability of every label.\n\n"
        "A JSONL input is streamed, a few thousand utterances at a time, so memory stays bounded\n"
        "whatever its size (CSV and DailyDialog files, and any input with --features, are read whole).\n"
        "--output FILE appears complete once all is done; to stdout, lines come as they are predicted,\n"
        "after a first pass that checks the whole input, so that bad input writes nothing there either.\n"
        "An input without dialogues gives an empty output, a warning on stderr and exit status 0.\n"
        "A progress bar appears on stderr when it is a terminal and the input takes more than a few\n"
        "seconds.\n\n"
        "--onnx FILE labels with a model written by 'rnnkit export', in onnxruntime: the same labels and\n"
        "probabilities. A words or chars model needs nothing else; one that reads utterance vectors needs\n"
        "--run, the run it was exported from, whose encoder makes them (and --features for a features run).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", nargs="+", metavar="RUN_DIR",
                        help="a directory written by 'rnnkit train'; several: average their class probabilities")
    parser.add_argument("--onnx", metavar="FILE", help="an ONNX model written by 'rnnkit export', run in onnxruntime")
    add_input_arguments(parser, "dialogues to label")
    parser.add_argument("--output", metavar="FILE",
                        help="JSONL file to write, in an existing directory (default: stdout)")
    parser.set_defaults(func=run)
    return parser


def add_input_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    """--input, --format and --features: a file of dialogues read with :func:`rnnkit.erc.iter_file` (also what
    ``rnnkit explain`` reads)."""
    parser.add_argument("--input", required=True, metavar="FILE", help=help)
    parser.add_argument("--format", choices=("meld", "emorynlp", "dailydialog", "jsonl"),
                        help="input format (default: from the file name and header)")
    parser.add_argument("--features", metavar="FILE",
                        help="for a run trained on precomputed features: the .npy/.pt rows of the input utterances")


def run(args: argparse.Namespace) -> int:
    if args.run is None and args.onnx is None:
        raise CLIError("one of --run and --onnx is required (see 'rnnkit predict --help')")
    if args.onnx is not None and len(args.run or ()) > 1:
        raise CLIError("--onnx takes one --run: the run the model was exported from")
    # --output is opened first: an unwritable one fails before the runs are loaded and anything is predicted.
    with contextlib.nullcontext(sys.stdout) if args.output is None else open_output(args.output) as output:
        runs = load_runs(args.run or [], encoder=None if args.features is None else f"features:{args.features}")
        if any(member.training_features for member in runs):
            raise CLIError(f"{' '.join(args.run)}: the run reads precomputed features; pass --features FILE with "
                           "one row per utterance of --input")
        if args.output is None and Path(args.input).is_file():
            # Lines on stdout cannot be taken back: read the input through once, for its errors alone.
            collections.deque(iter_file(args.input, args.format), maxlen=0)
        dialogues = iter_file(args.input, args.format)  # with --features, one window: its rows are for all input
        if args.onnx is None:
            records = predict_records(runs, dialogues, window=None if args.features else PREDICT_WINDOW)
        else:
            records = predict_onnx_records(load_onnx(args.onnx, *runs), dialogues,
                                           window=None if args.features else ONNX_WINDOW)
        written = 0
        with tqdm(unit=" utterances", file=sys.stderr, delay=PROGRESS_DELAY, disable=not sys.stderr.isatty()) as bar:
            for record in records:
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
                bar.update()
    if not written:
        print(f"rnnkit: warning: {args.input} holds no dialogues; the output is empty", file=sys.stderr)
    return 0
