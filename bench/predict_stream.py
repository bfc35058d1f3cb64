"""``rnnkit predict`` on large JSONL inputs: throughput and peak memory, which must not grow with the input.

Writes a JSONL file of N utterances (dialogues of the built-in corpus, renamed so that their ids stay unique) in a
temporary directory, trains a small words-encoder run on the built-in corpus there (or uses ``--run``), runs
``rnnkit predict --output`` in a child process for each N and reports utterances per second and the child's peak
resident memory (from ``os.wait4``, so each figure is that one child's).

    OMP_NUM_THREADS=1 python bench/predict_stream.py
    python bench/predict_stream.py --sizes 10000 1000000 10000000 --run runs/demo/full --stdout
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rnnkit.erc import ERCConfig, builtin_corpus, load_data, train_run
from rnnkit.trainer import TrainerConfig


def write_input(path: Path, utterances: int) -> int:
    """Write dialogues of the built-in corpus until ``utterances`` utterances (the last dialogue cut to fit), and
    return the file's size in bytes."""
    corpus = builtin_corpus("test") + builtin_corpus("dev")
    left = utterances
    with path.open("w", encoding="utf-8") as f:
        for k, dialogue in enumerate(itertools.cycle(corpus)):
            if left <= 0:
                break
            turns = [{"speaker": u.speaker, "text": u.text} for u in dialogue.utterances[:left]]
            left -= len(turns)
            f.write(json.dumps({"id": f"d{k}", "utterances": turns}, ensure_ascii=False) + "\n")
    return path.stat().st_size


def train_small_run(directory: Path) -> Path:
    """A words-encoder run on the built-in corpus with the model's default sizes, one epoch."""
    data = load_data()
    train_run(directory, data, ERCConfig(num_labels=len(data.labels)), TrainerConfig(epochs=1, quiet=True))
    return directory


def predict(run: Path, source: Path, output: Path | None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in bytes and exit status of one ``rnnkit predict`` child process."""
    argv = [sys.executable, "-m", "rnnkit.cli", "predict", "--run", str(run), "--input", str(source)]
    start = time.perf_counter()
    if output is None:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    else:
        child = subprocess.Popen([*argv, "--output", str(output)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss * 1024, child.returncode  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="utterances per input file")
    parser.add_argument("--run", type=Path, help="a run directory (default: train a small one)")
    parser.add_argument("--stdout", action="store_true", help="also time writing to stdout (to /dev/null)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or train_small_run(tmp / "run")
        print(f"{'utterances':>11} {'input MB':>9} {'output':>7} {'seconds':>8} {'utt/s':>8} {'peak RSS MB':>12}")
        for n in args.sizes:
            source = tmp / f"in-{n}.jsonl"
            size = write_input(source, n)
            for output in [tmp / "out.jsonl"] + ([None] if args.stdout else []):
                seconds, rss, status = predict(run, source, output)
                if status != 0:
                    raise SystemExit(f"rnnkit predict exited with status {status}")
                print(f"{n:>11} {size / 1e6:>9.1f} {'stdout' if output is None else 'file':>7} {seconds:>8.1f} "
                      f"{n / seconds:>8.0f} {rss / 2**20:>12.0f}", flush=True)
                if output is not None:
                    output.unlink()
            source.unlink()


if __name__ == "__main__":
    main()
