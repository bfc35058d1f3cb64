"""``rnnkit export``: write a trained run as one ONNX model (see :mod:`rnnkit.erc.onnx_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rnnkit.cli._errors import CLIError
from rnnkit.cli._output import open_output
from rnnkit.erc import export_run, load_run

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  rnnkit export --run runs/builtin/full --out model.onnx
  rnnkit predict --onnx model.onnx --input dialogues.jsonl               # a words or chars run: the file alone
  rnnkit predict --onnx meld.onnx --run runs/meld --input test_sent_emo.csv  # a transformer run: its encoder too
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="write a trained run as an ONNX model",
        description="Write the model of a trained run as one ONNX file (needs onnx and onnxruntime:\n"
        'pip install "rnnkit[onnx]"), in eval mode, with dynamic dialogue, utterance and token axes.\n'
        "Inputs: the token ids (tokens (B, U, W), token_lengths (B, U)) of a words or chars run, whose\n"
        "embedding and encoder BiLSTM are in the graph, or else the utterance vectors (utterances\n"
        "(B, U, D)) of the run's encoder, which is not: a transformer stays outside the file; and\n"
        "speakers (B, U), lengths (B,). Outputs logits and probabilities (B, U, L). The labels, encoder\n"
        "name and vocabulary are in the file's metadata, for 'rnnkit predict --onnx'.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory written by 'rnnkit train'")
    parser.add_argument("--out", required=True, metavar="FILE", help="the ONNX file to write, in an existing directory")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if Path(args.out).is_dir():
        raise CLIError(f"{args.out}: is a directory; --out must name a file")
    # --out is opened first: an unwritable one fails before the run is loaded and its graph built.
    with open_output(args.out) as output:
        trained = load_run(args.run)
        model = export_run(trained)
        output.buffer.write(model.SerializeToString())
    inputs = [value.name for value in model.graph.input]
    print(f"wrote {args.out}: inputs {', '.join(inputs)}; output probabilities over {len(trained.labels)} labels")
    if "utterances" in inputs:
        print(f"the {trained.model.config.encoder!r} encoder is not in the graph: predict with "
              f"--onnx {args.out} --run {args.run}")
    return 0
