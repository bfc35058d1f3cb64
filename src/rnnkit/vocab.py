"""Token vocabularies and the tokenisers that feed them.

A :class:`Vocab` maps tokens to contiguous integer ids for an embedding table. Two ids are
reserved: ``<pad>`` is 0, so that :func:`rnnkit.batching.pad_sequences` with its default
``padding_value=0`` pads with the padding token, and ``<unk>`` is 1, the id of every token that
was not seen (often enough) when the vocabulary was built.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from rnnkit.atomic import atomic_write_bytes

__all__ = [
    "PAD",
    "UNK",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "Vocab",
    "whitespace_tokenize",
    "char_tokenize",
    "word_tokenize",
]

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD = 0  # id of PAD_TOKEN
UNK = 1  # id of UNK_TOKEN
_SPECIALS = (PAD_TOKEN, UNK_TOKEN)


class Vocab:
    """A token <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1.

    ``Vocab(tokens)`` takes the ordinary tokens in id order; they get ids 2, 3, ...
    Most code builds one from training data with :meth:`Vocab.build` and stores it next to the
    model with :meth:`save` / :meth:`Vocab.load`.

    Example::

        >>> vocab = Vocab.build([["a", "b", "a"], ["c", "a"]])
        >>> vocab.encode(["a", "c", "zebra"])
        [2, 4, 1]
        >>> vocab.decode([2, 4, 1, 0, 0])
        ['a', 'c', '<unk>']
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        itos = list(_SPECIALS)
        for token in tokens:
            if not isinstance(token, str):
                raise ValueError(f"vocabulary tokens must be str, got {type(token).__name__} {token!r}")
            itos.append(token)
        stoi = {token: index for index, token in enumerate(itos)}
        if len(stoi) != len(itos):
            counts = Counter(itos)
            duplicate = next(token for token in itos if counts[token] > 1)
            raise ValueError(f"vocabulary tokens must be unique, got {duplicate!r} more than once")
        self._itos = itos
        self._stoi = stoi

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Count tokens over ``token_lists`` (one list per text) and keep the frequent ones.

        Tokens seen fewer than ``min_freq`` times are dropped; ``max_size`` caps the number of
        ordinary tokens (``<pad>`` and ``<unk>`` come on top). Ids follow frequency, most frequent
        first, ties broken by the token itself, so the same data always gives the same ids.
        The special tokens are never counted, even if the data contains them.
        """
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0):
            raise ValueError(f"max_size must be None or an int >= 0, got {max_size!r}")
        if isinstance(token_lists, str):
            raise ValueError("token_lists must be an iterable of token lists, got a str")
        counts: Counter[str] = Counter()
        for position, tokens in enumerate(token_lists):
            # A bare string would be counted character by character: almost always a mistake.
            if isinstance(tokens, str):
                raise ValueError(f"token_lists[{position}] must be a list of tokens, got a str; tokenise it first")
            counts.update(tokens)
        for special in _SPECIALS:
            counts.pop(special, None)
        kept = sorted((token for token, count in counts.items() if count >= min_freq), key=lambda t: (-counts[t], t))
        return cls(kept[:max_size])

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order, ``<pad>`` and ``<unk>`` first."""
        return list(self._itos)

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or ``UNK`` (1) if it is not in the vocabulary."""
        return self._stoi.get(token, UNK)

    def id_to_token(self, index: int) -> str:
        """The token with id ``index``; ``ValueError`` if there is none."""
        index = int(index)
        if not 0 <= index < len(self._itos):
            raise ValueError(f"id {index} is out of range for a vocabulary of size {len(self._itos)}")
        return self._itos[index]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens map to ``UNK`` (1)."""
        if isinstance(tokens, str):
            raise ValueError("encode expects a list of tokens, got a str; tokenise it first")
        return [self._stoi.get(token, UNK) for token in tokens]

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> list[str]:
        """Tokens for ``ids`` (ints or a 1-D tensor); ``<pad>`` ids are left out unless ``skip_pad=False``."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return [self.id_to_token(i) for i in ids if not (skip_pad and int(i) == PAD)]

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (:func:`rnnkit.atomic.atomic_write_bytes`): a crash never leaves
        a half-written file."""
        atomic_write_bytes(path, json.dumps({"tokens": self._itos}, ensure_ascii=False, indent=0).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read a vocabulary written by :meth:`save`; errors name the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"vocabulary file {path} is not valid JSON: {err}") from err
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"vocabulary file {path} must hold an object with a 'tokens' list of strings")
        if tuple(tokens[:2]) != _SPECIALS:
            raise ValueError(f"vocabulary file {path} must start with {list(_SPECIALS)}, got {tokens[:2]}")
        try:
            return cls(tokens[2:])
        except ValueError as err:
            raise ValueError(f"vocabulary file {path}: {err}") from err


def whitespace_tokenize(text: str) -> list[str]:
    """Split on runs of whitespace, keeping case and punctuation: ``"Hi, you!" -> ["Hi,", "you!"]``."""
    return text.split()


def char_tokenize(text: str) -> list[str]:
    """One token per character, spaces included (they mark word boundaries for a character model)."""
    return list(text)


# Curly and modifier apostrophes, as in MELD's "let’s", are the same apostrophe as "'".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_WORD_RE = re.compile(
    r"\d+(?:[.,]\d+)+"  # numbers with a decimal point or thousands separator: 3.5, 1,000
    r"|\w+(?:'\w+)*"  # words and numbers, with inner apostrophes: don't, must've, 90s
    r"|([^\w\s])\1*"  # punctuation; a run of one mark ("...", "!!!") stays one token
)


def word_tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation marks as separate tokens.

    Apostrophes inside a word keep it whole (``"Let’s"`` -> ``"let's"``); a leading or trailing
    apostrophe is punctuation. ``"Oh... you MUST’ve seen it!!"`` ->
    ``["oh", "...", "you", "must've", "seen", "it", "!!"]``.
    """
    text = text.lower().translate(_APOSTROPHES)
    return [match.group(0) for match in _WORD_RE.finditer(text)]
