"""Tests for rnnkit.erc.plots: the per-class figures of a run directory draw the numbers of its metrics.json, and the
explanation figure copes with models missing a part and with one-utterance dialogues."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from rnnkit.erc import Dialogue, ERCConfig, Explanation, Utterance, load_data, plots, recipe, train_run
from rnnkit.trainer import TrainerConfig

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_run_draws_its_per_class_scores_and_curves_from_its_metrics(tmp_path, monkeypatch):
    drawn = {}

    def spy(name):
        draw = getattr(plots, name)
        monkeypatch.setattr(recipe, name, lambda *args: drawn.setdefault(name, args) and draw(*args))

    spy("class_scores_png")
    spy("class_curves_png")
    data = load_data(limit=8)
    train_run(tmp_path, data, ERCConfig(num_labels=len(data.labels), embedding_dim=8, encoder_hidden=8,
                                        context_hidden=8, speaker_hidden=8),
              TrainerConfig(epochs=3, batch_size=4, quiet=True))
    for name in (recipe.CLASS_SCORES_PNG, recipe.CLASS_CURVES_PNG):
        assert (tmp_path / name).read_bytes().startswith(PNG), name
    metrics = json.loads((tmp_path / recipe.METRICS_FILE).read_text())
    history = metrics["history"]

    report, labels, _ = drawn["class_scores_png"]
    assert labels == data.labels and report == metrics["test"]["report"]
    epochs, class_f1, best_epoch = drawn["class_curves_png"]
    assert epochs == [1, 2, 3] and best_epoch == metrics["best_epoch"]
    assert class_f1 == {label: [record[f"f1/{label}"] for record in history] for label in data.labels}
    # The per-class keys sit beside the monitored score without changing it: the best epoch's dev scores are
    # the final dev scores, averaged and per class.
    best = history[best_epoch - 1]
    assert best[metrics["monitor"]] == metrics["dev"][metrics["monitor"]]
    for label in data.labels:
        assert best[f"f1/{label}"] == pytest.approx(100 * metrics["dev"]["report"][label]["f1-score"])


def test_class_curves_leave_out_epochs_without_scores():
    png = plots.class_curves_png([1, 2, 3], {"joy": [math.nan, 40.0, 55.5], "anger": [0.0, 0.0, 10.0]}, 3)
    assert png.startswith(PNG)


@pytest.mark.parametrize("parts", [("context", "speaker"), ("context",), ("speaker",)])
@pytest.mark.parametrize("U", [1, 12])
def test_an_explanation_figure_has_the_size_it_promises(parts, U):
    gates = np.random.default_rng(0).uniform(size=(1, 2, U, 3))
    explanation = Explanation(
        Dialogue("d", tuple(Utterance(f"S{k % 3}", "$5 for a $ sign " * 8, "joy" if k % 2 else None)
                            for k in range(U))),
        ["anger", "joy"], np.full((U, 2), 0.5), gates if "context" in parts else None,
        gates if "speaker" in parts else None, np.linspace(0, 1.3, U) if "speaker" in parts else None)
    width, height = plots.explanation_figsize(explanation)
    assert struct.unpack(">II", plots.explanation_png(explanation)[16:24]) == (
        round(width * plots.EXPLANATION_DPI), round(height * plots.EXPLANATION_DPI))
