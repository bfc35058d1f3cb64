"""MELD with all-MiniLM-L6-v2, frozen or fine-tuned: the full model and its two ablations over seeds.

Drives the ``rnnkit`` command line as a user would: one ``rnnkit train`` process per variant and seed
into ``RUNS_DIR/<mode>-<variant>-seed<seed>``, then ``rnnkit predict`` on the test CSV for speed. It reads
each run's metrics.json and prints a markdown table of dev and test weighted F1, test macro F1 and accuracy (mean ±
std over seeds), wall seconds per epoch and per run, and the peak resident memory of the training process.
The epoch is chosen by dev weighted F1 inside ``rnnkit train``; the test split is scored once per finished
run and chooses nothing.

    python bench/meld.py --mode frozen   --runs-dir /tmp/meld-bench --cache-dir /tmp/rnnkit-cache
    python bench/meld.py --mode finetune --runs-dir /tmp/meld-bench --jobs 2

``--mode frozen`` embeds every utterance once with the frozen encoder (cached in --cache-dir, passed to
rnnkit as $RNNKIT_CACHE) and trains the recurrent model on the vectors; ``--mode finetune`` trains the
encoder with it (``--finetune``). Each mode is the ``rnnkit train`` preset of that name (chosen on the dev split,
see BENCHMARKS.md and ``rnnkit train --help``); any of its flags can be overridden, and a flag of one mode's
preset can be given in the other mode too. ``--jobs N`` runs N trainings at once, each with ``OMP_NUM_THREADS = 2 // N`` (at least 1).
``--ensemble K`` also scores ensembles (the seeds in consecutive groups of K, each group's runs averaged
by ``rnnkit evaluate --run ...``) and reports mean ± std over the groups.
MELD is GPL-3.0 data: it is read by path, never copied.
Finished runs are reused, so an interrupted benchmark picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rnnkit.erc.recipe import PRESETS

VARIANTS = {"full": [], "no_context": ["--no-context"], "no_speaker": ["--no-speaker"]}
MODES = ("frozen", "finetune")  # rnnkit train presets
# Any of the presets' valued flags can be given in either mode (a switch such as --finetune comes with its mode).
FLAGS = sorted({name for mode in MODES for name, value in PRESETS[mode]().items() if not isinstance(value, bool)})
SWITCHES = ("speaker_in_text",)  # flags without a value, off unless given


def command(args, variant: str, seed: int, out: Path) -> list[str]:
    settings = {k: v for k, v in vars(args).items() if k in FLAGS and v is not None}
    flags = [item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    flags += [f"--{name.replace('_', '-')}" for name in SWITCHES if getattr(args, name)]
    return [sys.executable, "-m", "rnnkit.cli", "train", "--data", args.data, "--encoder", "minilm", "--out", str(out),
            "--preset", args.mode, "--seed", str(seed), *flags, *VARIANTS[variant], "--quiet"]


def train_all(args, runs: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[dict, dict]]:
    """Train every (variant, seed) not finished yet, ``args.jobs`` at a time; returns metrics and timing of all.

    Each process is reaped with ``os.wait4``, whose resource usage gives that process's own peak RSS.
    """
    threads = str(max(1, 2 // args.jobs))
    pending = [(v, s) for v, s in runs if not (run_dir(args, v, s) / "bench_time.json").exists()]
    running: dict[int, tuple[tuple[str, int], subprocess.Popen, float]] = {}  # pid -> run, process, start
    while pending or running:
        while pending and len(running) < args.jobs:
            variant, seed = pending.pop(0)
            argv = command(args, variant, seed, run_dir(args, variant, seed))
            print(" ".join(argv[2:]), flush=True)
            with open(run_dir(args, variant, seed).with_suffix(".log"), "w") as log:  # the child keeps its own handle
                process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env=os.environ | {"OMP_NUM_THREADS": threads})
            running[process.pid] = ((variant, seed), process, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        (variant, seed), process, start = running.pop(pid)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(process.args[2:])} failed; see {run_dir(args, variant, seed)}.log")
        timing = {"seconds": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "threads": int(threads), "jobs": args.jobs}
        (run_dir(args, variant, seed) / "bench_time.json").write_text(json.dumps(timing))
    return {(v, s): (json.loads((run_dir(args, v, s) / "metrics.json").read_text()),
                     json.loads((run_dir(args, v, s) / "bench_time.json").read_text())) for v, s in runs}


def run_dir(args, variant: str, seed: int) -> Path:
    return Path(args.runs_dir) / f"{args.mode}-{variant}-seed{seed}"


def predict_speed(args, run: Path, cache_dir: str) -> float:
    """Utterances per second of ``rnnkit predict`` on the test CSV, model loading and file reading included."""
    output = Path(args.runs_dir) / "predictions.jsonl"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rnnkit.cli", "predict", "--run", str(run), "--input",
                    str(Path(args.data) / "test_sent_emo.csv"), "--output", str(output)],
                   check=True, env=os.environ | {"RNNKIT_CACHE": cache_dir})
    seconds = time.perf_counter() - start
    with output.open() as lines:
        return sum(1 for _ in lines) / seconds


def ensemble_metrics(args, variant: str, group: list[int]) -> dict:
    """``rnnkit evaluate`` of the ensemble of ``group``'s runs (averaged class probabilities) on dev and test."""
    out = Path(args.runs_dir) / f"{args.mode}-{variant}-ensemble-seeds{'-'.join(map(str, group))}.json"
    if not out.exists():
        runs = [str(run_dir(args, variant, seed)) for seed in group]
        scores = {}
        for split in ("dev", "test"):
            with tempfile.NamedTemporaryFile(suffix=".json") as report:
                subprocess.run([sys.executable, "-m", "rnnkit.cli", "evaluate", "--run", *runs, "--split", split,
                                "--output", report.name], check=True, stdout=subprocess.DEVNULL)
                scores[split] = json.loads(Path(report.name).read_text())
        out.write_text(json.dumps(scores))
    return json.loads(out.read_text())


def table_row(name: str, metrics: Sequence[dict], timing: Sequence[dict] | None = None) -> str:
    """A markdown row of dev / test weighted F1, test macro F1 and accuracy (mean ± std over ``metrics``), and,
    for single runs, the best epoch, wall seconds per epoch and per run, and the peak RSS."""
    scores = (("dev", "weighted_f1"), ("test", "weighted_f1"), ("test", "accuracy"))
    dev, test, accuracy = ([m[split][key] for m in metrics] for split, key in scores)
    macro = [100 * m["test"]["report"]["macro avg"]["f1-score"] for m in metrics]
    row = f"| {name} | {mean_std(dev)} | {mean_std(test)} | {mean_std(macro)} | {mean_std(accuracy)} "
    if timing is None:
        return row + "| | | | |"
    seconds = statistics.mean(t["seconds"] for t in timing)
    return row + (f"| {statistics.mean(m['best_epoch'] for m in metrics):.1f} "
                  f"| {seconds / len(metrics[0]['history']):.0f} | {seconds:.0f} "
                  f"| {max(t['peak_rss_mb'] for t in timing):.0f} |")


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="frozen")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meld"),
                        help="MELD directory with {train,dev,test}_sent_emo.csv (default: ../shared/data/meld)")
    parser.add_argument("--runs-dir", default="runs/meld-bench", help="where the run directories go")
    parser.add_argument("--cache-dir", default=os.environ.get("RNNKIT_CACHE") or str(Path.home() / ".cache" / "rnnkit"),
                        help="sentence-vector cache shared by all runs (default: $RNNKIT_CACHE or ~/.cache/rnnkit)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (default: 1)")
    presets = {mode: PRESETS[mode]() for mode in MODES}
    for name in FLAGS:
        value = next(preset[name] for preset in presets.values() if name in preset)
        parser.add_argument(f"--{name.replace('_', '-')}", type=str if isinstance(value, tuple) else type(value),
                            help="rnnkit train flag (default: the preset's: " + ", ".join(
                                f"{mode} {preset[name]}" for mode, preset in presets.items() if name in preset) + ")")
    for name in SWITCHES:
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help="rnnkit train flag")
    parser.add_argument("--ensemble", type=int, metavar="K",
                        help="also score ensembles of K runs: the seeds in consecutive groups of K, each group's "
                             "runs averaged by rnnkit evaluate, mean ± std over the groups")
    parser.add_argument("--no-predict", action="store_true", help="skip the rnnkit predict timing")
    args = parser.parse_args()
    if args.ensemble is not None and (args.ensemble < 1 or len(args.seeds) % args.ensemble):
        parser.error(f"--ensemble {args.ensemble} must divide the {len(args.seeds)} seeds into equal groups")
    args.data = str(Path(args.data).resolve())
    os.environ["RNNKIT_CACHE"] = args.cache_dir
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)

    runs = [(variant, seed) for variant in args.variants for seed in args.seeds]
    results = train_all(args, runs)
    rows = []
    for variant in args.variants:
        metrics, timing = zip(*(results[variant, seed] for seed in args.seeds))
        rows.append(table_row(variant, metrics, timing))
        if args.ensemble:
            groups = [args.seeds[i : i + args.ensemble] for i in range(0, len(args.seeds), args.ensemble)]
            rows.append(table_row(f"{variant}, {len(groups)} ensembles of {args.ensemble} seeds",
                                  [ensemble_metrics(args, variant, group) for group in groups]))
    print(f"\nMELD, {args.mode} all-MiniLM-L6-v2, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), "
          f"{args.jobs} training(s) at a time\n")
    print("| variant | dev weighted F1 | test weighted F1 | test macro F1 | test accuracy | best epoch | s / epoch "
          "| s / run | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)
    if not args.no_predict:
        run = run_dir(args, args.variants[0], args.seeds[0])
        speeds = {"cached sentence vectors": predict_speed(args, run, args.cache_dir)} if args.mode == "frozen" else {}
        with tempfile.TemporaryDirectory() as empty:
            speeds["encoding every utterance"] = predict_speed(args, run, empty)
        print("\nrnnkit predict, MELD test CSV: " + ", ".join(f"{v:.0f} utterances/s with {k}" for k, v in speeds.items()))


if __name__ == "__main__":
    main()
