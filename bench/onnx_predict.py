"""``rnnkit predict`` through torch against ``rnnkit predict --onnx`` (onnxruntime): utterances per second.

Writes a JSONL file of N utterances of the built-in corpus (:func:`predict_stream.write_input`), trains a words-encoder
run with the model's default sizes (or uses ``--run``), exports it with ``rnnkit export`` and times both commands on
the same input, each in a child process with the same ``OMP_NUM_THREADS`` (torch reads it, and ``--onnx`` gives
onnxruntime torch's thread count), taking turns, best of ``--repeat``. The time is the whole command: start-up,
loading, reading, predicting and writing ``--output``.

    python bench/onnx_predict.py                        # 20k utterances, one thread
    python bench/onnx_predict.py --utterances 100000 --threads 2 --run runs/demo/full
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from predict_stream import train_small_run, write_input


def seconds(argv: list[str], threads: int) -> float:
    """Wall seconds of one ``rnnkit`` child process running ``argv``."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rnnkit.cli", *argv], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=20_000, help="utterances in the input file")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both commands")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the best counts")
    parser.add_argument("--run", type=Path, help="a words-encoder run directory (default: train a small one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or train_small_run(tmp / "run")
        source, model, output = tmp / "input.jsonl", tmp / "model.onnx", tmp / "out.jsonl"
        write_input(source, args.utterances)
        subprocess.run([sys.executable, "-m", "rnnkit.cli", "export", "--run", str(run), "--out", str(model)],
                       check=True, stdout=subprocess.DEVNULL)
        common = ["--input", str(source), "--output", str(output)]
        ways = {"torch": ["predict", "--run", str(run), *common], "onnx": ["predict", "--onnx", str(model), *common]}
        times = {way: [] for way in ways}
        for _ in range(args.repeat):  # the two take turns, so that a busy spell of the machine slows both
            for way, argv in ways.items():
                times[way].append(seconds(argv, args.threads))
        rates = {way: args.utterances / min(times[way]) for way in ways}
        for way, rate in rates.items():
            print(f"{way:>6}: {rate:8.0f} utterances/s")
        print(f"onnx / torch: {rates['onnx'] / rates['torch']:.2f}x ({args.utterances} utterances, "
              f"{args.threads} thread(s), best of {args.repeat})")


if __name__ == "__main__":
    main()
