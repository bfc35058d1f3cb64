"""The run directory: what ``rnnkit train`` writes, and how ``evaluate`` and ``predict`` load it back.

A run directory holds::

    config.json             data source, label list, ERCConfig and TrainerConfig of the run
    encoder.json            encoder description; vocab.json too for the "words"/"chars" encoders
    model.safetensors       weights of the best dev epoch
    metrics.json            dev and test scores (percent), per-class report, per-epoch history
    confusion_matrix.png    test-split confusion matrix
    training_curve.png      train loss and dev score per epoch
    checkpoint/             the last epoch, for ``rnnkit train --resume``

It also holds the ERC side of the generic trainer (the loss and the scoring), which train and
evaluate share so that ``rnnkit evaluate`` reproduces the test scores in metrics.json exactly.

Shapes: B dialogues, U utterances (padded), L labels.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from rnnkit._io import atomic_write_bytes, load_weights
from rnnkit.cli._errors import CLIError
from rnnkit.erc.data import DataError, Dialogue, detect_format, metric_name, neutral_label, read_split
from rnnkit.erc.encoders import UtteranceEncoder, load_encoder
from rnnkit.erc.losses import supervised_contrastive
from rnnkit.erc.metrics import compute_metrics
from rnnkit.erc.model import IGNORE_INDEX, ERCConfig, ERCModel, collate_dialogues
from rnnkit.erc.training import WEIGHTS_FILE

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "CONFUSION_PNG", "CURVES_PNG", "EVAL_BATCH_SIZE",
    "Run", "load_run", "load_runs", "write_json", "read_json", "resolve_format", "read_dialogues", "check_labels",
    "erc_loss", "class_weights", "predict_probabilities", "score",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curve.png"
# Scoring always batches the same dialogues together, so evaluate reproduces train's numbers bit for bit.
EVAL_BATCH_SIZE = 32


@dataclass
class Run:
    """A trained run: its model (weights loaded, eval mode) and the settings it was trained with."""

    model: ERCModel
    labels: list[str]
    format: str
    data: str | None
    limit: int | None


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CLIError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIError(f"{path}: not valid JSON ({err})") from None


def load_run(directory, *, encoder: str | None = None) -> Run:
    """Load the run in ``directory``; ``encoder`` replaces a features encoder's file (prediction inputs)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CLIError(f"{directory}: run directory not found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CLIError(f"{directory}: not a run directory (no {name}); train one with 'rnnkit train --out DIR'")
    saved = read_json(directory / CONFIG_FILE)
    try:
        config = ERCConfig.from_dict(saved["model"])
        if encoder is not None:
            config = dataclasses.replace(config, encoder=encoder)
        run = Run(ERCModel(config, load_encoder(config, directory)), list(saved["labels"]), saved["format"],
                  saved["data"], saved["limit"])
    except (KeyError, TypeError, ValueError, FileNotFoundError) as err:
        raise CLIError(f"{directory / CONFIG_FILE}: cannot rebuild the run ({err})") from None
    try:
        load_weights(run.model, directory / WEIGHTS_FILE)
    except (SafetensorError, RuntimeError, OSError) as err:  # a damaged file; names or shapes that differ
        raise CLIError(f"{directory / WEIGHTS_FILE}: cannot load the weights ({err})") from None
    run.model.eval()
    return run


def load_runs(directories, *, encoder: str | None = None) -> list[Run]:
    """:func:`load_run` for each of ``directories``, which must share their labels (an ensemble averages the
    class probabilities of its members, so they must mean the same classes in the same order)."""
    runs = [load_run(directory, encoder=encoder) for directory in directories]
    for directory, run in zip(directories[1:], runs[1:]):
        if run.labels != runs[0].labels:
            raise CLIError(f"{directory}: labels {', '.join(run.labels)} differ from those of {directories[0]} "
                           f"({', '.join(runs[0].labels)}); an ensemble needs runs trained on the same labels")
    return runs


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


def predict_probabilities(models: ERCModel | Sequence[ERCModel], dialogues: list[Dialogue]) -> list[torch.Tensor]:
    """Class probabilities, one (len(dialogue), L) tensor per dialogue, in input order; for several models
    (an ensemble, e.g. of seeds) the mean of their probabilities."""
    if isinstance(models, ERCModel):
        return _probabilities(models, dialogues)
    members = [_probabilities(model, dialogues) for model in models]
    return [torch.stack(per_model).mean(0) for per_model in zip(*members)]


@torch.no_grad()
def _probabilities(model: ERCModel, dialogues: list[Dialogue]) -> list[torch.Tensor]:
    encoder: UtteranceEncoder = model.encoder
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(dialogues), EVAL_BATCH_SIZE):
        chunk = dialogues[start : start + EVAL_BATCH_SIZE]
        batch = collate_dialogues(chunk, encoder, None).to(device)
        probs = model(batch).softmax(-1).cpu()  # (B, U, L)
        out.extend(p[: len(d.utterances)] for p, d in zip(probs, chunk))
    model.train(was_training)
    return out


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
