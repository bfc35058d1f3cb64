"""``rnnkit evaluate``: score a trained run on a split of a dataset."""

from __future__ import annotations

import argparse
import contextlib

from rnnkit.cli._output import open_output
from rnnkit.erc import FORMATS, SPLITS, evaluate_runs, load_runs, metric_name
from rnnkit.erc.runs import json_text

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  rnnkit evaluate --run runs/builtin/full                       # the run's own data, test split
  rnnkit evaluate --run runs/meld --data data/meld --split dev --output dev_metrics.json
  rnnkit evaluate --run runs/meld-seed0 runs/meld-seed1 runs/meld-seed2   # ensemble: mean probabilities
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="score a trained run on a dataset split",
        description="Score a trained run on one split: weighted F1 and accuracy (percent), micro F1\n"
        "without the neutral class for DailyDialog, and a per-class report.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, nargs="+", metavar="RUN_DIR",
                        help="a directory written by 'rnnkit train'; several: score the ensemble that averages "
                        "their class probabilities")
    parser.add_argument("--data", metavar="DIR", help="dataset directory (default: the data the run was trained on)")
    parser.add_argument("--format", choices=FORMATS, help="dataset format (default: detected from --data)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to score (default: test)")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the metrics as JSON to FILE, in an existing directory")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # --output is opened first: an unwritable one fails before the runs are loaded and scored.
    with contextlib.nullcontext() if args.output is None else open_output(args.output) as output:
        runs = load_runs(args.run)
        labels = runs[0].labels
        metrics = evaluate_runs(runs, args.split, args.data, args.format)
        monitor = metric_name(metrics["format"])
        print(f"{metrics['data'] or 'built-in corpus'} ({args.split} split): {monitor} {metrics[monitor]:.2f}, "
              f"accuracy {metrics['accuracy']:.2f}")
        width = max(map(len, labels)) + 2
        print(f"{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for label in labels:
            row = metrics["report"][label]
            print(f"{label:<{width}}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1-score']:>10.3f}"
                  f"{int(row['support']):>10d}")
        if output is not None:
            output.write(json_text({"run": args.run[0] if len(args.run) == 1 else args.run, **metrics}))
    return 0
