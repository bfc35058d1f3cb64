"""The speaker-aware ERC model: utterance vectors, dialogue context and speaker history, then a classifier.

For utterance vectors :math:`x_{b,u}` (from an encoder of :mod:`rnnkit.erc.encoders`):

.. math::
    c_{b,u} = \\mathrm{BiLSTM}_{ctx}(x_{b,1}, \\dots, x_{b,n_b})_u \\qquad
    f_{b,u} = \\mathrm{SpeakerHistoryFusion}(x)_{b,u}

    \\mathrm{logits}_{b,u} = W\\,\\mathrm{dropout}([f_{b,u}; c_{b,u}]) + w

The context BiLSTM reads the whole conversation; the fusion adds each speaker's own history
(bcLSTM, Poria et al. 2017; DialogueRNN, Majumder et al. 2019, keep the same two views).
Ablations: ``use_context=False`` drops :math:`c`; ``use_speaker=False`` replaces :math:`f` by
:math:`x` itself (the fusion is residual, so this removes only the speaker-history term).
The classifier sees the concatenation of whatever is present.

Shapes: B dialogues, U utterances (padded), D utterance width, H hidden, L labels.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from rnnkit.erc.data import DataError, Dialogue
from rnnkit.erc.encoders import UtteranceEncoder
from rnnkit.erc.fusion import SpeakerHistoryFusion
from rnnkit.layers import LSTM
from rnnkit.trainer.config import check_number

__all__ = ["ERCConfig", "ERCModel", "DialogueBatch", "collate_dialogues", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label of padding and unlabeled utterances; torch's cross_entropy default
_NAMED_ENCODERS = ("words", "chars", "minilm")


@dataclass
class ERCConfig:
    """Hyperparameters of :class:`ERCModel` and its utterance encoder.

    num_labels: number of emotion classes L.
    encoder: "words", "chars", "minilm", a local Hugging Face model directory, or "features:PATTERN"
        (see :mod:`rnnkit.erc.encoders`).
    embedding_dim, encoder_hidden: token embedding size and per-direction BiLSTM size of the
        "words"/"chars" encoders (their utterance vectors have width 2 * encoder_hidden).
    context_hidden: per-direction size of the dialogue-context BiLSTM.
    speaker_hidden: per-direction size of the speaker-history BiLSTM.
    num_layers: layers of the context and speaker LSTMs.
    dropout: on the utterance vectors and before the classifier (and between stacked layers).
    use_context, use_speaker: the two ablation switches.
    min_freq, max_tokens: vocabulary cut-off and per-utterance token limit (None: no limit; a
        transformer keeps to its own limit as well).
    cache_dir: where transformer features are cached (None: $RNNKIT_CACHE or ~/.cache/rnnkit).
    finetune: train the transformer encoder ("minilm" or a model directory) with the rest of the model
        instead of reading frozen, cached vectors.
    speaker_in_text: a transformer encoder reads "Name: text" instead of the text alone.
    context_turns: a transformer encoder reads each utterance together with up to this many turns before it
        (as the second segment of a text pair; the vector still pools the utterance's own tokens only).
    encoder_layers: None (the model's own sentence vector, from its last layer), or the transformer layers
        whose hidden states are averaged, then mean-pooled into the utterance vector (0 the embeddings, 1 .. L
        the layers, negative from the end; see :mod:`rnnkit.erc.pretrained`).
    encoder_lr: learning rate of the fine-tuned encoder (the rest trains at ``TrainerConfig.lr``); BERT-like
        encoders fine-tune at 1e-5..5e-5 (Devlin et al. 2019, sec. A.3), far below a fresh RNN's rate.
    encoder_lr_decay: layer-wise decay of that rate, in (0, 1]: the top transformer layer trains at
        ``encoder_lr``, each layer below at ``encoder_lr_decay`` times the rate of the one above, the
        embeddings below the first layer likewise (Clark et al. 2020, ELECTRA, use 0.8). Lower layers hold
        the more general features, which a small dataset should move least. 1.0: one rate for all.
    """

    num_labels: int
    encoder: str = "words"
    embedding_dim: int = 100
    encoder_hidden: int = 100
    context_hidden: int = 128
    speaker_hidden: int = 128
    num_layers: int = 1
    dropout: float = 0.3
    use_context: bool = True
    use_speaker: bool = True
    min_freq: int = 1
    max_tokens: int | None = None
    cache_dir: str | None = None
    finetune: bool = False
    speaker_in_text: bool = False
    context_turns: int = 0
    encoder_layers: tuple[int, ...] | None = None
    encoder_lr: float = 2e-5
    encoder_lr_decay: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_labels", "embedding_dim", "encoder_hidden", "context_hidden", "speaker_hidden",
                     "num_layers", "min_freq"):
            _check_int(name, getattr(self, name))
        _check_int("context_turns", self.context_turns, "an int >= 0", minimum=0)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, "None or an int >= 1")
        if self.encoder_layers is not None:
            layers = self.encoder_layers
            if (not isinstance(layers, (list, tuple)) or not layers
                    or any(isinstance(k, bool) or not isinstance(k, int) for k in layers)):
                raise ValueError(f"ERCConfig.encoder_layers must be None or a non-empty list of ints, got {layers!r}")
            self.encoder_layers = tuple(layers)
        check_number("ERCConfig", "dropout", self.dropout, lambda p: 0 <= p < 1, "a number in [0, 1)")
        for name in ("use_context", "use_speaker", "finetune", "speaker_in_text"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ERCConfig.{name} must be True or False, got {getattr(self, name)!r}")
        check_number("ERCConfig", "encoder_lr", self.encoder_lr, lambda lr: math.isfinite(lr) and lr > 0,
                     "a finite number > 0")
        check_number("ERCConfig", "encoder_lr_decay", self.encoder_lr_decay, lambda d: 0 < d <= 1, "a number in (0, 1]")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise ValueError(f"ERCConfig.cache_dir must be None or a path string, got {self.cache_dir!r}")
        self._check_encoder()
        for name in ("finetune", "speaker_in_text", "context_turns", "encoder_layers"):
            if getattr(self, name) and (self.encoder in ("words", "chars") or self.encoder.startswith("features:")):
                raise ValueError(f"ERCConfig.{name} needs a transformer encoder ('minilm' or a local model "
                                 f"directory), got encoder {self.encoder!r}")

    def _check_encoder(self) -> None:
        encoder = self.encoder
        if not isinstance(encoder, str):
            raise ValueError(f"ERCConfig.encoder must be a string, got {type(encoder).__name__}")
        if encoder in _NAMED_ENCODERS:
            return
        if encoder.startswith("features:"):
            if not encoder[len("features:"):]:
                raise ValueError("ERCConfig.encoder 'features:' needs a file after the colon, e.g. 'features:x/{split}.npy'")
            return
        if not os.path.isdir(os.path.expanduser(encoder)):
            raise ValueError(f"ERCConfig.encoder must be 'words', 'chars', 'minilm', 'features:FILE' or a local "
                             f"model directory, got {encoder!r} (no such directory)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ERCConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ERCConfig field(s) {', '.join(map(repr, unknown))}; "
                             f"expected some of {', '.join(sorted(known))}")
        return cls(**data)


def _check_int(name: str, value, expected: str = "an int >= 1", minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"ERCConfig.{name} must be {expected}, got {value!r}")


@dataclass
class DialogueBatch:
    """A padded batch of dialogues.

    inputs: the encoder's tensors, each (B, U, ...) (see ``UtteranceEncoder.batch_inputs``).
    speakers: (B, U) long, speaker names numbered per dialogue in order of first turn; -1 at padding.
    lengths: (B,) long, utterances per dialogue.
    labels: (B, U) long class indices; ``IGNORE_INDEX`` (-100) at padding and unlabeled utterances.
    """

    inputs: dict[str, torch.Tensor]
    speakers: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> DialogueBatch:
        return DialogueBatch({k: v.to(device) for k, v in self.inputs.items()}, self.speakers.to(device),
                             self.lengths.to(device), self.labels.to(device))


def collate_dialogues(dialogues: list[Dialogue], encoder: UtteranceEncoder,
                      label_index: dict[str, int] | None) -> DialogueBatch:
    """Dialogues -> :class:`DialogueBatch`.

    Before: ``[Dialogue("d1", (Utterance("Ann", "Hi!", "joy"), Utterance("Bob", "Hm.", None))),
    Dialogue("d2", (Utterance("Cy", "No.", "anger"),))]`` with ``label_index={"anger": 0, "joy": 1}``.
    After: speakers ``[[0, 1], [0, -1]]``, lengths ``[2, 1]``, labels ``[[1, -100], [0, -100]]`` and
    the encoder's inputs for the (2, 2) grid. ``label_index=None`` (prediction) ignores all labels.
    """
    if not dialogues:
        raise ValueError("collate_dialogues needs at least one dialogue")
    B, U = len(dialogues), max(len(d.utterances) for d in dialogues)
    speakers = torch.full((B, U), -1, dtype=torch.long)
    labels = torch.full((B, U), IGNORE_INDEX, dtype=torch.long)
    for b, dialogue in enumerate(dialogues):
        if not dialogue.utterances:
            raise DataError(f"dialogue {dialogue.id!r} has no utterances")
        names: dict[str, int] = {}
        for u, utterance in enumerate(dialogue.utterances):
            speakers[b, u] = names.setdefault(utterance.speaker, len(names))
            if label_index is None or utterance.label is None:
                continue
            if utterance.label not in label_index:
                raise DataError(f"dialogue {dialogue.id!r}, utterance {u}: unknown label {utterance.label!r}; "
                                f"expected one of {', '.join(map(repr, label_index))}")
            labels[b, u] = label_index[utterance.label]
    lengths = torch.tensor([len(d.utterances) for d in dialogues], dtype=torch.long)
    return DialogueBatch(encoder.batch_inputs(dialogues), speakers, lengths, labels)


class ERCModel(nn.Module):
    """Utterance encoder -> [speaker fusion ; dialogue context] -> dropout -> linear, per utterance.

    ``forward(batch)`` returns logits (B, U, num_labels); rows at padding positions are
    meaningless and carry the label ``IGNORE_INDEX``. ``forward(batch, features=True)`` returns
    ``(logits, fused)``, ``fused`` (B, U, F) the vectors the classifier reads (before its dropout).
    """

    def __init__(self, config: ERCConfig, encoder: UtteranceEncoder) -> None:
        super().__init__()
        self.config, self.encoder = config, encoder
        D, stack_dropout = encoder.output_size, config.dropout if config.num_layers > 1 else 0.0
        self.dropout = nn.Dropout(config.dropout)
        self.context = (LSTM(D, config.context_hidden, config.num_layers, batch_first=True, bidirectional=True,
                             dropout=stack_dropout) if config.use_context else None)
        self.fusion = (SpeakerHistoryFusion(D, config.speaker_hidden, config.num_layers, dropout=stack_dropout)
                       if config.use_speaker else None)
        width = D + (2 * config.context_hidden if config.use_context else 0)
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(self, batch: DialogueBatch, features: bool = False):
        return self.classify(self.encoder(batch.inputs), batch, features)

    def classify(self, utterances: torch.Tensor, batch: DialogueBatch, features: bool = False):
        """Logits (B, U, L) from the encoder's utterance vectors (B, U, D): everything after the encoder
        (with ``features``, also the fused vectors, as in :meth:`forward`)."""
        x = self.dropout(utterances)  # (B, U, D)
        parts = [x if self.fusion is None else self.fusion(x, batch.speakers, batch.lengths)]  # (B, U, D)
        if self.context is not None:
            context, _ = self.context(x, lengths=batch.lengths)  # (B, U, 2H)
            parts.append(context)
        fused = torch.cat(parts, dim=-1)  # (B, U, F)
        logits = self.classifier(self.dropout(fused))  # (B, U, L)
        return (logits, fused) if features else logits

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups: ``"head"`` at ``lr`` and, when fine-tuning, the encoder at ``encoder_lr``:
        one ``"encoder"`` group, or with ``encoder_lr_decay`` < 1 one ``"encoder.depth{k}"`` group per depth of
        the transformer (0 the embeddings, L the top layer) at ``encoder_lr * encoder_lr_decay ** (L - k)``.

        The RNNs and the classifier start from random weights and need a large rate; a pretrained
        encoder at that rate would forget what it knows within a few steps.
        """
        if not self.config.finetune:
            return [{"name": "head", "params": list(self.parameters()), "lr": lr}]
        encoder = list(self.encoder.parameters())
        ids = {id(p) for p in encoder}
        head = [p for p in self.parameters() if id(p) not in ids]
        groups = [{"name": "head", "params": head, "lr": lr}]
        top, decay = self.config.encoder_lr, self.config.encoder_lr_decay
        if decay == 1:
            return groups + [{"name": "encoder", "params": encoder, "lr": top}]
        depths = self.encoder.layer_depths()
        L = max(depths)
        return groups + [{"name": f"encoder.depth{k}", "params": params, "lr": top * decay ** (L - k)}
                         for k, params in sorted(depths.items())]
