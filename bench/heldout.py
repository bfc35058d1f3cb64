"""Do ``rnnkit train``'s defaults hold on data they were not tuned on? Settings × corpora × seeds, and a baseline.

Three corpora, none of which lets MELD's test split choose anything:

- ``meld-dev``: MELD as it is, except that the test split is its dev CSV (linked, in a temporary directory), so the
  test CSV is never read; the score is the best epoch's dev weighted F1, the split the settings were tuned on.
- ``heldout``: a stand-in for a new corpus, cut from MELD's *train* dialogues alone: 80% train, 10% dev (which
  chooses the epoch and stops training) and 10% test, written as JSONL in a temporary directory; the score is that
  test split's weighted F1, which no setting was tuned on.
- ``builtin``: the built-in synthetic corpus; the score is its dev weighted F1.

Each setting is a list of ``rnnkit train`` flags added to ``--encoder``; the empty setting is the default a user
gets (the encoder's preset). Every run is a ``rnnkit train`` process (``RUNS_DIR/<corpus>-<setting>-seed<S>``;
finished runs are reused), timed by wall clock. ``--baseline`` also fits a logistic regression (scikit-learn, on
standardised frozen vectors of each utterance alone, C chosen on the held-out dev split) and scores it on the
held-out test split. MELD is GPL-3.0 data: it is read by path, never copied.

    python bench/heldout.py --encoder minilm --baseline --setting old "--preset tokens --epochs 6 --patience 0"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnkit.erc import ERCConfig, write_jsonl
from rnnkit.erc.data import read_split
from rnnkit.erc.encoders import build_encoder

CORPORA = ("meld-dev", "heldout", "builtin")
# Which split of each corpus's metrics.json is reported: meld-dev's test split is its dev split again.
REPORTED = {"meld-dev": "dev", "heldout": "test", "builtin": "dev"}
MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "dev_sent_emo.csv"}


def heldout_split(meld: Path, seed: int = 0) -> dict[str, list]:
    """MELD's train dialogues shuffled with ``seed`` and cut 80 / 10 / 10 into train, dev and test."""
    dialogues = read_split(meld, "train", "meld")
    random.Random(seed).shuffle(dialogues)
    a, b = int(0.8 * len(dialogues)), int(0.9 * len(dialogues))
    return {"train": dialogues[:a], "dev": dialogues[a:b], "test": dialogues[b:]}


def build_corpora(meld: Path, root: Path) -> dict[str, list[str]]:
    """The ``--data``/``--format`` flags of each corpus, writing the two derived ones under ``root``."""
    linked = root / "meld-dev"
    linked.mkdir()
    for split, name in MELD_FILES.items():
        (linked / f"{split}_sent_emo.csv").symlink_to(meld / name)
    heldout = root / "heldout"
    heldout.mkdir()
    for split, dialogues in heldout_split(meld).items():
        write_jsonl(heldout / f"{split}.jsonl", dialogues)
    return {"meld-dev": ["--data", str(linked), "--format", "meld"],
            "heldout": ["--data", str(heldout), "--format", "jsonl"], "builtin": []}


def train(args, data: list[str], corpus: str, setting: str, flags: str, seed: int) -> dict:
    """The metrics.json of one run (trained unless it exists), with its wall seconds under "seconds"."""
    out = Path(args.runs_dir) / f"{corpus}-{setting}-seed{seed}"
    timing = out / "bench_time.json"
    if not timing.exists():
        argv = [sys.executable, "-m", "rnnkit.cli", "train", *data, "--encoder", args.encoder, "--seed", str(seed),
                *shlex.split(flags), "--out", str(out), "--quiet"]
        print(" ".join(argv[2:]), flush=True)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    return json.loads((out / "metrics.json").read_text()) | json.loads(timing.read_text())


def baseline(split: dict[str, list], layers: tuple[int, ...] | None) -> tuple[float, float]:
    """Held-out dev and test weighted F1 of a logistic regression on the frozen MiniLM vectors (the mean of
    ``layers``, or the sentence vector for None), its C chosen on dev."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    encoder = build_encoder(ERCConfig(num_labels=7, encoder="minilm", encoder_layers=layers), split["train"])

    def arrays(name):
        dialogues = split[name]
        encoder.prepare(dialogues, name)
        vectors = [encoder.batch_inputs([d])["features"][0, : len(d.utterances)] for d in dialogues]  # (U, D) each
        return np.concatenate(vectors), [u.label for d in dialogues for u in d.utterances]

    (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = map(arrays, ("train", "dev", "test"))
    scaler = StandardScaler().fit(x_train)
    x_train, x_dev, x_test = map(scaler.transform, (x_train, x_dev, x_test))
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train) for c in (0.01, 0.05, 0.2, 1.0)]
    dev = [100 * f1_score(y_dev, fit.predict(x_dev), average="weighted") for fit in fits]
    best = fits[int(np.argmax(dev))]
    return max(dev), 100 * f1_score(y_test, best.predict(x_test), average="weighted")


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meld", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meld"),
                        help="MELD directory with {train,dev}_sent_emo.csv (default: ../shared/data/meld)")
    parser.add_argument("--encoder", default="minilm", help="rnnkit train --encoder (default: minilm)")
    parser.add_argument("--setting", nargs=2, action="append", metavar=("NAME", "FLAGS"), default=[],
                        help="a named setting: rnnkit train flags in one string (the default, no flags, always runs)")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/heldout-bench", help="where the run directories go")
    parser.add_argument("--cache-dir", default=os.environ.get("RNNKIT_CACHE") or str(Path.home() / ".cache" / "rnnkit"),
                        help="sentence-vector cache shared by all runs (default: $RNNKIT_CACHE or ~/.cache/rnnkit)")
    parser.add_argument("--baseline", action="store_true",
                        help="also score a logistic regression on frozen MiniLM vectors on the held-out split")
    args = parser.parse_args()
    os.environ["RNNKIT_CACHE"] = args.cache_dir
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    settings = {"default": ""} | dict(args.setting)
    meld = Path(args.meld).resolve()

    with tempfile.TemporaryDirectory() as root:
        data = build_corpora(meld, Path(root))
        results = {(corpus, name, seed): train(args, data[corpus], corpus, name, flags, seed)
                   for name, flags in settings.items() for corpus in args.corpora for seed in args.seeds}
    print(f"\n--encoder {args.encoder}, seeds {' '.join(map(str, args.seeds))}: weighted F1 (mean ± std), "
          "epochs trained (best epoch), wall seconds per run\n")
    print("| setting | flags | " + " | ".join(f"{c} ({REPORTED[c]})" for c in args.corpora) + " |")
    print("|---|---|" + "---|" * len(args.corpora))
    for name, flags in settings.items():
        cells = []
        for corpus in args.corpora:
            runs = [results[corpus, name, seed] for seed in args.seeds]
            cells.append(f"{mean_std([r[REPORTED[corpus]]['weighted_f1'] for r in runs])}; "
                         f"{statistics.mean(len(r['history']) for r in runs):.1f} ep "
                         f"({statistics.mean(r['best_epoch'] for r in runs):.1f}); "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} s")
        print(f"| {name} | `{flags or '(preset)'}` | " + " | ".join(cells) + " |", flush=True)
    if args.baseline:
        split = heldout_split(meld)
        for layers in ((1, 2, 3, 4, 5), None):
            dev, test = baseline(split, layers)
            pooled = "sentence vector" if layers is None else f"mean of layers {layers[0]}-{layers[-1]}"
            print(f"\nlogistic regression, frozen MiniLM {pooled}: held-out dev {dev:.2f}, held-out test {test:.2f}")


if __name__ == "__main__":
    main()
