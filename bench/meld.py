"""MELD with frozen all-MiniLM-L6-v2 utterance vectors: the full model and its two ablations over seeds.

Drives the ``rnnkit`` command line as a user would: ``rnnkit train --encoder minilm`` once per variant
and seed into ``RUNS_DIR/<variant>-seed<seed>``, then ``rnnkit predict`` on the test CSV for speed. It
reads each run's metrics.json and prints a markdown table of dev and test weighted F1 and test accuracy
(mean ± std over seeds), wall seconds per epoch and in all. The epoch is chosen by dev weighted F1
inside ``rnnkit train``; the test split is scored once per finished run and chooses nothing.

    python bench/meld.py --runs-dir /tmp/meld-bench --cache-dir /tmp/rnnkit-cache

MELD is GPL-3.0 data: it is read by path, never copied. Sentence vectors are computed once and cached
in --cache-dir (passed to rnnkit as $RNNKIT_CACHE), so only the first run pays for encoding. Finished
runs are reused, so an interrupted benchmark picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rnnkit.cli import main as rnnkit

VARIANTS = {"full": [], "no_context": ["--no-context"], "no_speaker": ["--no-speaker"]}
# Training flags passed through to ``rnnkit train`` (bench flag name = rnnkit flag name).
HYPERPARAMETERS = {"epochs": int, "lr": float, "dropout": float, "batch_size": int, "weight_decay": float,
                   "context_hidden": int, "speaker_hidden": int}


def train(args, variant: str, seed: int) -> tuple[dict, float]:
    """Train one run (or reuse a finished one); return its metrics.json and its wall seconds."""
    out = Path(args.runs_dir) / f"{variant}-seed{seed}"
    timing = out / "bench_time.json"
    if not timing.exists():
        flags = [item for name in HYPERPARAMETERS
                 for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
        argv = ["train", "--data", args.data, "--encoder", "minilm", "--out", str(out), "--seed", str(seed),
                *flags, *VARIANTS[variant], "--quiet"]
        print("rnnkit", " ".join(argv), flush=True)
        start = time.perf_counter()
        if rnnkit(argv) != 0:
            raise SystemExit(f"rnnkit {' '.join(argv)} failed")
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, json.loads(timing.read_text())["seconds"]


def predict_speed(args, run: Path, cache_dir: str) -> float:
    """Utterances per second of ``rnnkit predict`` on the test CSV, model loading and file reading included."""
    output = Path(args.runs_dir) / "predictions.jsonl"
    os.environ["RNNKIT_CACHE"] = cache_dir
    start = time.perf_counter()
    code = rnnkit(["predict", "--run", str(run), "--input", str(Path(args.data) / "test_sent_emo.csv"),
                   "--output", str(output)])
    seconds = time.perf_counter() - start
    os.environ["RNNKIT_CACHE"] = args.cache_dir
    if code != 0:
        raise SystemExit("rnnkit predict failed")
    with output.open() as lines:
        return sum(1 for _ in lines) / seconds


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meld"),
                        help="MELD directory with {train,dev,test}_sent_emo.csv (default: ../shared/data/meld)")
    parser.add_argument("--runs-dir", default="runs/meld-bench", help="where the run directories go")
    parser.add_argument("--cache-dir", default=os.environ.get("RNNKIT_CACHE") or str(Path.home() / ".cache" / "rnnkit"),
                        help="sentence-vector cache shared by all runs (default: $RNNKIT_CACHE or ~/.cache/rnnkit)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    # Chosen on the dev split (see BENCHMARKS.md, section MELD).
    defaults = {"epochs": 10, "lr": 3e-3, "dropout": 0.3, "batch_size": 16, "weight_decay": 0.01,
                "context_hidden": 128, "speaker_hidden": 128}
    for name, kind in HYPERPARAMETERS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=defaults[name],
                            help=f"rnnkit train --{name.replace('_', '-')} (default: {defaults[name]})")
    parser.add_argument("--no-predict", action="store_true", help="skip the rnnkit predict timing")
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    os.environ["RNNKIT_CACHE"] = args.cache_dir

    rows = []
    for variant in args.variants:
        runs = [train(args, variant, seed) for seed in args.seeds]
        scores = (("dev", "weighted_f1"), ("test", "weighted_f1"), ("test", "accuracy"))
        dev, test, accuracy = ([m[split][key] for m, _ in runs] for split, key in scores)
        seconds = [s for _, s in runs]
        epochs = statistics.mean(m["best_epoch"] for m, _ in runs)
        rows.append(f"| {variant} | {mean_std(dev)} | {mean_std(test)} | {mean_std(accuracy)} | {epochs:.1f} "
                    f"| {statistics.mean(seconds) / args.epochs:.1f} | {statistics.mean(seconds):.0f} |")
    print(f"\nMELD, frozen all-MiniLM-L6-v2, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))})\n")
    print("| variant | dev weighted F1 | test weighted F1 | test accuracy | best epoch | s / epoch | s / run |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)
    if not args.no_predict:
        run = Path(args.runs_dir) / f"{args.variants[0]}-seed{args.seeds[0]}"
        warm = predict_speed(args, run, args.cache_dir)
        with tempfile.TemporaryDirectory() as empty:
            cold = predict_speed(args, run, empty)
        print(f"\nrnnkit predict, MELD test CSV: {warm:.0f} utterances/s with cached sentence vectors, "
              f"{cold:.0f} utterances/s encoding them with MiniLM")


if __name__ == "__main__":
    main()
