"""Speed of an exported layer in onnxruntime against the rnnkit layer in torch, side by side in one run.

    python bench/export.py [--repeats N] [--threads N] [--kinds LSTM GRU ...] [--T 50] [--B 32] [--H 256]

For each kind: a 2-layer bidirectional layer with D = H, exported by :func:`rnnkit.export.export_onnx`,
run on one ragged batch (lengths uniform in [T/4, T]) by torch (the layer's default backend, under
``no_grad``) and by an onnxruntime CPU session, both on ``--threads`` threads (2 by default), in
float32. The two are first checked to agree (the largest difference is printed), then timed
round-robin (one call of each, N times over) after a warm-up call; the medians are reported, so that
load from other processes falls on both alike. On an oversubscribed machine, ``--threads 1`` gives
steadier figures: a thread of either library that is descheduled stalls every step of the recurrence.

Shapes: T time steps, B sequences, D input features, H hidden units.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import onnxruntime as ort
import torch
from timing import measure  # bench/timing.py (a script's own directory is on its import path)

import rnnkit
from rnnkit.export import export_onnx

KINDS = {
    "LSTM": rnnkit.LSTM,
    "GRU": rnnkit.GRU,
    "RNN": partial(rnnkit.RNN, nonlinearity="tanh"),
    "LSTM-proj": lambda D, H, **kwargs: rnnkit.LSTM(D, H, proj_size=H // 2, **kwargs),
    "LayerNormLSTM": rnnkit.LayerNormLSTM,
}



def bench(kind: str, T: int, B: int, H: int, threads: int, repeats: int,
          directory: Path) -> tuple[float, float, float]:
    """(torch seconds, onnxruntime seconds, largest difference) for one kind."""
    layer = KINDS[kind](H, H, num_layers=2, bidirectional=True).eval()
    x = torch.randn(T, B, H)  # (T, B, D)
    lengths = torch.randint(T // 4, T + 1, (B,))
    path = directory / f"{kind}.onnx"
    export_onnx(layer, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # onnxruntime's threads otherwise spin after each call, taking the cores from the torch call timed next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"input": x.numpy(), "lengths": lengths.numpy()}

    def run_torch():
        with torch.no_grad():
            return layer(x, lengths=lengths)

    expected = run_torch()[0]
    difference = (torch.from_numpy(session.run(None, feeds)[0]) - expected).abs().max().item()
    times = measure({"torch": run_torch, "onnxruntime": lambda: session.run(None, feeds)}, repeats)
    return times["torch"], times["onnxruntime"], difference


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--H", type=int, default=256, help="hidden units, and input features")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"2-layer bidirectional, D = H = {args.H}, B = {args.B}, T = {args.T}, lengths uniform in "
          f"[{args.T // 4}, {args.T}], {args.threads} threads, median of {args.repeats}; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"{'kind':<14} {'torch ms':>9} {'onnxruntime ms':>15} {'ort / torch':>12} {'max |diff|':>11}")
    with tempfile.TemporaryDirectory() as directory:
        for kind in args.kinds:
            seconds_torch, seconds_ort, difference = bench(kind, args.T, args.B, args.H, args.threads,
                                                           args.repeats, Path(directory))
            print(f"{kind:<14} {1e3 * seconds_torch:9.2f} {1e3 * seconds_ort:15.2f} "
                  f"{seconds_ort / seconds_torch:12.2f} {difference:11.1e}")


if __name__ == "__main__":
    main()
