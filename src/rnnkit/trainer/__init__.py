"""A model-agnostic trainer: AdamW, a warm-up/decay schedule, gradient clipping, best-epoch selection, early
stopping, token-budget batches and resumable checkpoints.

The trainer knows nothing about the model or the task, which plugs in three functions:

- ``collate(items) -> batch``: turns a list of training items into one batch (moved to the device here);
- ``loss_fn(model, batch) -> loss``: a scalar tensor to minimise;
- ``evaluate(model) -> {name: score}``: dev scores after each epoch; ``monitor`` names the one to maximise;

and optionally ``param_groups`` (optimizer groups with their own learning rates, e.g. a pretrained encoder
fine-tuned at a smaller rate than a fresh head) and ``item_size(item) -> int`` (the tokens an item holds,
which ``TrainerConfig.token_budget`` counts).

Learning rate: every group's rate is multiplied by :func:`lr_factor` at each optimizer step, a linear
warm-up over the first ``warmup`` fraction of all steps and then a constant, linear or cosine decay
(Loshchilov & Hutter 2017, "SGDR", eq. 5, without restarts) towards 0 at the last step.

Early stopping: with ``TrainerConfig.patience`` = P > 0, training ends once P epochs in a row have not raised the
best dev ``monitor`` score (``epochs`` is then a cap); the best epoch's weights are kept as always. The learning-rate
schedule still spans the cap, so a decaying schedule stopped early ends before its decay does.

Determinism: the batch order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)`` alone, and every RNG state (torch, numpy, random) is saved with each checkpoint, so a run
resumed from epoch ``k`` replays epochs ``k + 1 ...`` exactly as an uninterrupted run would. The patience
counter is not saved: it is the number of epochs since the checkpoint's best epoch, so a resumed run stops where the
uninterrupted one does, and a run resumed after it stopped early ends at once (or trains on, given more patience).

Checkpoints (when ``out_dir`` is given) are written after every epoch, each file atomically (a temporary
file in the same directory, then ``os.replace``): ``out_dir/model.safetensors`` holds the best epoch's weights,
``out_dir/checkpoint/`` what resuming needs (see :mod:`rnnkit.trainer.checkpoint`).

Weight averaging: with ``TrainerConfig.ema`` > 0 the trainer keeps an exponential moving average of the
weights (torch's ``AveragedModel``, updated after every optimizer step; Polyak & Juditsky 1992), and it is
the average that is evaluated, chosen as the best epoch and saved as ``model.safetensors``. The optimizer
goes on training the raw weights, which the epoch files keep for resuming.

Multi-process training: under ``torchrun`` call :func:`init_distributed` first; the trainer then wraps the model
in ``DistributedDataParallel``, cuts every epoch's permutation into global batches of ``batch_size`` items and
gives each rank every world-th item of each, its loss weighted by its share (``item_weight``) so that the averaged
gradient is a single process's; it evaluates on rank 0 and broadcasts the scores, and only rank 0 writes
files or draws progress bars.

Modules: :mod:`~rnnkit.trainer.loop` (:class:`Trainer`), :mod:`~rnnkit.trainer.config` (:class:`TrainerConfig`),
:mod:`~rnnkit.trainer.schedule`, :mod:`~rnnkit.trainer.checkpoint`, :mod:`~rnnkit.trainer.distributed` (ranks,
seeding, RNG states) and :mod:`~rnnkit.trainer.files` (atomic writes, safetensors weights).
"""

from rnnkit.trainer.checkpoint import CHECKPOINT_DIR, STATE_FILE, WEIGHTS_FILE, CheckpointError
from rnnkit.trainer.config import TrainerConfig
from rnnkit.trainer.distributed import DistInfo, dist_info, init_distributed, resolve_device, seed_everything
from rnnkit.trainer.files import atomic_write_bytes, load_weights, save_weights
from rnnkit.trainer.loop import DivergenceError, Trainer, TrainResult
from rnnkit.trainer.schedule import SCHEDULES, lr_factor

__all__ = [
    "Trainer", "TrainerConfig", "TrainResult", "CheckpointError", "DivergenceError", "lr_factor", "SCHEDULES",
    "WEIGHTS_FILE", "CHECKPOINT_DIR", "STATE_FILE", "DistInfo", "dist_info", "init_distributed", "resolve_device",
    "seed_everything",
    "atomic_write_bytes", "save_weights", "load_weights",
]
