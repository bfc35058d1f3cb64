"""The ERC side of the command line: what ``rnnkit train`` writes besides the run (see :mod:`rnnkit.erc.runs`
for the directory and its loading), the loss, and the scoring that train and evaluate share so that
``rnnkit evaluate`` reproduces the test scores in metrics.json exactly.

Shapes: B dialogues, U utterances (padded), L labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rnnkit._io import atomic_write_bytes
from rnnkit.cli._errors import CLIError
from rnnkit.erc.data import DataError, Dialogue, detect_format, metric_name, neutral_label, read_split
from rnnkit.erc.losses import supervised_contrastive
from rnnkit.erc.metrics import compute_metrics
from rnnkit.erc.model import IGNORE_INDEX, ERCModel
from rnnkit.erc.runs import predict_probabilities

__all__ = [
    "METRICS_FILE", "CONFUSION_PNG", "CURVES_PNG", "write_json", "resolve_format", "read_dialogues", "check_labels",
    "erc_loss", "class_weights", "score",
]

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curve.png"


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def resolve_format(data: str | None, format: str | None) -> str:
    """The format to read ``data`` with: as given, "builtin" without data, else detected from the files."""
    if format is None:
        return "builtin" if data is None else detect_format(data)
    if format != "builtin" and data is None:
        raise CLIError(f"--format {format} needs --data DIR")
    return format


def read_dialogues(data: str | None, format: str, split: str, limit: int | None) -> list[Dialogue]:
    """A split of ``data`` (None: the built-in corpus), cut to its first ``limit`` dialogues."""
    dialogues = read_split(data, split, format)
    return dialogues if limit is None else dialogues[:limit]


def check_labels(dialogues: list[Dialogue], labels: list[str], source: str) -> None:
    """DataError naming the dialogue and utterance of the first label outside ``labels``."""
    known = set(labels)
    for dialogue in dialogues:
        for k, utterance in enumerate(dialogue.utterances):
            if utterance.label is not None and utterance.label not in known:
                raise DataError(f"{source}: dialogue {dialogue.id!r}, utterances[{k}], field 'label': unknown "
                                f"label {utterance.label!r}; the run's labels are {', '.join(labels)}")


def erc_loss(model: nn.Module, batch, weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, contrastive: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labeled utterances of the batch (0 when there are none); with class
    ``weights`` (L,), the weighted mean (each utterance's term times the weight of its label, over their sum);
    ``label_smoothing`` as in torch's ``cross_entropy``. With ``contrastive`` > 0, plus that times the
    supervised contrastive loss of the labeled utterances' fused vectors (``ERCModel.forward(features=True)``)."""
    if contrastive:
        logits, fused = model(batch, features=True)  # (B, U, L), (B, U, F)
    else:
        logits = model(batch)  # (B, U, L)
    labels = batch.labels.reshape(-1)  # (B*U,)
    if weights is not None:
        weights = weights.to(logits.device)
    total = nn.functional.cross_entropy(logits.reshape(labels.numel(), -1), labels, weight=weights,
                                        ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    keep = labels.ne(IGNORE_INDEX)  # (B*U,)
    labeled = labels[keep]  # (N,)
    if not labeled.numel():
        return total  # 0, still attached to the graph
    loss = total / (labeled.numel() if weights is None else weights[labeled].sum())
    if contrastive:
        loss = loss + contrastive * supervised_contrastive(fused.reshape(labels.numel(), -1)[keep], labeled)
    return loss


def class_weights(dialogues: list[Dialogue], labels: list[str], power: float) -> torch.Tensor | None:
    """(L,) loss weights ``(count / mean count) ** -power`` from the label counts of ``dialogues`` (a class never
    seen counts as one); None for ``power`` 0. 0.5 weighs by the inverse square root of frequency, 1 by its inverse."""
    if power == 0:
        return None
    index = {label: i for i, label in enumerate(labels)}
    counts = torch.zeros(len(labels))
    for dialogue in dialogues:
        for utterance in dialogue.utterances:
            if utterance.label is not None:
                counts[index[utterance.label]] += 1
    counts = counts.clamp(min=1)
    return (counts / counts.mean()) ** -power


def score(models: ERCModel | Sequence[ERCModel], dialogues: list[Dialogue], labels: list[str], format: str) -> dict:
    """``compute_metrics`` over the labeled utterances of ``dialogues`` (plus micro_f1_no_neutral for DailyDialog),
    predicted by one model or the mean probabilities of several."""
    index = {label: i for i, label in enumerate(labels)}
    y_true, y_pred = [], []
    for dialogue, probs in zip(dialogues, predict_probabilities(models, dialogues)):
        for utterance, p in zip(dialogue.utterances, probs):
            if utterance.label is not None:
                y_true.append(index[utterance.label])
                y_pred.append(int(p.argmax()))
    if not y_true:
        raise DataError(f"no labeled utterances to score among {len(dialogues)} dialogue(s)")
    neutral = neutral_label(format) if metric_name(format) == "micro_f1_no_neutral" else None
    return compute_metrics(y_true, y_pred, labels, neutral)
