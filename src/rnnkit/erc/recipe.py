"""The ERC recipe: data → utterance encoder → ERCModel → :class:`rnnkit.trainer.Trainer` → run directory.

What ``rnnkit train``, ``rnnkit evaluate`` and ``rnnkit predict`` do, callable from Python::

    from rnnkit.erc import ERCConfig, load_data, train_run
    from rnnkit.trainer import TrainerConfig

    data = load_data()                                     # the built-in corpus; or load_data("data/meld")
    metrics = train_run("runs/demo", data, ERCConfig(num_labels=len(data.labels)), TrainerConfig(epochs=2))
    metrics["test"]["weighted_f1"]

:func:`train_run` writes the run directory that :mod:`rnnkit.erc.runs` describes and loads; :func:`score` is the one
scoring function of training (dev, each epoch, and the final dev and test scores) and :func:`evaluate_runs`, so that
evaluating a run reproduces the test scores in its metrics.json exactly.

Errors a user can act on: :class:`DataError` (the data), :class:`RunError` (a run directory that cannot be
written, an encoder its configuration cannot build), :class:`rnnkit.trainer.CheckpointError` (resuming) and
:class:`rnnkit.trainer.DivergenceError` (a loss that turned NaN or infinite).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnkit.erc.data import (
    SPLITS,
    DataError,
    Dialogue,
    check_labels,
    label_set,
    metric_name,
    neutral_label,
    read_split,
    resolve_format,
    split_file,
)
from rnnkit.erc.encoders import build_encoder, load_encoder
from rnnkit.erc.losses import class_weights, erc_loss
from rnnkit.erc.metrics import compute_metrics
from rnnkit.erc.model import ERCConfig, ERCModel, collate_dialogues
from rnnkit.erc.plots import class_curves_png, class_scores_png, confusion_png, curves_png
from rnnkit.erc.pretrained import model_depth
from rnnkit.erc.runs import (
    CONFIG_FILE,
    EVAL_BATCH_SIZE,
    Run,
    RunError,
    predict_probabilities,
    prediction_records,
    seal_run,
    write_json,
)
from rnnkit.trainer import (
    CHECKPOINT_DIR,
    STATE_FILE,
    Trainer,
    TrainerConfig,
    atomic_write_bytes,
    dist_info,
    seed_everything,
)
from rnnkit.trainer.files import remove_temporaries

__all__ = [
    "PRESETS", "preset_for", "preset_settings", "tokens_preset", "features_preset", "frozen_preset", "finetune_preset",
    "ABLATIONS", "METRICS_FILE", "CONFUSION_PNG", "CURVES_PNG", "CLASS_SCORES_PNG", "CLASS_CURVES_PNG", "CLASS_F1",
    "RunData", "load_data", "train_run", "score",
    "evaluate_runs", "predict_records", "PREDICT_WINDOW",
]

# Variant name -> ERCConfig fields it changes; the full model comes first.
ABLATIONS = {"full": {}, "no_context": {"use_context": False}, "no_speaker": {"use_speaker": False}}
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curve.png"
CLASS_SCORES_PNG = "class_scores.png"
CLASS_CURVES_PNG = "class_f1_curve.png"
# Key of a class's dev F1 (percent) in each epoch of the history, beside the averaged scores (never the monitor).
CLASS_F1 = "f1/{}"
# Utterances predict_records labels at a time: a few MB of records, and enough to keep batching efficient.
PREDICT_WINDOW = 4096


MINILM_DEPTH = 6  # transformer layers of all-MiniLM-L6-v2, the packaged encoder

# -- presets: the measured settings per encoder kind (see BENCHMARKS.md), as ERCConfig and TrainerConfig fields ----

def tokens_preset() -> dict[str, Any]:
    """words and chars encoders, embeddings trained from scratch: their dev score peaked by epoch 2 to 4 on the
    built-in corpus and on MELD, so three epochs without a higher one end the run, and 20 is only a cap."""
    return {"epochs": 20, "patience": 3, "lr": 3e-3, "dropout": 0.3, "batch_size": 16}


def features_preset() -> dict[str, Any]:
    """features:FILE vectors, fixed: class-weighted loss and a moving average of the weights, which gained most on
    MELD's dev split over frozen sentence vectors. The dev score peaked anywhere from epoch 4 to 12 (MELD, a
    held-out cut of its training dialogues, the built-in corpus) and can plateau for three epochs before rising
    again, so the run ends after five without a higher one; 30 is only a cap."""
    return {"epochs": 30, "patience": 5, "lr": 3e-3, "dropout": 0.3, "batch_size": 16, "class_weighting": 0.5,
            "ema": 0.98}


def frozen_preset(depth: int = MINILM_DEPTH) -> dict[str, Any]:
    """minilm or a model directory, frozen: the features preset on the mean of transformer layers 1 to
    ``depth`` - 1 (all but the last of the model's ``depth`` layers), which keeps more of the wording that shows
    emotion than a sentence-similarity model's last layer. On MELD's dev split this beat the sentence vector
    for MiniLM (layers 1-5 of 6) and for all-mpnet-base-v2 (layers 1-11 of 12, level with 1-6; see BENCHMARKS.md)."""
    return features_preset() | {"encoder_layers": tuple(range(1, depth))}


def finetune_preset() -> dict[str, Any]:
    """a transformer trained with the model (--finetune): the encoder at its own small rate, a warm-up and linear
    decay over a fixed number of epochs (the decay spans them all, so no early stop), batches capped in tokens to
    bound memory."""
    return {"finetune": True, "epochs": 5, "patience": 0, "lr": 1e-3, "encoder_lr": 5e-5, "warmup": 0.1, "schedule": "linear",
            "dropout": 0.3, "batch_size": 8, "token_budget": 2048, "class_weighting": 0.5}


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "tokens": tokens_preset, "features": features_preset, "frozen": frozen_preset, "finetune": finetune_preset}


def preset_settings(name: str, encoder: str) -> dict[str, Any]:
    """The settings of preset ``name`` for ``encoder`` (an ``ERCConfig.encoder``): the frozen preset's layers
    follow the depth of a transformer encoder; ``ValueError`` for a model directory whose depth cannot be read."""
    if name == "frozen" and encoder not in ("words", "chars") and not encoder.startswith("features:"):
        return frozen_preset(model_depth(encoder))
    return PRESETS[name]()


def preset_for(encoder: str, finetune: bool = False) -> str:
    """The name of the preset that ``rnnkit train`` uses for ``encoder`` (an ``ERCConfig.encoder``) unless told."""
    if finetune:
        return "finetune"
    if encoder in ("words", "chars"):
        return "tokens"
    return "features" if encoder.startswith("features:") else "frozen"


@dataclass
class RunData:
    """The dataset of a run: where it came from (``source`` None for the built-in corpus), its format, the cut to
    the first ``limit`` dialogues of each split, the label set (class-index order) and the three splits."""

    source: str | None
    format: str
    limit: int | None
    labels: list[str]
    splits: dict[str, list[Dialogue]]


def _read_dialogues(source: str | None, format: str, split: str, limit: int | None) -> list[Dialogue]:
    dialogues = read_split(source, split, format)
    return dialogues if limit is None else dialogues[:limit]


def _where(source: str | None, format: str, split: str):
    """The file of ``split`` that errors name, or the built-in corpus."""
    return f"built-in corpus ({split} split)" if format == "builtin" else split_file(source, split, format)


def load_data(source: str | None = None, format: str | None = None, limit: int | None = None) -> RunData:
    """Read the train, dev and test splits of the dataset in directory ``source`` (None: the built-in corpus),
    detecting its format unless given; ``limit`` keeps the first dialogues of each split. The labels come from the
    format (or the train split for jsonl); a split without labels, or a dev or test label outside them, is a
    :class:`DataError` naming the file, so that every input is checked before a run writes anything.
    ``RunData.source`` is the absolute path of ``source``, which a run directory records so that it can be
    evaluated or resumed from any working directory."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    format = resolve_format(source, format)
    source = None if source is None else str(Path(source).resolve())
    splits = {split: _read_dialogues(source, format, split, limit) for split in SPLITS}
    check_labels(splits["train"], None, _where(source, format, "train"))
    labels = label_set(format, splits["train"])
    for split in ("dev", "test"):
        check_labels(splits[split], labels, _where(source, format, split))
    return RunData(source, format, limit, labels, splits)


def score(models: ERCModel | Sequence[ERCModel], dialogues: list[Dialogue], labels: list[str], format: str) -> dict:
    """``compute_metrics`` over the labeled utterances of ``dialogues`` (plus micro_f1_no_neutral for DailyDialog),
    predicted by one model or the mean probabilities of several. The encoders must have been prepared for
    ``dialogues`` (see :func:`predict_probabilities`)."""
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


def train_run(directory, data: RunData | None = None, model: ERCConfig | None = None,
              trainer: TrainerConfig | None = None, *, resume: bool = False, preset: str | None = None) -> dict:
    """Train one model on ``data`` (default: the built-in corpus) into the run directory ``directory`` and return
    what it writes to metrics.json: dev and test scores, the best epoch and the per-epoch history.

    ``model`` defaults to ``ERCConfig(num_labels=len(data.labels))``, ``trainer`` to ``TrainerConfig()``. With
    ``resume``, ``directory`` already holds this run's config.json and encoder: the encoder is loaded rather than
    built, and training continues from the checkpoint when there is one (a run stopped before its first checkpoint
    starts over). Without it, whatever run ``directory`` holds is overwritten. ``preset``, the name of the
    :data:`PRESETS` entry the two configurations started from, is recorded in config.json.

    Under ``torchrun`` (after :func:`rnnkit.trainer.init_distributed`) every process calls this; rank 0 alone
    writes files, and the other ranks return ``{}``.
    """
    directory = Path(directory)
    data = load_data() if data is None else data
    model_config = ERCConfig(num_labels=len(data.labels)) if model is None else model
    trainer_config = TrainerConfig() if trainer is None else trainer
    info = dist_info()
    resume_from_checkpoint = resume and (directory / CHECKPOINT_DIR / STATE_FILE).is_file()
    seed_everything(trainer_config.seed)
    try:
        if resume:
            encoder = load_encoder(model_config, directory)
        else:
            encoder = build_encoder(model_config, data.splits["train"])
    except (ValueError, OSError) as err:  # not a model directory, a missing or damaged vocab.json, a layer the
        raise RunError(str(err)) from None  # model lacks, a model changed since the run began
    except RuntimeError as err:
        raise _unbuildable(err) from None
    for split in ("dev", "test"):
        encoder.prepare(data.splits[split], split)
    try:
        erc_model = ERCModel(model_config, encoder)
    except RuntimeError as err:
        raise _unbuildable(err) from None
    label_index = {label: i for i, label in enumerate(data.labels)}
    monitor = metric_name(data.format)

    def evaluate(m):
        scores = score(m, data.splits["dev"], data.labels, data.format)
        return ({k: v for k, v in scores.items() if isinstance(v, float)}
                | {CLASS_F1.format(label): 100 * scores["report"][label]["f1-score"] for label in data.labels})

    weights = class_weights(data.splits["train"], data.labels, trainer_config.class_weighting)  # (L,) or None

    def loss_weight(dialogue: Dialogue) -> float:
        """What the dialogue adds to erc_loss's denominator: its labeled utterances, each at its class weight."""
        labeled = [label_index[u.label] for u in dialogue.utterances if u.label is not None]
        return float(len(labeled) if weights is None else weights[labeled].sum())

    loop = Trainer(erc_model, data.splits["train"], lambda items: collate_dialogues(items, encoder, label_index),
                   functools.partial(erc_loss, weights=weights, label_smoothing=trainer_config.label_smoothing,
                                     contrastive=trainer_config.contrastive),
                   evaluate, monitor, trainer_config, directory,
                   param_groups=erc_model.param_groups(trainer_config.lr), item_size=encoder.num_tokens,
                   item_weight=loss_weight)
    if resume_from_checkpoint:
        loop.restore()  # a checkpoint that cannot be resumed stops here, before config.json is rewritten
    if info.is_main:
        if not resume:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunError(f"{directory}: cannot create the run directory ({err.strerror})") from None
            encoder.save(directory)
        remove_temporaries(directory)  # what writes killed outright (SIGKILL, a power cut) left behind
        # Rewritten on resume too: the number of epochs may have grown.
        write_json(directory / CONFIG_FILE, {
            "data": data.source, "format": data.format, "limit": data.limit, "labels": data.labels,
            "model": model_config.to_dict(), "trainer": dataclasses.asdict(trainer_config), "preset": preset,
        })
    result = loop.fit(resume=resume_from_checkpoint)
    if not info.is_main:
        return {}
    metrics = {
        "format": data.format, "monitor": monitor, "best_epoch": result.best_epoch,
        "dev": score(erc_model, data.splits["dev"], data.labels, data.format),
        "test": score(erc_model, data.splits["test"], data.labels, data.format),
        "history": result.history,
    }
    write_json(directory / METRICS_FILE, metrics)
    atomic_write_bytes(directory / CONFUSION_PNG,
                       confusion_png(metrics["test"]["confusion"], data.labels, f"test confusion ({directory.name})"))
    atomic_write_bytes(directory / CURVES_PNG, curves_png(result.history, monitor, result.best_epoch))
    atomic_write_bytes(directory / CLASS_SCORES_PNG, class_scores_png(metrics["test"]["report"], data.labels,
                                                                      f"test scores per class ({directory.name})"))
    class_f1 = {label: [record.get(CLASS_F1.format(label), math.nan) for record in result.history]  # NaN: an epoch
                for label in data.labels}  # resumed from a checkpoint written before per-class scores were kept
    atomic_write_bytes(directory / CLASS_CURVES_PNG, class_curves_png([record["epoch"] for record in result.history],
                                                                      class_f1, result.best_epoch))
    seal_run(directory)
    return metrics


def _unbuildable(err: RuntimeError) -> RunError:
    """The error for a model whose sizes torch cannot allocate (or even represent), e.g. a hidden size of 10**12."""
    return RunError(f"cannot build the model with these sizes ({str(err).strip().splitlines()[0]})")


def evaluate_runs(runs: Sequence[Run], split: str = "test", source: str | None = None,
                  format: str | None = None) -> dict:
    """Score ``runs`` (one, or an ensemble averaging their probabilities) on ``split`` of the dataset in
    ``source``, by default the data the first run was trained on (with its ``limit``). Returns the data, format
    and split scored, then the scores of :func:`score`."""
    first = runs[0]
    if source is None and format is None:
        source, format, limit = first.data, first.format, first.limit
    else:
        format, limit = resolve_format(source, format), None
    dialogues = _read_dialogues(source, format, split, limit)
    check_labels(dialogues, first.labels, _where(source, format, split))
    for member in runs:
        member.model.encoder.prepare(dialogues, split)
    return {"data": source, "format": format, "split": split,
            **score([member.model for member in runs], dialogues, first.labels, format)}


def predict_records(runs: Sequence[Run], dialogues: Iterable[Dialogue], *,
                    window: int | None = PREDICT_WINDOW) -> Iterator[dict]:
    """One record per utterance of ``dialogues``, labeled by ``runs`` (averaging their probabilities): dialogue id,
    index, speaker, text, predicted label, every label's probability, and the gold label when there is one.

    Records come as they are predicted: ``dialogues`` (any iterable, such as :func:`rnnkit.erc.iter_file`) are
    taken a window of about ``window`` utterances at a time (whole batches of ``EVAL_BATCH_SIZE`` dialogues, so
    that the numbers are those of one call on all of them), and memory holds one window, whatever the input's
    size. ``window=None`` takes them all at once, as a features encoder needs: its file holds rows for all of them.
    """
    for chunk in _windows(dialogues, window):
        for member in runs:
            member.model.encoder.prepare(chunk)
        yield from prediction_records(chunk, predict_probabilities([member.model for member in runs], chunk),
                                      runs[0].labels)



def _windows(dialogues: Iterable[Dialogue], utterances: int | None) -> Iterator[list[Dialogue]]:
    """Lists of whole batches of EVAL_BATCH_SIZE dialogues holding at least ``utterances`` utterances (the last
    one fewer); one list of everything for None."""
    if utterances is None:
        yield list(dialogues)
        return
    window, size = [], 0
    for dialogue in dialogues:
        window.append(dialogue)
        size += len(dialogue.utterances)
        if size >= utterances and len(window) % EVAL_BATCH_SIZE == 0:
            yield window
            window, size = [], 0
    if window:
        yield window
