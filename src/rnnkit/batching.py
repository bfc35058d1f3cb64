"""Batching variable-length sequences: padding, masks, a length-bucketing sampler, last outputs.

rnnkit layers take a padded tensor plus ``lengths`` instead of a PackedSequence; these helpers
produce both from ragged data and pick results back out per sequence.
Shapes: B sequences, T padded time steps, ``*`` any trailing feature dims.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler

from rnnkit._lengths import check_lengths, gather_last, step_mask

__all__ = [
    "Batch",
    "check_lengths",
    "pad_sequences",
    "lengths_to_mask",
    "mask_to_lengths",
    "collate",
    "BucketBatchSampler",
    "budget_batches",
    "last_valid",
]


def pad_sequences(
    seqs: Sequence[Sequence[int] | torch.Tensor], batch_first: bool = True, padding_value: float = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged sequences into one tensor and return it with their lengths.

    ``seqs`` holds lists of ints (made int64) or tensors shaped (L_b, *) that share ``*`` and
    dtype. Returns ``padded`` (B, T, *) — or (T, B, *) with ``batch_first=False`` — where
    T = max L_b, and ``lengths`` (B,) int64 on the CPU, ready for an rnnkit layer.
    """
    if isinstance(seqs, (str, torch.Tensor)) or not isinstance(seqs, Sequence):
        raise ValueError(f"seqs must be a list of sequences, got {type(seqs).__name__}")
    if not seqs:
        raise ValueError("seqs must hold at least one sequence")
    tensors = []
    for b, seq in enumerate(seqs):
        tensor = seq if isinstance(seq, torch.Tensor) else torch.as_tensor(list(seq), dtype=torch.long)
        if tensor.dim() == 0:
            raise ValueError(f"seqs[{b}] must be a sequence, got a scalar")
        tensors.append(tensor)
    first = tensors[0]
    for b, tensor in enumerate(tensors):
        if tensor.shape[1:] != first.shape[1:] or tensor.dtype != first.dtype:
            raise ValueError(
                f"seqs[{b}] has trailing shape {tuple(tensor.shape[1:])} and dtype {tensor.dtype}, "
                f"but seqs[0] has {tuple(first.shape[1:])} and {first.dtype}"
            )
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)  # (B,)
    padded = pad_sequence(tensors, batch_first=batch_first, padding_value=padding_value)  # (B, T, *)
    return padded, lengths


def lengths_to_mask(lengths: Sequence[int] | torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool mask, True at the real steps ``t < lengths[b]``; T is ``max_len`` or max(lengths)."""
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0):
        raise ValueError(f"max_len must be None or an int >= 0, got {max_len!r}")
    lengths = _check_lengths_1d(lengths, sys.maxsize if max_len is None else max_len)  # (B,)
    if max_len is None:
        max_len = int(lengths.max()) if len(lengths) else 0
    return step_mask(lengths, max_len).T.contiguous()  # (B, T)


def mask_to_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 lengths of a (B, T) prefix mask: each row is True (or 1) for its real steps, then False.

    Raises ``ValueError`` for a row that is not a prefix (a gap or a padded start), which a plain
    ``mask.sum(1)`` would silently miscount.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a 2-D (B, T) tensor, got {shape}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask must be bool or hold only 0 and 1, got dtype {mask.dtype}")
        mask = mask.bool()
    lengths = mask.sum(dim=1)  # (B,)
    wrong = (mask != step_mask(lengths, mask.shape[1]).T).any(dim=1)  # (B,)
    if bool(wrong.any()):
        row = int(wrong.nonzero()[0])
        raise ValueError(f"mask row {row} is not a prefix mask: its True steps must come first, then only False")
    return lengths


def _check_lengths_1d(lengths: Sequence[int] | torch.Tensor, max_len: int) -> torch.Tensor:
    """``check_lengths`` for lengths that stand alone, with no padded batch to size them by."""
    if not isinstance(lengths, torch.Tensor):
        lengths = check_lengths(lengths, len(lengths), max_len, torch.device("cpu"))
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    return check_lengths(lengths, len(lengths), max_len, lengths.device)


class Batch(NamedTuple):
    """What :func:`collate` returns: ``ids`` (B, T), ``lengths`` (B,) int64, ``labels`` (B,) or None."""

    ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor | None


def collate(samples: Sequence[tuple | Mapping], *, padding_value: int = 0) -> Batch:
    """``collate_fn`` for a ``DataLoader`` over token-id sequences with one label each.

    A sample is ``(token_ids, label)`` or ``{"token_ids": ..., "label": ...}``; dict samples may
    leave out ``"label"`` (unlabelled data), then ``labels`` is None. Before / after::

        >>> collate([([5, 8, 2], 1), ([7], 0)])
        Batch(ids=tensor([[5, 8, 2],
                [7, 0, 0]]), lengths=tensor([3, 1]), labels=tensor([1, 0]))

    Use ``functools.partial(collate, padding_value=...)`` for another padding id.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    seqs, labels = [], []
    for i, sample in enumerate(samples):
        if isinstance(sample, Mapping):
            if "token_ids" not in sample:
                raise ValueError(f"sample {i} is a dict without a 'token_ids' key; keys: {sorted(sample)}")
            seqs.append(sample["token_ids"])
            labels.append(sample.get("label"))
        elif isinstance(sample, (tuple, list)) and len(sample) == 2:
            seqs.append(sample[0])
            labels.append(sample[1])
        else:
            raise ValueError(f"sample {i} must be a (token_ids, label) pair or a dict, got {type(sample).__name__}")
    unlabelled = [label is None for label in labels]
    if any(unlabelled) and not all(unlabelled):
        odd = unlabelled.index(not unlabelled[0])
        raise ValueError(f"samples must all have a label or all lack one, but sample 0 and sample {odd} differ")
    ids, lengths = pad_sequences(seqs, batch_first=True, padding_value=padding_value)  # (B, T)
    if all(unlabelled):
        return Batch(ids, lengths, None)
    if isinstance(labels[0], torch.Tensor):
        return Batch(ids, lengths, torch.stack(labels))
    return Batch(ids, lengths, torch.as_tensor(labels))  # (B,)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices whose sequences have similar lengths, to minimise padding.

    Each epoch the indices are shuffled, cut into buckets of ``batch_size *
    bucket_size_multiplier``, sorted by length within each bucket and cut into batches; then the
    batch order is shuffled. Big buckets pack tightly, random buckets keep batches varied from
    epoch to epoch. With ``shuffle=False`` the dataset order is bucketed and sorted the same way
    without any randomness. Every index appears exactly once per epoch (``drop_last`` drops
    only the one short batch, if any). The order depends on ``seed`` and on the epoch given to
    :meth:`set_epoch`, as with ``DistributedSampler``; pass it to a ``DataLoader`` as
    ``batch_sampler=``.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_size_multiplier: int = 50,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("bucket_size_multiplier", bucket_size_multiplier)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.lengths = _check_lengths_1d(lengths, sys.maxsize).cpu()  # (N,)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.bucket_size_multiplier = bucket_size_multiplier
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order for ``epoch``; call it before each epoch to get a new shuffle."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"epoch must be an int, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if n == 0:
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)  # (N,)
        batches: list[torch.Tensor] = []
        for bucket in order.split(self.batch_size * self.bucket_size_multiplier):
            # A stable sort keeps the shuffled order among equal lengths, so ties still vary.
            by_length = self.lengths[bucket].sort(stable=True).indices
            batches.extend(bucket[by_length].split(self.batch_size))
        # Buckets are multiples of batch_size, so only the very last batch can be short.
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for batch in batches:
            yield batch.tolist()


def last_valid(output: torch.Tensor, lengths: Sequence[int] | torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """(B, *) output of each sequence at its last real step, ``lengths[b] - 1``.

    ``output`` is (B, T, *), or (T, B, *) with ``batch_first=False``, e.g. the output of an
    rnnkit layer. For a unidirectional layer this equals ``h_n`` of the last layer; for a
    bidirectional one the backward half at the last step has seen only one element, so
    classification heads usually take ``h_n`` instead — this helper is for per-step outputs.
    """
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"output must be a tensor with at least 2 dims (batch and time), got {shape}")
    x = output.transpose(0, 1) if batch_first else output  # (T, B, *)
    T, B = x.shape[:2]
    lengths = check_lengths(lengths, B, T, output.device)
    empty = (lengths == 0).nonzero()
    if len(empty):
        raise ValueError(f"sequence {int(empty[0])} has length 0, so it has no last valid output")
    return gather_last(x, lengths)  # (B, *)


def budget_batches(order: Sequence[int], sizes: Sequence[int], budget: int, max_items: int) -> list[list[int]]:
    """Cut ``order`` into consecutive batches of at most ``max_items`` items and ``budget`` tokens.

    ``sizes[i]`` is the token count of item ``i``. Items keep their order (the caller shuffles, so batches
    are as random as with a fixed batch size and as deterministic); a batch closes when the next item would
    break either limit. An item larger than ``budget`` on its own forms a batch by itself: it cannot be split,
    and dropping it would silently shrink the training set.
    Before / after: ``order=[3, 0, 2, 1]``, ``sizes=[5, 2, 4, 6]``, ``budget=8``, ``max_items=4`` ->
    ``[[3], [0], [2, 1]]``.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (tokens + sizes[i] > budget or len(current) == max_items):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += sizes[i]
    if current:
        batches.append(current)
    return batches
