"""A trained run, loaded back from the directory ``rnnkit train`` wrote, to predict emotions from Python.

A run directory holds::

    config.json             data source, label list, ERCConfig and TrainerConfig of the run; once it is
                            complete, the sha256 digests of the label list and model.safetensors
    encoder.json            encoder description; vocab.json too for the "words"/"chars" encoders
    model.safetensors       weights of the best dev epoch
    metrics.json            dev and test scores (percent), per-class report, per-epoch history
    confusion_matrix.png    test-split confusion matrix
    training_curve.png      train loss and dev score per epoch
    class_scores.png        test-split precision, recall and F1 per class
    class_f1_curve.png      dev F1 per class per epoch
    checkpoint/             the last epoch, for ``rnnkit train --resume``

:func:`load_run` rebuilds the model of such a directory; :meth:`Run.predict` and :meth:`Run.probabilities`
label dialogues with it, and :func:`predict_probabilities` averages several runs (an ensemble of seeds).
:mod:`rnnkit.erc.recipe` writes the directory and scores runs with these.

Shapes: B dialogues, U utterances (padded), L labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from rnnkit.erc.encoders import UtteranceEncoder, load_encoder
from rnnkit.erc.model import ERCConfig, ERCModel, collate_dialogues
from rnnkit.erc.records import Dialogue
from rnnkit.trainer import WEIGHTS_FILE, atomic_write_bytes, load_weights

__all__ = ["CONFIG_FILE", "EVAL_BATCH_SIZE", "RunError", "Run", "read_json", "json_text", "write_json", "seal_run",
           "load_run", "load_runs", "predict_probabilities", "prediction_records"]

CONFIG_FILE = "config.json"
# The config.json field that holds the sha256 digests of the labels and the weights (see seal_run).
DIGESTS_KEY = "sha256"
# Scoring always batches the same dialogues together, so evaluate reproduces train's numbers bit for bit.
EVAL_BATCH_SIZE = 32


class RunError(ValueError):
    """A run directory that cannot be loaded (missing, incomplete, damaged, or runs that do not go together) or
    written (not creatable, or an encoder its configuration cannot build)."""


@dataclass
class Run:
    """A trained run: its model (weights loaded, eval mode), its labels (the columns of the probabilities) and
    the data it was trained on (``data`` None and ``format`` "builtin" for the built-in corpus).
    ``training_features`` is True for a run on precomputed features loaded with its training files, which
    hold no vectors for new dialogues."""

    model: ERCModel
    labels: list[str]
    format: str
    data: str | None
    limit: int | None
    training_features: bool = False

    def probabilities(self, dialogues: Sequence[Dialogue]) -> list[torch.Tensor]:
        """One (len(dialogue), L) tensor of class probabilities per dialogue, columns in ``labels`` order.

        A run on precomputed features needs the vectors of ``dialogues``: load it with
        ``load_run(directory, encoder="features:FILE")``, FILE holding one row per utterance.
        """
        if self.training_features:
            raise RunError(f"the run reads precomputed features ({self.model.config.encoder}); load it with "
                           "load_run(directory, encoder='features:FILE'), FILE holding one row per utterance")
        dialogues = list(dialogues)
        self.model.encoder.prepare(dialogues)
        return predict_probabilities(self.model, dialogues)

    def predict(self, dialogues: Sequence[Dialogue]) -> list[list[str]]:
        """The most probable label of every utterance, one list per dialogue."""
        return [[self.labels[i] for i in p.argmax(-1).tolist()] for p in self.probabilities(dialogues)]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({err})") from None


def json_text(obj) -> str:
    """``obj`` as the indented JSON text, ending in a newline, of a run's config.json and metrics.json."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as :func:`json_text` in UTF-8, atomically (a run directory's config.json and metrics.json)."""
    atomic_write_bytes(path, json_text(obj).encode("utf-8"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _labels_digest(labels) -> str:
    return _sha256(json.dumps(labels, ensure_ascii=False).encode("utf-8"))


def seal_run(directory) -> None:
    """Record in the run's config.json the sha256 digests of its label list and of its model.safetensors, which
    :func:`load_run` checks: labels reordered by hand, or weights swapped for other ones, would otherwise load
    and name every prediction wrongly. Called once the run is complete (the weights change while it trains)."""
    directory = Path(directory)
    saved = read_json(directory / CONFIG_FILE)
    digests = {"labels": _labels_digest(saved["labels"]),
               WEIGHTS_FILE: _sha256((directory / WEIGHTS_FILE).read_bytes())}
    write_json(directory / CONFIG_FILE, saved | {DIGESTS_KEY: digests})


def _check_digests(directory: Path, saved: dict) -> None:
    """RunError naming the file whose content no longer matches the digest :func:`seal_run` recorded."""
    digests = saved.get(DIGESTS_KEY, {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise RunError(f"{directory / CONFIG_FILE}: field {DIGESTS_KEY!r} must map names to sha256 digests")
    if "labels" in digests and digests["labels"] != _labels_digest(saved["labels"]):
        raise RunError(f"{directory / CONFIG_FILE}: the labels differ from those the run was trained with (their "
                       "sha256 digest does not match); were they edited or reordered?")
    if WEIGHTS_FILE in digests and digests[WEIGHTS_FILE] != _sha256((directory / WEIGHTS_FILE).read_bytes()):
        raise RunError(f"{directory / WEIGHTS_FILE}: the weights differ from those the run was trained with (their "
                       f"sha256 digest does not match the one in {CONFIG_FILE})")


def load_run(directory, *, encoder: str | None = None) -> Run:
    """Load the run in ``directory``; ``encoder`` replaces a features encoder's file (prediction inputs).
    Raises :class:`RunError` naming the file when the directory is not a complete run, or when its labels or
    weights do not match the digests :func:`seal_run` recorded. A run written before digests were recorded, or
    one whose training has not finished, has none, and loads unchecked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"{directory}: run directory not found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise RunError(f"{directory}: not a run directory (no {name}); train one with 'rnnkit train --out DIR'")
    saved = read_json(directory / CONFIG_FILE)
    try:
        config = ERCConfig.from_dict(saved["model"])
        if encoder is not None:
            config = dataclasses.replace(config, encoder=encoder)
        run = Run(ERCModel(config, load_encoder(config, directory)), list(saved["labels"]), saved["format"],
                  saved["data"], saved["limit"], encoder is None and config.encoder.startswith("features:"))
    except (KeyError, TypeError, ValueError, FileNotFoundError) as err:
        raise RunError(f"{directory / CONFIG_FILE}: cannot rebuild the run ({err})") from None
    try:
        _check_digests(directory, saved)
        load_weights(run.model, directory / WEIGHTS_FILE)
    except (SafetensorError, RuntimeError, OSError) as err:  # a damaged file; names or shapes that differ
        raise RunError(f"{directory / WEIGHTS_FILE}: cannot load the weights ({err})") from None
    run.model.eval()
    return run


def load_runs(directories, *, encoder: str | None = None) -> list[Run]:
    """:func:`load_run` for each of ``directories``, which must share their labels (an ensemble averages the
    class probabilities of its members, so they must mean the same classes in the same order)."""
    runs = [load_run(directory, encoder=encoder) for directory in directories]
    for directory, run in zip(directories[1:], runs[1:]):
        if run.labels != runs[0].labels:
            raise RunError(f"{directory}: labels {', '.join(run.labels)} differ from those of {directories[0]} "
                           f"({', '.join(runs[0].labels)}); an ensemble needs runs trained on the same labels")
    return runs


def predict_probabilities(models: ERCModel | Sequence[ERCModel], dialogues: list[Dialogue]) -> list[torch.Tensor]:
    """Class probabilities, one (len(dialogue), L) tensor per dialogue, in input order; for several models
    (an ensemble, e.g. of seeds) the mean of their probabilities. The models' encoders must have been prepared
    for ``dialogues`` (``model.encoder.prepare(dialogues)``; :meth:`Run.probabilities` does it)."""
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


def prediction_records(dialogues: Sequence[Dialogue], probabilities, labels: Sequence[str]) -> Iterator[dict]:
    """One record per utterance of ``dialogues`` given their ``probabilities`` (one (U, L) tensor or array per
    dialogue, L = len(``labels``)), whatever computed them: dialogue id, index, speaker, text, predicted label,
    every label's probability, and the gold label when there is one (what :func:`rnnkit.erc.predict_records`
    and ``rnnkit predict`` write)."""
    for dialogue, probs in zip(dialogues, probabilities):
        for index, (utterance, p) in enumerate(zip(dialogue.utterances, probs.tolist())):
            record = {"dialogue": dialogue.id, "index": index, "speaker": utterance.speaker,
                      "text": utterance.text, "prediction": labels[max(range(len(p)), key=p.__getitem__)],
                      "probabilities": dict(zip(labels, p))}
            if utterance.label is not None:
                record["label"] = utterance.label
            yield record
