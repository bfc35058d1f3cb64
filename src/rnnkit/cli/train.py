"""``rnnkit train``: train a speaker-aware ERC model (or the ablation trio) into a run directory.

Every model flag sets the ERCConfig field of the same name and every optimisation flag the
TrainerConfig field; a flag left out keeps the preset's value, else the dataclass default. ``--resume`` takes all
settings from the run's config.json (only --epochs, --patience, --device and --quiet may be given) and continues
from the last checkpoint. Under ``torchrun`` the processes share the training dialogues, ``--batch-size`` being the global
batch; rank 0 writes every file and reports errors, once.
``--finetune`` trains a transformer encoder with the model, at its own ``--encoder-lr`` (the model's
parameter groups), and the run's model.safetensors then holds the fine-tuned encoder; ``--token-budget``
bounds the encoder tokens of a batch so that memory stays bounded whatever the dialogue lengths.
A run starts from a preset (:data:`rnnkit.erc.recipe.PRESETS`: the measured settings of the encoder's kind, or
``--preset NAME``) and every flag given overrides the preset's value; the run prints the preset's name and values
and records its name in config.json.
This module maps the flags onto the two configurations and plans the runs; :func:`rnnkit.erc.train_run` trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from rnnkit.cli._errors import CLIError
from rnnkit.erc import ABLATIONS, FORMATS, DataError, ERCConfig, RunData, RunError, load_data, metric_name, train_run
from rnnkit.erc.recipe import PRESETS, preset_for, preset_settings
from rnnkit.erc.runs import CONFIG_FILE, read_json
from rnnkit.trainer import (
    CHECKPOINT_DIR,
    SCHEDULES,
    CheckpointError,
    DistInfo,
    DivergenceError,
    TrainerConfig,
    init_distributed,
    resolve_device,
)

__all__ = ["add_parser", "run"]

# The errors ``rnnkit`` reports as one line; under torchrun rank 0 alone prints them.
_ERRORS = (CLIError, DataError, RunError, CheckpointError, DivergenceError)

# Flags that --resume accepts; every other setting comes from the run's config.json.
_RESUMABLE = ("epochs", "patience", "device", "quiet")

_MODEL_FLAGS = ("encoder", "embedding_dim", "encoder_hidden", "context_hidden", "speaker_hidden", "num_layers",
                "dropout", "min_freq", "max_tokens", "cache_dir", "finetune", "speaker_in_text",
                "context_turns", "encoder_layers", "encoder_lr", "encoder_lr_decay")
_TRAINER_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "seed", "device", "warmup", "schedule",
                  "token_budget", "class_weighting", "label_smoothing", "contrastive", "ema", "patience")

EXAMPLES = """examples:
  rnnkit train --ablation --out runs/builtin            # built-in corpus: full / no_context / no_speaker
  rnnkit train --data data/meld --encoder minilm --out runs/meld               # the frozen preset
  rnnkit train --data data/meld --encoder minilm --finetune --out runs/meld-ft  # the finetune preset: MiniLM too
  rnnkit train --data data/meld --encoder minilm --ema 0 --patience 0 --epochs 10 --out runs/meld-10
  rnnkit train --data data/dd --format dailydialog --no-context --out runs/dd
  rnnkit train --resume --out runs/meld                 # continue an interrupted run
  torchrun --nproc_per_node 2 -m rnnkit.cli train --out runs/ddp
"""


def _default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _flag_text(name: str, value) -> str:
    """``--name value`` as it is typed (a tuple of layers as K,K,...; a switch alone)."""
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag
    return f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}"


def _preset_flags(settings: dict) -> str:
    return " ".join(_flag_text(name, value) for name, value in settings.items())


def _presets_help() -> str:
    """The presets' section of --help, generated from the builder functions: each one's purpose and values."""
    lines = ["presets (--preset NAME; default: by --encoder and --finetune; the flags given override them;",
             "frozen's --encoder-layers are 1 to L-1 of an L-layer transformer, shown for MiniLM's 6):"]
    for name, build in PRESETS.items():
        lines.append(f"  {name:<9} {build.__doc__.split(': ')[0]}")  # each docstring opens "what for: why"
        lines.append(textwrap.fill(_preset_flags(build()), 110, initial_indent=" " * 12, subsequent_indent=" " * 12,
                                   break_on_hyphens=False))
    return "\n".join(lines) + "\n"


def _set_by_preset(cls, name: str) -> str:
    """The help text of a flag's default: the dataclass default, and whether a preset replaces it."""
    default = _default(cls, name)
    if any(name in build() for build in PRESETS.values()):
        return f"(default: the preset's, else {default})"
    return f"(default: {default})"


def _layer_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        message = f"expected comma-separated layer numbers such as 2,3,4, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model into a run directory",
        description="Train a speaker-aware ERC model (or the ablation trio) into a run directory.\n"
        "Model flags set the ERCConfig field of the same name, training flags the TrainerConfig field; a flag\n"
        "left out keeps the preset's value (presets below), else the default. --resume takes all from config.json.",
        epilog=_presets_help() + "\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="DIR", help="dataset directory (default: the built-in synthetic corpus)")
    data.add_argument("--format", choices=FORMATS, help="dataset format (default: detected from --data)")
    data.add_argument("--limit", type=int, metavar="N", help="use only the first N dialogues of each split")

    model = parser.add_argument_group("model (ERCConfig fields)")
    model.add_argument("--encoder", metavar="NAME", help="words | chars | minilm | a local Hugging Face model "
                       f"directory | features:FILE (default: {_default(ERCConfig, 'encoder')})")
    for name, kind in (("embedding_dim", int), ("encoder_hidden", int), ("context_hidden", int),
                       ("speaker_hidden", int), ("num_layers", int), ("dropout", float), ("min_freq", int),
                       ("max_tokens", int)):
        model.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=kind.__name__.upper(),
                           help=_set_by_preset(ERCConfig, name))
    model.add_argument("--cache-dir", metavar="DIR", help="cache for transformer sentence vectors")
    model.add_argument("--finetune", action="store_true",
                       help="train the transformer encoder with the model (no vector cache)")
    model.add_argument("--speaker-in-text", action="store_true",
                       help="a transformer encoder reads 'Name: text' instead of the text alone")
    model.add_argument("--context-turns", type=int, metavar="N",
                       help="a transformer encoder reads each utterance with the N turns before it (default: 0)")
    model.add_argument("--encoder-layers", type=_layer_list, metavar="K,K,...",
                       help="a transformer encoder's utterance vector: the mean of these layers' hidden states, "
                       "pooled (0 the embeddings, -1 the last; default: the preset's, else the model's own sentence "
                       "vector)")
    model.add_argument("--encoder-lr", type=float, metavar="FLOAT",
                       help="learning rate of the fine-tuned encoder " + _set_by_preset(ERCConfig, "encoder_lr"))
    model.add_argument("--encoder-lr-decay", type=float, metavar="FLOAT",
                       help="layer-wise decay of the encoder's learning rate: each layer below the top trains at "
                       "this times the rate of the one above, the embeddings last "
                       f"(default: {_default(ERCConfig, 'encoder_lr_decay')}, one rate)")
    model.add_argument("--no-context", dest="use_context", action="store_false",
                       help="drop the dialogue-context BiLSTM")
    model.add_argument("--no-speaker", dest="use_speaker", action="store_false",
                       help="drop the speaker-history fusion")

    optim = parser.add_argument_group("training (TrainerConfig fields)")
    for name, kind in (("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float),
                       ("grad_clip", float), ("seed", int)):
        optim.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=kind.__name__.upper(),
                           help=_set_by_preset(TrainerConfig, name))
    optim.add_argument("--patience", type=int, metavar="N",
                       help="stop after N epochs without a higher dev score, --epochs being the cap; 0 trains all "
                       "--epochs " + _set_by_preset(TrainerConfig, "patience"))
    optim.add_argument("--warmup", type=float, metavar="FRACTION",
                       help="fraction of the steps with a linear learning-rate warm-up "
                       + _set_by_preset(TrainerConfig, "warmup"))
    optim.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate decay after the warm-up " + _set_by_preset(TrainerConfig, "schedule"))
    optim.add_argument("--token-budget", type=int, metavar="INT",
                       help="most tokens per batch, with at most --batch-size dialogues "
                       + _set_by_preset(TrainerConfig, "token_budget"))
    optim.add_argument("--class-weighting", type=float, metavar="POWER",
                       help="weigh each class's loss by (its frequency / the mean) ** -POWER: 0.5 inverse square "
                       "root, 1 inverse frequency, 0 plain cross-entropy " + _set_by_preset(TrainerConfig, "class_weighting"))
    optim.add_argument("--label-smoothing", type=float, metavar="FLOAT",
                       help="mix this much of the uniform distribution into each target label "
                       f"(default: {_default(TrainerConfig, 'label_smoothing')})")
    optim.add_argument("--contrastive", type=float, metavar="WEIGHT",
                       help="add WEIGHT times a supervised contrastive loss on the fused utterance vectors "
                       f"(default: {_default(TrainerConfig, 'contrastive')}, none)")
    optim.add_argument("--ema", type=float, metavar="DECAY",
                       help="evaluate and save an exponential moving average of the weights, updated after every "
                       "step with this decay, e.g. 0.99; 0 none " + _set_by_preset(TrainerConfig, "ema"))
    optim.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    optim.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--preset", choices=PRESETS,
                           help="start from these settings (listed below; default: the encoder's)")
    run_group.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    run_group.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    run_group.add_argument("--ablation", action="store_true",
                           help="train full, no_context and no_speaker variants into RUN_DIR/<variant>")
    parser.set_defaults(func=run)
    return parser


@dataclass
class _Plan:
    """One model to train: its directory and settings; ``saved``: its config.json already exists (resuming);
    ``preset``: the name of the preset its settings started from (None: a run older than presets)."""

    directory: Path
    model: ERCConfig
    trainer: TrainerConfig
    saved: bool
    preset: str | None


def run(args: argparse.Namespace) -> int:
    info = init_distributed()
    lost = (f"another process of the run stopped; {args.out} holds the last complete checkpoint: continue "
            "with --resume")
    if info.world_size > 1:  # torchrun ends the other processes with SIGTERM when one of them fails

        def stopped(signum, frame):
            raise CLIError(f"rank {info.rank}: stopped by torchrun: {lost}")

        signal.signal(signal.SIGTERM, stopped)
    try:
        return _train(args, info)
    except _ERRORS as err:
        if info.is_main:
            raise  # reported once, by rank 0; every rank exits with the same status
        return 1 if isinstance(err, DivergenceError) else 2
    except RuntimeError as err:
        if info.world_size == 1 or not _collective_failed(err):
            raise
        raise CLIError(f"rank {info.rank}: {lost} ({str(err).strip().splitlines()[0]})") from None
    finally:
        if info.world_size > 1:
            dist.destroy_process_group()  # a process that exits with its group still up aborts (SIGABRT)


def _collective_failed(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective (a gradient reduction, a broadcast) that lost one of its processes: gloo
    raises a plain RuntimeError naming its transport, NCCL a DistError."""
    return isinstance(err, dist.DistError) or "gloo" in str(err)


def _train(args: argparse.Namespace, info: DistInfo) -> int:
    given = vars(args)
    out = Path(args.out)
    variants = list(ABLATIONS) if given.get("ablation") else [None]
    failure = None
    try:
        data, plans, preset_line = _plan(out, variants, given, info)
    except _ERRORS as err:
        failure = err
    # Every rank has validated its input before rank 0 writes anything, and learns whether any rank failed.
    failure = _first_failure(failure, info)
    if failure is not None:
        raise failure
    if info.is_main:
        print(preset_line, flush=True)
    results = {}
    for plan in plans:
        results[plan.directory.name] = train_run(plan.directory, data, plan.model, plan.trainer, resume=plan.saved,
                                                 preset=plan.preset)
    if info.is_main:
        _report(results, data.format, ablation=variants != [None])
    return 0


def _plan(out: Path, variants, given, info: DistInfo) -> tuple[RunData, list[_Plan], str]:
    """Check the flags, the run directory, the data and the device, and plan the runs; nothing is written.
    Also returns the line that says which preset the runs use."""
    for directory in [out] + [out / v for v in variants if v is not None]:
        if directory.exists() and not directory.is_dir():
            raise CLIError(f"{directory}: exists and is not a directory; --out must name a run directory")
    _check_writable(out)
    if given.get("ablation") and ({"use_context", "use_speaker"} & given.keys()):
        raise CLIError("--ablation trains the no-context and no-speaker variants itself; "
                       "drop --no-context/--no-speaker")
    if given.get("resume"):
        data, plans = _resume_plans(out, variants, given)
        preset = plans[0].preset
        line = f"resuming {out} (preset {preset})" if preset else f"resuming {out}"
    else:
        data, plans = _fresh_plans(out, variants, given)
        preset, settings = plans[0].preset, preset_settings(plans[0].preset, plans[0].model.encoder)
        overridden = [f"--{name.replace('_', '-')}" for name, value in settings.items()
                      if given.get(name, value) != value]
        line = (f"preset {preset}: {_preset_flags(settings)}"
                + (f" (given instead: {' '.join(overridden)})" if overridden else ""))
    try:
        resolve_device(plans[0].trainer.device, info.local_rank)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return data, plans, line


def _first_failure(failure: Exception | None, info: DistInfo) -> Exception | None:
    """The first rank's error of the checks (``failure`` of this rank alone in a single process), so that all
    ranks stop together, even when only one of them failed (its device, say), rather than wait for each other."""
    if info.world_size == 1:
        return failure
    failures: list[Exception | None] = [None] * info.world_size
    dist.all_gather_object(failures, failure)
    return next((f for f in failures if f is not None), None)


def _check_writable(out: Path) -> None:
    """Refuse an --out that cannot be created or written (a path under a file, a read-only directory) before
    anything is read or computed."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{out}: cannot create the run directory: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{out}: cannot write the run directory: {existing} is not writable")


def _fresh_plans(out: Path, variants, given) -> tuple[RunData, list[_Plan]]:
    for variant in variants:
        directory = out if variant is None else out / variant
        if (directory / CONFIG_FILE).exists() or (directory / CHECKPOINT_DIR).exists():
            raise CLIError(f"{directory}: already holds a run; pass --resume to continue it or choose another --out")
    data = _read_data(given.get("data"), given.get("format"), given.get("limit"))
    encoder = given.get("encoder", _default(ERCConfig, "encoder"))
    preset = given.get("preset") or preset_for(encoder, given.get("finetune", False))
    try:
        settings = preset_settings(preset, encoder) | given
    except ValueError as err:
        raise CLIError(str(err)) from None
    trainer = _config(TrainerConfig, {k: settings[k] for k in _TRAINER_FLAGS + ("quiet",) if k in settings})
    fields = {k: settings[k] for k in _MODEL_FLAGS + ("use_context", "use_speaker") if k in settings}
    plans = []
    for variant in variants:
        model = _config(ERCConfig, {"num_labels": len(data.labels), **fields, **ABLATIONS.get(variant, {})})
        plans.append(_Plan(out if variant is None else out / variant, model, trainer, False, preset))
    return data, plans


def _resume_plans(out: Path, variants, given) -> tuple[RunData, list[_Plan]]:
    fixed = sorted(set(given) - set(_RESUMABLE) - {"command", "func", "out", "resume", "ablation"})
    if fixed:
        flags = ", ".join("--" + name.replace("_", "-").replace("use-", "no-") for name in fixed)
        raise CLIError(f"{flags}: cannot change when resuming; {out} keeps the settings in its {CONFIG_FILE}")
    first = out if variants == [None] else out / variants[0]
    if not (first / CONFIG_FILE).is_file():
        raise CLIError(f"{first}: no {CONFIG_FILE} to resume from" +
                       ("" if variants == [None] else " (was it trained with --ablation?)"))
    base = _read_config(first / CONFIG_FILE)
    data = _read_data(base["data"], base["format"], base["limit"])
    if data.labels != base["labels"]:
        raise CLIError(f"{first / CONFIG_FILE}: the data now has labels {data.labels}, the run has {base['labels']}")
    overrides = {"quiet": False} | {k: given[k] for k in _RESUMABLE if k in given}
    plans = []
    for variant in variants:
        directory = out if variant is None else out / variant
        saved = _read_config(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else None
        source = saved or base
        model = _config(ERCConfig, {**source["model"], **ABLATIONS.get(variant, {})})
        trainer = _config(TrainerConfig, {**source["trainer"], **overrides})
        plans.append(_Plan(directory, model, trainer, saved is not None, source.get("preset")))
    return data, plans


def _read_config(path: Path) -> dict:
    saved = read_json(path)
    missing = [key for key in ("data", "format", "limit", "labels", "model", "trainer") if key not in saved]
    if missing:
        raise CLIError(f"{path}: not a run configuration (no {', '.join(map(repr, missing))})")
    return saved


def _config(cls, fields: dict):
    try:
        return cls(**fields)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _read_data(source: str | None, format: str | None, limit: int | None) -> RunData:
    if limit is not None and limit < 1:
        raise CLIError(f"--limit must be an integer >= 1, got {limit}")
    return load_data(source, format, limit)


def _report(results: dict[str, dict], format: str, *, ablation: bool) -> None:
    monitor = metric_name(format)
    if not ablation:
        (name, metrics), = results.items()
        print(f"best epoch {metrics['best_epoch']}: dev {monitor} {metrics['dev'][monitor]:.2f}, "
              f"test {monitor} {metrics['test'][monitor]:.2f}, test accuracy {metrics['test']['accuracy']:.2f}")
        return
    width = max(map(len, results)) + 2
    print(f"{'variant':<{width}}{'dev ' + monitor:>22}{'test ' + monitor:>22}")
    for name, metrics in results.items():
        print(f"{name:<{width}}{metrics['dev'][monitor]:>22.2f}{metrics['test'][monitor]:>22.2f}")
